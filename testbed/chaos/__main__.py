"""`make chaos` / `python -m testbed.chaos`: the fault-injection run on a private stack.

Prints the faults fired, the audit and the checks, writes result.json into the run folder, and
exits 0 only when every check passed.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from iot_sink.audit import render_table
from testbed.chaos.driver import ChaosConfig, ChaosResult, ChaosRun, write_result
from testbed.chaos.faults import PLANS
from testbed.paths import REPO


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m testbed.chaos", description=__doc__)
    parser.add_argument(
        "--images",
        type=int,
        default=int(os.environ.get("IOT_CHAOS_IMAGES", "10000")),
        help="images the producer sends (IOT_CHAOS_IMAGES, default 10000)",
    )
    parser.add_argument("--plan", choices=sorted(PLANS), default="full", help="which faults (default full)")
    parser.add_argument(
        "--rate", type=float, help="producer images per second (default: spread over the plan)"
    )
    parser.add_argument("--couch-outage-seconds", type=float, help="length of the CouchDB outage")
    parser.add_argument("--inference", type=int, default=2, help="inference instances (default 2)")
    parser.add_argument("--sinks", type=int, default=2, help="sink instances (default 2)")
    parser.add_argument("--run-dir", type=Path, help="logs and result.json (default .run/chaos/<time>)")
    parser.add_argument(
        "--dynamic-membership",
        action="store_true",
        help="no IOT_GROUP_INSTANCE_ID: a killed member's partitions wait for its session timeout",
    )
    parser.add_argument(
        "--couchdb-nodes",
        type=int,
        choices=(1, 3),
        default=1,
        help="3: a CouchDB cluster, whose node the sinks write to is killed as well (default 1)",
    )
    parser.add_argument(
        "--kafka-brokers",
        type=int,
        choices=(1, 3),
        default=1,
        help="3: a Kafka cluster (replication factor 3, min ISR 2): the leader is killed, a broker "
        "loses its data, every broker is restarted in turn (default 1: the broker is killed twice)",
    )
    parser.add_argument("--keep-data", action="store_true", help="keep Kafka's and CouchDB's data")
    return parser.parse_args(argv)


def config_from(args: argparse.Namespace) -> ChaosConfig:
    make_plan = PLANS[args.plan]
    layout = {"couchdb_nodes": args.couchdb_nodes, "kafka_brokers": args.kafka_brokers}
    plan = (
        make_plan(**layout)
        if args.couch_outage_seconds is None
        else make_plan(args.couch_outage_seconds, **layout)
    )
    run_dir = args.run_dir or REPO / ".run" / "chaos" / time.strftime("%Y%m%d-%H%M%S")
    return ChaosConfig(
        run_dir=run_dir.resolve(),
        images=args.images,
        plan=plan,
        rate=args.rate,
        inference=args.inference,
        sinks=args.sinks,
        static_membership=not args.dynamic_membership,
        couchdb_nodes=args.couchdb_nodes,
        kafka_brokers=args.kafka_brokers,
        keep_data=args.keep_data,
    )


def print_result(result: ChaosResult, console: Console) -> None:
    faults = Table(title=f"Faults fired ({result.images:,} images at {result.rate:g}/s, run {result.run_id})")
    for column in ("#", "fault", "victim", "fired at", "waited for", "serving again after", "ok", "note"):
        faults.add_column(column, overflow="fold")
    for i, f in enumerate(result.faults, 1):
        faults.add_row(
            str(i),
            f.step,
            f.victim,
            _seconds(f.fired_at),
            _seconds(f.waited),
            _seconds(f.serving_after),
            "yes" if f.ok else "NO",
            f.note,
            style=None if f.ok else "bold red",
        )
    console.print(faults)

    if result.crashes:
        crashes = Table(title="Services that exited unasked (restarted)")
        for column in ("member", "exit", "at", "during", "last log lines"):
            crashes.add_column(column, overflow="fold")
        for c in result.crashes:
            tail = "\n".join(c.log_tail.splitlines()[-25:])
            crashes.add_row(c.member, str(c.exit_code), _seconds(c.at), c.after_step, tail)
        console.print(crashes)

    if result.dead_letters:
        dead = Table(title="Malformed messages in the dead-letter topic")
        for column in ("message", "record", "accepted reasons", "dead-lettered by", "ok"):
            dead.add_column(column, overflow="fold")
        for d in result.dead_letters:
            dead.add_row(
                d.name,
                f"{d.topic}[{d.partition}]@{d.offset}",
                "/".join(d.accepted),
                ", ".join(f"{k}: {v}" for k, v in d.dead_lettered_by.items()) or "-",
                "yes" if d.ok else "NO",
                style=None if d.ok else "bold red",
            )
        console.print(dead)

    for report in (result.audit, result.run_audit):
        if report is not None:
            render_table(report, console)

    checks = Table(title=f"Checks ({result.seconds:.0f}s in all)")
    for column in ("check", "ok", "detail"):
        checks.add_column(column, overflow="fold")
    for check in result.checks:
        checks.add_row(
            check.name, "yes" if check.ok else "NO", check.detail, style=None if check.ok else "bold red"
        )
    console.print(checks)
    console.print(
        "CHAOS RUN PASSED" if result.ok else "CHAOS RUN FAILED",
        style="bold green" if result.ok else "bold red",
    )


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"


def main(argv: Sequence[str] | None = None) -> int:
    config = config_from(parse_args(argv))
    config.run_dir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    console = Console() if sys.stdout.isatty() else Console(width=160)
    console.print(f"chaos run: {config.images:,} images, {len(config.plan)} faults, logs in {config.run_dir}")
    result = ChaosRun(config).run()
    write_result(result, config.run_dir / "result.json")
    print_result(result, console)
    console.print(f"result: {config.run_dir / 'result.json'}; service logs: {config.run_dir / 'logs'}")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
