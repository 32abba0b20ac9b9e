#!/usr/bin/env python3
"""Validation curves of benchmarks/codec_results.sh: one line per codec.

usage: plot_codec_results.py RESULTS_DIR OUT.png   (RESULTS_DIR holds NAME.jsonl and NAME.result)
"""
import glob
import json
import os
import sys

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

src, out = sys.argv[1], sys.argv[2]
fig, ax = plt.subplots(figsize=(7, 4.5))
for path in sorted(glob.glob(os.path.join(src, "*.jsonl"))):
    name = os.path.basename(path)[:-len(".jsonl")]
    pts = [(r["step"], r["val_loss"]) for r in map(json.loads, open(path)) if "val_loss" in r]
    label = name
    res = os.path.join(src, name + ".result")
    if os.path.exists(res) and os.path.getsize(res) > 0:
        r = json.loads(open(res).read().split(" ", 1)[1])
        label += f" ({r.get('compression_ratio', 1):.0f}x)"
    if pts:
        ax.plot(*zip(*pts), marker="o", ms=3, label=label)
ax.set_xlabel("step (16 x 128 tokens)")
ax.set_ylabel("validation loss (nats)")
ax.set_title("TinyShakespeare, d=256, 4 layers = 4 stages, Muon")
ax.grid(alpha=0.3)
ax.legend()
fig.tight_layout()
fig.savefig(out, dpi=120)
print("wrote", out)
