#!/usr/bin/env python3
"""PyTorch reference for resbm-train-cuda: the same LLaMA-style model (byte vocabulary,
RMSNorm, RoPE rotate-half, causal SDPA, SwiGLU, untied head, no biases), fp32 master
weights with bf16 autocast, fused AdamW, global-norm clipping, one training step per
batch. Prints one line `TORCH {json}` per measurement.

  torch_gpu.py model --layers 12 --d-model 768 --heads 12 --seq 1024 --batch 16 --mode compile
  torch_gpu.py ceiling     # 8192^3 bf16 GEMM TFLOP/s and device-to-device copy GB/s
"""
import argparse
import json
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, d, heads, ffn):
        super().__init__()
        self.heads = heads
        self.attn_norm = nn.Parameter(torch.ones(d))
        self.wq = nn.Linear(d, d, bias=False)
        self.wk = nn.Linear(d, d, bias=False)
        self.wv = nn.Linear(d, d, bias=False)
        self.wo = nn.Linear(d, d, bias=False)
        self.mlp_norm = nn.Parameter(torch.ones(d))
        self.w1 = nn.Linear(d, ffn, bias=False)
        self.w3 = nn.Linear(d, ffn, bias=False)
        self.w2 = nn.Linear(ffn, d, bias=False)

    def forward(self, x, cos, sin):
        B, T, C = x.shape
        hd = C // self.heads
        h = F.rms_norm(x, (C,), self.attn_norm, 1e-5)
        q = self.wq(h).view(B, T, self.heads, hd)
        k = self.wk(h).view(B, T, self.heads, hd)
        v = self.wv(h).view(B, T, self.heads, hd)

        def rope(t):
            a, b = t[..., : hd // 2], t[..., hd // 2 :]
            return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)

        q, k = rope(q), rope(k)
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        x = x + self.wo(o.transpose(1, 2).reshape(B, T, C))
        h = F.rms_norm(x, (C,), self.mlp_norm, 1e-5)
        return x + self.w2(F.silu(self.w1(h)) * self.w3(h))


class Llama(nn.Module):
    def __init__(self, vocab, d, layers, heads, seq, ffn):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList([Block(d, heads, ffn) for _ in range(layers)])
        self.norm = nn.Parameter(torch.ones(d))
        self.head = nn.Linear(d, vocab, bias=False)
        hd = d // heads
        inv = 1.0 / (10000.0 ** (torch.arange(0, hd // 2, dtype=torch.float64) * 2 / hd))
        ang = torch.arange(seq, dtype=torch.float64)[:, None] * inv[None, :]
        self.register_buffer("cos", ang.cos().float()[None, :, None, :], persistent=False)
        self.register_buffer("sin", ang.sin().float()[None, :, None, :], persistent=False)
        for n, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * layers) if n.endswith(("wo.weight", "w2.weight")) else 0.02
                nn.init.normal_(p, std=std)

    def forward(self, idx, targets):
        x = self.emb(idx)
        cos, sin = self.cos.to(x.dtype), self.sin.to(x.dtype)
        for b in self.blocks:
            x = b(x, cos, sin)
        x = F.rms_norm(x, (x.shape[-1],), self.norm, 1e-5)
        logits = self.head(x)
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1))


def model_bench(a):
    torch.manual_seed(0)
    dev = "cuda"
    ffn = a.ffn or (8 * a.d_model // 3 + 31) // 32 * 32
    model = Llama(256, a.d_model, a.layers, a.heads, a.seq, ffn).to(dev)
    decay = [p for p in model.parameters() if p.dim() == 2]
    gains = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": gains, "weight_decay": 0.0}],
                            lr=2e-3, betas=(0.9, 0.95), eps=1e-8, fused=True)
    fwd = torch.compile(model) if a.mode == "compile" else model
    g = torch.Generator(device=dev).manual_seed(1)

    def step():
        idx = torch.randint(0, 256, (a.batch, a.seq + 1), device=dev, generator=g)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = fwd(idx[:, :-1], idx[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    t0 = time.time()
    for _ in range(a.warmup):
        step()
    torch.cuda.synchronize()
    warm_s = time.time() - t0
    t0 = time.time()
    for _ in range(a.steps):
        loss = step()
    torch.cuda.synchronize()
    dt = (time.time() - t0) / a.steps
    if a.profile:
        # Where PyTorch's step goes, kernel by kernel: the peer's breakdown to set ours against.
        from torch.profiler import profile, ProfilerActivity
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(a.profile):
                step()
            torch.cuda.synchronize()
        rows = {}
        for e in prof.key_averages():
            t = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
            if t > 0 and e.count > 0:
                rows[e.key] = (t / a.profile / 1e3, e.count // a.profile)
        total = sum(ms for ms, _ in rows.values())
        print(f"PROFILE {a.mode}: {total:.2f} ms of kernels a step; top kernels (ms a step, launches a step):")
        for k, (ms, n) in sorted(rows.items(), key=lambda kv: -kv[1][0])[:a.profile_top]:
            print(f"  {ms:8.3f} {n:5d}  {k[:150]}")
    n_params = sum(p.numel() for p in model.parameters())
    print("TORCH " + json.dumps({
        "mode": a.mode, "layers": a.layers, "d_model": a.d_model, "heads": a.heads, "seq": a.seq,
        "batch": a.batch, "ffn": ffn, "params": n_params, "step_ms": 1e3 * dt,
        "tokens_per_s": a.batch * a.seq / dt, "loss": float(loss), "warmup_s": warm_s,
        "torch": torch.__version__, "device": torch.cuda.get_device_name()}), flush=True)


def ceiling(a):
    dev = "cuda"
    n = 8192
    x = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    y = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    for _ in range(3):
        x @ y
    torch.cuda.synchronize()
    reps = 30
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    for _ in range(reps):
        x @ y
    e1.record()
    torch.cuda.synchronize()
    tflops = 2 * n ** 3 * reps / (e0.elapsed_time(e1) * 1e-3) / 1e12
    src = torch.empty(1 << 30, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    dst.copy_(src)
    torch.cuda.synchronize()
    e0.record()
    for _ in range(10):
        dst.copy_(src)
    e1.record()
    torch.cuda.synchronize()
    gbs = 2 * src.numel() * 10 / (e0.elapsed_time(e1) * 1e-3) / 1e9  # read + write
    print("TORCH " + json.dumps({"gemm_8192_bf16_tflops": tflops, "d2d_copy_gbps": gbs,
                                 "device": torch.cuda.get_device_name()}), flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["model", "ceiling"])
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--d-model", type=int, default=768)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--ffn", type=int, default=0)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--mode", choices=["eager", "compile"], default="eager")
    p.add_argument("--profile", type=int, default=0, help="also profile this many steps and print the top kernels")
    p.add_argument("--profile-top", type=int, default=30)
    a = p.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    model_bench(a) if a.what == "model" else ceiling(a)
