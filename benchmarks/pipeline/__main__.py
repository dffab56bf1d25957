"""`make bench` / `python -m benchmarks.pipeline [--images N] [--smoke] [--out DIR]`."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from types import FrameType

from rich.console import Console

from benchmarks.pipeline.bench import BenchError
from benchmarks.pipeline.chart import write_chart
from benchmarks.pipeline.config import parse_args
from benchmarks.pipeline.report import markdown, print_report
from benchmarks.pipeline.runner import run


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    # SIGTERM like Ctrl-C: unwind through every `finally`, so the private stack is stopped.
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_args(argv)
    console = Console()
    if not console.is_terminal:  # a log or a pipe: wide enough for the tables, not 80 columns
        console = Console(width=150)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        result = run(config, console)
    except (BenchError, subprocess.CalledProcessError) as exc:
        console.print(f"[bold red]benchmark failed:[/] {exc}")
        console.print(f"logs: {config.run_dir} (stack.log, logs/, stack/*.log)")
        return 1
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted[/]; the private stack is stopped, logs in {config.run_dir}")
        return 130
    config.out.mkdir(parents=True, exist_ok=True)
    result.write(config.out / "bench.json")
    write_chart(result, config.out / "bench.png")
    (config.out / "bench.md").write_text(markdown(result), encoding="utf-8")
    print_report(result, console)
    console.print(f"wrote {config.out}/bench.json, bench.png, bench.md")
    if not config.keep_run:
        shutil.rmtree(config.run_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
