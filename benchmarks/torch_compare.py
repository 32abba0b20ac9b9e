#!/usr/bin/env python3
"""Training throughput of resbm against PyTorch on the same LLaMA-style model (CPU).

The PyTorch model mirrors resbm's: token embedding; N blocks of
  x = x + wo(attn(rope(wq(rms(x))), rope(wk(rms(x))), wv(rms(x))))   causal, 1/sqrt(hd)
  x = x + w2(silu(w1(rms(x))) * w3(rms(x)))                          SwiGLU, hidden = ffn
then a final RMSNorm (eps 1e-5), an untied head and cross entropy. RoPE uses the
rotate-half convention with theta = 10000. No biases anywhere.

It trains with AdamW (and resbm-train's global gradient-norm clip, --clip) on random tokens
(or the bytes of --data, e.g. TinyShakespeare) and prints tokens/s over the steps after
--warmup-steps. With --resbm BINARY it then runs
  BINARY --d-model .. --layers .. --heads .. --seq .. --batch .. --steps (warmup + steps)
         --threads .. --optimizer adamw --clip .. --eval-every 0 --metrics TMP.jsonl
and takes resbm's tokens/s over the same steps after the warmup from the per-step metrics
(falling back to the RESULT line's tokens_per_s, which counts every step), and prints both.
The default --vocab 65 is resbm-train's default vocabulary (TinyShakespeare, char
tokenizer); --vocab 256 runs resbm-train with --tokenizer byte.

Works with torch 1.13 (Debian's python3-torch) and 2.x.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

DEBIAN_PYTHON = "/usr/bin/python3"

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError:
    # Debian's python3-torch lives in /usr/lib/python3/dist-packages, which another
    # interpreter earlier on PATH (pyenv, a venv) does not see: retry with Debian's.
    if (os.path.exists(DEBIAN_PYTHON) and os.path.realpath(sys.executable) != os.path.realpath(DEBIAN_PYTHON)
            and not os.environ.get("RESBM_TORCH_COMPARE_REEXEC")):
        os.environ["RESBM_TORCH_COMPARE_REEXEC"] = "1"
        print(f"torch_compare: no torch for {sys.executable}; retrying with {DEBIAN_PYTHON}", file=sys.stderr)
        os.execv(DEBIAN_PYTHON, [DEBIAN_PYTHON] + sys.argv)
    print("torch_compare: PyTorch is not installed. On Debian 12 install it with\n"
          "    apt-get install python3-torch\n"
          f"and run this script with {DEBIAN_PYTHON}.", file=sys.stderr)
    sys.exit(2)


def default_ffn(d_model):
    """resbm's default SwiGLU width: 8d/3 rounded up to a multiple of 32."""
    return int(math.ceil(8 * d_model / 3 / 32) * 32)


class RMSNorm(nn.Module):
    def __init__(self, d, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_tables(seq, hd, theta=10000.0):
    inv = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    ang = torch.outer(torch.arange(seq, dtype=torch.float32), inv)  # [seq, hd/2]
    ang = torch.cat([ang, ang], dim=-1)  # rotate-half layout: [seq, hd]
    return ang.cos(), ang.sin()


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


def apply_rope(x, cos, sin):  # x: [B, H, T, hd]
    return x * cos + rotate_half(x) * sin


HAS_SDPA = hasattr(F, "scaled_dot_product_attention")


class Attention(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads, self.hd = heads, d // heads
        self.wq = nn.Linear(d, d, bias=False)
        self.wk = nn.Linear(d, d, bias=False)
        self.wv = nn.Linear(d, d, bias=False)
        self.wo = nn.Linear(d, d, bias=False)

    def forward(self, x, cos, sin, mask):
        B, T, D = x.shape
        q = self.wq(x).view(B, T, self.heads, self.hd).transpose(1, 2)
        k = self.wk(x).view(B, T, self.heads, self.hd).transpose(1, 2)
        v = self.wv(x).view(B, T, self.heads, self.hd).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if HAS_SDPA:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            s = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.hd))
            s = s.masked_fill(mask, float("-inf"))
            y = torch.softmax(s, dim=-1) @ v
        return self.wo(y.transpose(1, 2).reshape(B, T, D))


class MLP(nn.Module):
    def __init__(self, d, ffn):
        super().__init__()
        self.w1 = nn.Linear(d, ffn, bias=False)  # gate
        self.w3 = nn.Linear(d, ffn, bias=False)  # up
        self.w2 = nn.Linear(ffn, d, bias=False)  # down

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, d, heads, ffn):
        super().__init__()
        self.attn_norm = RMSNorm(d)
        self.attn = Attention(d, heads)
        self.mlp_norm = RMSNorm(d)
        self.mlp = MLP(d, ffn)

    def forward(self, x, cos, sin, mask):
        x = x + self.attn(self.attn_norm(x), cos, sin, mask)
        return x + self.mlp(self.mlp_norm(x))


class Model(nn.Module):
    def __init__(self, vocab, d, layers, heads, ffn, seq):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList([Block(d, heads, ffn) for _ in range(layers)])
        self.norm = RMSNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        cos, sin = rope_tables(seq, d // heads)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.register_buffer("mask", torch.triu(torch.ones(seq, seq, dtype=torch.bool), 1), persistent=False)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)

    def forward(self, tokens, targets):
        T = tokens.shape[1]
        cos, sin, mask = self.cos[:T], self.sin[:T], self.mask[:T, :T]
        x = self.embed(tokens)
        for b in self.blocks:
            x = b(x, cos, sin, mask)
        logits = self.head(self.norm(x))
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1))


def make_batches(args, gen):
    if args.data:
        with open(args.data, "rb") as f:
            data = torch.tensor(list(f.read()), dtype=torch.long)
        if args.vocab < 256:
            sys.exit("torch_compare: --data is byte level: pass --vocab 256 or more")
        if data.numel() < args.seq + 2:
            sys.exit(f"torch_compare: {args.data} is shorter than --seq + 2 bytes")

        def batch():
            off = torch.randint(0, data.numel() - args.seq - 1, (args.batch,), generator=gen)
            idx = off[:, None] + torch.arange(args.seq + 1)[None, :]
            chunk = data[idx]
            return chunk[:, :-1], chunk[:, 1:]
    else:
        def batch():
            chunk = torch.randint(0, args.vocab, (args.batch, args.seq + 1), generator=gen)
            return chunk[:, :-1], chunk[:, 1:]
    return batch


def run_torch(args):
    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    model = Model(args.vocab, args.d_model, args.layers, args.heads, args.ffn, args.seq)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    batch = make_batches(args, gen)
    print(f"torch {torch.__version__}: d_model {args.d_model}, layers {args.layers}, heads {args.heads}, "
          f"ffn {args.ffn}, seq {args.seq}, batch {args.batch}, vocab {args.vocab}, "
          f"{n_params / 1e6:.2f}M params, {args.threads} threads, "
          f"attention {'sdpa' if HAS_SDPA else 'explicit softmax'}")
    timed, loss = 0.0, float("nan")
    total = args.warmup_steps + args.steps
    for step in range(total):
        x, y = batch()
        t0 = time.perf_counter()
        loss_t = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss_t.backward()
        if args.clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        loss = loss_t.item()
        dt = time.perf_counter() - t0
        if step >= args.warmup_steps:
            timed += dt
        if step == 0 or step + 1 == total or (step + 1) % max(1, total // 10) == 0:
            tag = "warmup" if step < args.warmup_steps else "step"
            print(f"  {tag} {step + 1}/{total}: loss {loss:.4f}, {dt * 1e3:.1f} ms", flush=True)
    tps = args.batch * args.seq * args.steps / timed if args.steps and timed > 0 else float("nan")
    return {"tokens_per_s": tps, "loss": loss, "params": n_params, "steps": args.steps}


def steady_tokens_per_s(metrics_path, warmup, tokens_per_step):
    """tokens/s over the steps after `warmup`, from resbm-train's per-step metrics, whose
    tokens_per_s is cumulative: trained steps * tokens per step / training seconds so far."""
    elapsed = {}
    with open(metrics_path) as f:
        for line in f:
            rec = json.loads(line)
            if "tokens_per_s" in rec and rec["tokens_per_s"] > 0:
                elapsed[int(rec["step"])] = rec["step"] * tokens_per_step / rec["tokens_per_s"]
    if not elapsed:
        return None
    last = max(elapsed)
    if warmup <= 0:
        return last * tokens_per_step / elapsed[last]
    if warmup not in elapsed or last <= warmup:
        return None
    return (last - warmup) * tokens_per_step / (elapsed[last] - elapsed[warmup])


def run_resbm(args):
    with tempfile.TemporaryDirectory(prefix="torch_compare") as tmp:
        metrics = os.path.join(tmp, "metrics.jsonl")
        cmd = [args.resbm, "--d-model", str(args.d_model), "--layers", str(args.layers),
               "--heads", str(args.heads), "--seq", str(args.seq), "--batch", str(args.batch),
               "--steps", str(args.warmup_steps + args.steps), "--threads", str(args.threads),
               "--optimizer", "adamw", "--clip", str(args.clip), "--eval-every", "0", "--eval-batches", "1",
               "--metrics", metrics]
        if args.vocab == 256:
            cmd += ["--tokenizer", "byte"]
        print("running: " + " ".join(cmd), flush=True)
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines = proc.stdout.splitlines()
        if proc.returncode != 0:
            print("\n".join(lines[-20:]), file=sys.stderr)
            sys.exit(f"torch_compare: {args.resbm} exited with {proc.returncode}")
        result = None
        for line in reversed(lines):
            if line.startswith("RESULT "):
                result = json.loads(line[len("RESULT "):])
                break
        if result is None:
            print("\n".join(lines[-20:]), file=sys.stderr)
            sys.exit(f"torch_compare: {args.resbm} printed no 'RESULT {{json}}' line")
        steady = steady_tokens_per_s(metrics, args.warmup_steps, args.batch * args.seq)
    if int(result.get("vocab", args.vocab)) != args.vocab:
        print(f"torch_compare: warning: resbm-train ran with vocab {result['vocab']}, torch with {args.vocab} "
              f"(pass --vocab {result['vocab']})", file=sys.stderr)
    result["tokens_per_s_all_steps"] = result["tokens_per_s"]
    if steady is not None:
        result["tokens_per_s"] = steady
    else:
        print("torch_compare: warning: no per-step metrics; resbm's tokens/s includes the warmup steps",
              file=sys.stderr)
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--ffn", type=int, default=0, help="SwiGLU hidden width (0: resbm's default, ceil(8d/3/32)*32)")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--vocab", type=int, default=65,
                   help="65: resbm-train's default (TinyShakespeare, char); 256: resbm-train --tokenizer byte")
    p.add_argument("--steps", type=int, default=20, help="timed training steps")
    p.add_argument("--warmup-steps", type=int, default=3, help="untimed steps before them")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--clip", type=float, default=1.0, help="global gradient-norm clip, both sides (0 = off)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--data", default="", help="train on the bytes of this file (default: random tokens)")
    p.add_argument("--resbm", default="", metavar="BINARY", help="also time this resbm-train binary")
    args = p.parse_args()
    if args.d_model % args.heads or (args.d_model // args.heads) % 2:
        sys.exit("torch_compare: --d-model must split into --heads heads of even width")
    if args.ffn <= 0:
        args.ffn = default_ffn(args.d_model)
    elif args.resbm and args.ffn != default_ffn(args.d_model):
        print(f"torch_compare: warning: resbm-train is run with its default ffn "
              f"{default_ffn(args.d_model)}, not {args.ffn}", file=sys.stderr)
    if args.threads < 1:
        sys.exit("torch_compare: --threads must be >= 1")

    t = run_torch(args)
    print(f"torch: {t['tokens_per_s']:.0f} tokens/s over {args.steps} steps (final loss {t['loss']:.4f})")
    print("RESULT " + json.dumps({"impl": "torch", **t}))
    if not args.resbm:
        return
    r = run_resbm(args)
    r_tps = float(r["tokens_per_s"])
    print()
    print(f"{'':8} {'tokens/s':>12}")
    print(f"{'torch':8} {t['tokens_per_s']:12.0f}")
    print(f"{'resbm':8} {r_tps:12.0f}")
    print(f"resbm / torch = {r_tps / t['tokens_per_s']:.2f}x")
    if r.get("params") is not None and int(r["params"]) != t["params"]:
        print(f"torch_compare: warning: resbm has {r['params']} parameters, torch {t['params']}: not the same model",
              file=sys.stderr)
    print("RESULT " + json.dumps({"impl": "resbm", "tokens_per_s": r_tps,
                                  "tokens_per_s_all_steps": r["tokens_per_s_all_steps"],
                                  "loss": r.get("train_loss"), "params": r.get("params"),
                                  "steps": args.steps, "warmup_steps": args.warmup_steps}))


if __name__ == "__main__":
    main()
