"""`make bench`: the whole pipeline measured in one run, on a private stack, stage by stage.

(a) the model alone, (b) the inference service alone, (c) the sink service alone, (d) producer +
inference + sink end to end at full speed, (e) latency at fixed rates, and the seed-style
baseline (`benchmarks.baseline`) end to end, all on the same broker and store. The machine is
shared and noisy, so what matters are the ratios within one run, not the absolute numbers.
"""
