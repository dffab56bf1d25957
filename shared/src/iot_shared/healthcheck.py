"""`python -m iot_shared.healthcheck`: the containers' HEALTHCHECK, with no curl in a slim image.

Exits 0 when the service's /readyz (or the path given) answers 200 on IOT_METRICS_ADDRESS and
IOT_METRICS_PORT, as the service itself reads them.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping

# A service listening on every interface is reached on loopback.
ANY_ADDRESS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}  # noqa: S104


def probe_url(path: str, environ: Mapping[str, str] = os.environ) -> str:
    port = environ.get("IOT_METRICS_PORT", "8000")
    address = environ.get("IOT_METRICS_ADDRESS", "0.0.0.0").strip()  # noqa: S104
    host = ANY_ADDRESS.get(address, address)
    if ":" in host:  # IPv6
        host = f"[{host}]"
    return f"http://{host}:{port}{path}"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    url = probe_url(args[0] if args else "/readyz")
    try:
        with urllib.request.urlopen(url, timeout=3) as response:  # noqa: S310  # http only, our URL
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        sys.stderr.write(f"{url}: {exc}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
