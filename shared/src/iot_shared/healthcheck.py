"""`python -m iot_shared.healthcheck`: the containers' HEALTHCHECK, with no curl in a slim image.

Exits 0 when the service's /readyz (or the path given) answers 200 on IOT_METRICS_PORT.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = args[0] if args else "/readyz"
    port = os.environ.get("IOT_METRICS_PORT", "8000")
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        sys.stderr.write(f"{url}: {exc}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
