#!/usr/bin/env python3
"""Table and plot of benchmarks/pipeline_links.sh results.

  plot_pipeline_links.py RESULTS.jsonl OUT.png   bar chart: tokens/s per link setting, dense vs resbm
  plot_pipeline_links.py --table RESULTS.jsonl   markdown table on stdout
  plot_pipeline_links.py --record LOG METRICS LINK TRANSPORT CODEC WARMUP LOAD
      one results.jsonl record on stdout (the RESULT line of LOG plus the labels, the steady
      tokens/s after WARMUP steps from the per-step METRICS, wait shares); a summary on stderr

Needs matplotlib for the plot (Debian: /usr/bin/python3 with python3-matplotlib).
"""
import json
import sys


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def key(r):
    return (r["transport"], r["link"])


def best(rows):
    """The fastest run of each (transport, link, codec), and how many runs there were: on a
    shared machine the best run is the one least disturbed by other work."""
    by, runs = {}, {}
    for r in rows:
        k = (key(r), r["codec_name"])
        runs[k] = runs.get(k, 0) + 1
        if k not in by or r["tokens_per_s"] > by[k]["tokens_per_s"]:
            by[k] = r
    return by, runs


def table(rows):
    order = []
    for r in rows:
        if key(r) not in order:
            order.append(key(r))
    by, runs = best(rows)
    base = {c: by.get((("threads", "unshaped"), c)) for c in ("dense", "resbm")}
    print("| link | transport | codec | runs | best tokens/s | vs unshaped | resbm / dense | compression | wait share (max stage / mean) |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for k in order:
        for c in ("dense", "resbm"):
            r = by.get((k, c))
            if r is None:
                continue
            tps = r["tokens_per_s"]
            b = base.get(c)
            vs = f"{tps / b['tokens_per_s']:.2f}x" if b else "-"
            other = by.get((k, "dense"))
            rd = f"{tps / other['tokens_per_s']:.2f}x" if c == "resbm" and other else ""
            ws = f"{100 * r['wait_share_max']:.0f}% / {100 * r['wait_share_mean']:.0f}%" \
                if r.get("wait_share_max") is not None else "-"
            print(f"| {k[1]} | {k[0]} | {c} | {runs[(k, c)]} | {tps:.0f} | {vs} | {rd} | {r['compression_ratio']:.1f}x | {ws} |")


def plot(rows, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = []
    for r in rows:
        lab = r["link"] + (" (TCP procs)" if r["transport"] == "tcp" else "")
        if lab not in labels:
            labels.append(lab)
    val = {}
    for (k, c), r in best(rows)[0].items():
        lab = k[1] + (" (TCP procs)" if k[0] == "tcp" else "")
        val[(lab, c)] = r["tokens_per_s"]
    fig, ax = plt.subplots(figsize=(8, 4.2))
    w = 0.38
    for i, (c, color) in enumerate((("dense", "#999999"), ("resbm", "#1f77b4"))):
        xs = [j + (i - 0.5) * w for j in range(len(labels))]
        ys = [val.get((lab, c), 0) for lab in labels]
        bars = ax.bar(xs, ys, w, label=f"{c} ({'bf16' if c == 'dense' else 'rank 2'})", color=color)
        for b, y in zip(bars, ys):
            if y:
                ax.text(b.get_x() + b.get_width() / 2, y, f"{y:.0f}", ha="center", va="bottom", fontsize=8)
    r0 = rows[0]
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, fontsize=9)
    ax.set_ylabel("tokens/s")
    ax.set_title(f"4-stage pipeline, d {r0['d_model']}, {r0['n_layers']} layers, batch {r0['batch']}, "
                 f"{r0['micro_batches']} micro-batches, {r0.get('schedule', '')}", fontsize=10)
    ax.set_ylim(0, 1.2 * max(val.values()))
    ax.legend(loc="upper right", ncol=2)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def record(log, metrics, link, transport, codec, warmup, load):
    result = None
    with open(log) as f:
        for line in f:
            if line.startswith("RESULT "):
                result = line[len("RESULT "):]
    if result is None:
        sys.exit(f"plot_pipeline_links: {log} has no RESULT line")
    r = json.loads(result)
    r.update(link=link, transport=transport, codec_name=codec, load_after=load)
    # resbm-train's per-step tokens_per_s is cumulative: steps * tokens per step / seconds so far
    w, tok, elapsed = int(warmup), r["batch"] * r["seq_len"], {}
    try:
        with open(metrics) as f:
            for line in f:
                m = json.loads(line)
                if m.get("tokens_per_s", 0) > 0:
                    elapsed[int(m["step"])] = m["step"] * tok / m["tokens_per_s"]
    except FileNotFoundError:
        pass
    last = max(elapsed) if elapsed else 0
    r["tokens_per_s_steady"] = (last - w) * tok / (elapsed[last] - elapsed[w]) if w in elapsed and last > w else None
    ws = [s["wait_share"] for s in r.get("per_stage", [])]
    r["wait_share_max"] = max(ws) if ws else None
    r["wait_share_mean"] = sum(ws) / len(ws) if ws else None
    print(json.dumps(r))
    st = r["tokens_per_s_steady"]
    print(f"  {link:12} {transport:8} {codec:6} {r['tokens_per_s']:8.0f} tokens/s "
          f"(steady {'-' if st is None else round(st)}), compression {r['compression_ratio']:.1f}x, "
          f"wait max {100 * (r['wait_share_max'] or 0):.0f}%, load {load}", file=sys.stderr, flush=True)


def main():
    if len(sys.argv) == 9 and sys.argv[1] == "--record":
        record(*sys.argv[2:])
    elif len(sys.argv) == 3 and sys.argv[1] == "--table":
        table(load(sys.argv[2]))
    elif len(sys.argv) == 3:
        plot(load(sys.argv[1]), sys.argv[2])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
