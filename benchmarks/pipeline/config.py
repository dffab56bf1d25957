"""What one benchmark run measures, from the command line."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "benchmarks" / "results"


@dataclass(frozen=True)
class BenchConfig:
    out: Path = DEFAULT_OUT
    images: int = 5_000  # N for (b), (c), (d)
    rates: tuple[float, ...] = (10.0, 50.0, 200.0)  # (e), images per second
    rate_seconds: float = 30.0  # how long the producer sends at each rate
    baseline_images: int = 1_000  # the seed-style pipeline is ~30x slower: a smaller N, same measure
    model_images: int = 2_048  # (a): images per timed pass
    model_repeats: int = 3  # (a): the median of this many passes
    startup_timeout: float = 180.0  # a service joining its group, the stack starting
    keep_run: bool = False  # keep the private stack's data and the services' logs after a success
    smoke: bool = False

    def images_at(self, rate: float) -> int:
        return max(5, round(rate * self.rate_seconds))

    @property
    def run_dir(self) -> Path:
        return self.out / "run"


SMOKE = BenchConfig(
    images=200, rate_seconds=1.0, baseline_images=50, model_images=256, model_repeats=1, smoke=True
)


def parse_args(argv: Sequence[str] | None = None) -> BenchConfig:
    defaults = BenchConfig()
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.pipeline",
        description="Measure the model, each stage and the whole pipeline on a private stack.",
    )
    parser.add_argument("--out", type=Path, default=defaults.out, help="results folder (%(default)s)")
    parser.add_argument("--images", type=int, help=f"N for stages (b)-(d) (default {defaults.images})")
    parser.add_argument(
        "--rates", type=float, nargs="+", help="fixed producer rates for latency (default 10 50 200)"
    )
    parser.add_argument(
        "--rate-seconds", type=float, help=f"seconds sending at each rate (default {defaults.rate_seconds:g})"
    )
    parser.add_argument(
        "--baseline-images", type=int, help=f"N for the baseline (default {defaults.baseline_images})"
    )
    parser.add_argument("--keep-run", action="store_true", help="keep the stack's data and logs")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes (200 images, 1 s per rate, baseline on 50)"
    )
    args = parser.parse_args(argv)
    config = replace(SMOKE if args.smoke else defaults, out=args.out.resolve(), keep_run=args.keep_run)
    for name in ("images", "rate_seconds", "baseline_images"):
        if getattr(args, name) is not None:
            config = replace(config, **{name: getattr(args, name)})
    if args.rates:
        config = replace(config, rates=tuple(args.rates))
    if min(config.images, config.baseline_images) < 2 or config.rate_seconds <= 0:
        parser.error("--images and --baseline-images need at least 2, --rate-seconds more than 0")
    return config
