"""Per-kernel totals of one profiled training step of several runs, side by side
(profile_gpu.sh): kernel_diff.py OUT RUN... reads OUT/ncu_RUN.log (ncu --csv --metrics
gpu__time_duration.sum) and OUT/run_RUN.log (the RESULT line's step_ms of the same flags
unprofiled), prints each run's kernel total, launch count and idle time (step - kernels), then
the kernels whose totals differ most from the first run's."""
import csv
import io
import json
import sys

out, runs = sys.argv[1], sys.argv[2:]


def kernels(name):
    try:
        text = open(f"{out}/ncu_{name}.log").read()
    except OSError:
        return None
    lines = [l for l in text.splitlines() if l.startswith('"')]
    d = {}
    for r in csv.DictReader(io.StringIO("\n".join(lines))):
        if r.get("Metric Name") != "gpu__time_duration.sum":
            continue
        k = r["Kernel Name"].split("(")[0][:90]
        scale = {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3}[r["Metric Unit"]]
        t, c = d.get(k, (0.0, 0))
        d[k] = (t + float(r["Metric Value"].replace(",", "")) * scale, c + 1)
    return d


def step_ms(name):
    try:
        for line in open(f"{out}/run_{name}.log"):
            if line.startswith("RESULT "):
                return json.loads(line[7:])["step_ms"]
    except OSError:
        pass
    return float("nan")


def category(k):
    low = k.lower()
    if any(w in low for w in ("gemm", "nvjet", "xmma", "cutlass", "splitk", "reduce_kernel")):
        return "gemm"
    if "attn" in low:  # the attention kernels' namespaces: cuda_detail_attn, _attn_mma, _attn_wgmma(_bwd)
        return "attention"
    return "other"


tabs = {n: d for n in runs if (d := kernels(n))}
for n in runs:
    if n not in tabs:
        print(f"{n}: no kernels")
        continue
    total = sum(v[0] for v in tabs[n].values()) / 1e3
    ms = step_ms(n)
    print(f"{n}: step {ms:.2f} ms, kernels {total:.2f} ms in {sum(v[1] for v in tabs[n].values())} launches, "
          f"idle {ms - total:.2f} ms")
    cats = {}
    for k, (t, c) in tabs[n].items():
        cats[category(k)] = cats.get(category(k), 0.0) + t / 1e3
    print("    " + ", ".join(f"{c} {t:.2f} ms" for c, t in sorted(cats.items())))
if runs[0] in tabs:
    base = tabs[runs[0]]
    names = set().union(*[set(d) for d in tabs.values()])
    cols = [n for n in runs if n in tabs]
    diff = lambda k: max(abs(tabs[n].get(k, (0, 0))[0] - base.get(k, (0, 0))[0]) for n in cols)
    print("us / launches: " + " | ".join(cols) + " | kernel (largest differences from " + runs[0] + ")")
    for k in sorted(names, key=lambda k: -diff(k))[:30]:
        print(" | ".join(f"{tabs[n].get(k, (0, 0))[0]:8.1f}/{tabs[n].get(k, (0, 0))[1]:<4}" for n in cols) + f" | {k}")
    print("largest in " + runs[0] + ":")
    for k in sorted(base, key=lambda k: -base[k][0])[:25]:
        print(f"{base[k][0]:8.1f}/{base[k][1]:<4} | {k}")
