"""The ratios that matter and the goal for each."""

from __future__ import annotations

from benchmarks.pipeline.results import BenchResult, Goal

INFERENCE_VS_MODEL = 0.8
END_TO_END_VS_MODEL = 0.5
END_TO_END_VS_BASELINE = 20.0
P99_AT_50_MS = 50.0
INFERENCE_RSS_MIB = 400.0


def evaluate(result: BenchResult) -> list[Goal]:
    goals = []
    model = result.model[0].images_per_second if result.model else None
    if model and result.inference_stage:
        ratio = result.inference_stage.per_second / model
        goals.append(Goal("(b)/(a) inference service / model", ratio, INFERENCE_VS_MODEL, True, "x"))
    if model and result.end_to_end:
        ratio = result.end_to_end.per_second / model
        goals.append(Goal("(d)/(a) end to end / model", ratio, END_TO_END_VS_MODEL, True, "x"))
    if result.end_to_end and result.baseline:
        goals.append(
            Goal(
                "(d)/baseline end to end / seed-style",
                result.end_to_end.per_second / result.baseline.per_second,
                END_TO_END_VS_BASELINE,
                True,
                "x",
            )
        )
    at_50 = [lat for lat in result.latency if lat.rate == 50]
    if at_50:
        goals.append(Goal("p99 latency at 50 images/s", at_50[0].p99_ms, P99_AT_50_MS, False, "ms"))
    if result.end_to_end_usage:
        rss = [p.peak_rss_mib for p in result.end_to_end_usage.processes if p.name == "inference"]
        if rss:
            goals.append(Goal("inference peak RSS during (d)", rss[0], INFERENCE_RSS_MIB, False, "MiB"))
    return goals
