"""The baseline for tools/bench_attention.c: PyTorch's scaled_dot_product_attention (causal, its own
choice of kernel: FlashAttention-2's where the widths allow) at the same shape, with the same JSON
lines and the same count of FLOPs. MLA's shared rope key is concatenated to every head's key.

    python3 tools/bench_attention_torch.py [--device cuda] [--batch B] [--tokens T] [--heads H]
        [--kv-heads K] [--dk DK] [--ds DS] [--dv DV] [--reps R] [--bf16] [--label NAME]
"""
import argparse
import json
import time

import torch
import torch.nn.functional as F

p = argparse.ArgumentParser()
p.add_argument("--device", default="cuda")
p.add_argument("--label", default="")
for name, default in (("batch", 1), ("tokens", 256), ("heads", 8), ("kv-heads", 8), ("dk", 64), ("ds", 0),
                      ("dv", 64), ("reps", 3)):
    p.add_argument("--" + name, type=int, default=default)
p.add_argument("--bf16", action="store_true")
a = p.parse_args()
dev, dt = torch.device(a.device), torch.bfloat16 if a.bf16 else torch.float32
B, T, H, K, dq, dv = a.batch, a.tokens, a.heads, a.kv_heads, a.dk + a.ds, a.dv
g = torch.Generator(device="cpu").manual_seed(1)


def randn(*shape):
    return torch.randn(*shape, generator=g).to(dev, dt)


q = randn(B, H, T, dq).requires_grad_()
k_head = randn(B, K, T, a.dk).requires_grad_()
k_rope = randn(B, 1, T, a.ds).requires_grad_()
v = randn(B, K, T, dv).requires_grad_()
dout = randn(B, H, T, dv)


def attention():
    k = torch.cat([k_head, k_rope.expand(B, K, T, a.ds)], dim=-1) if a.ds else k_head
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=dq ** -0.5, enable_gqa=H != K)


def sync():
    if dev.type == "cuda":
        torch.cuda.synchronize()


pairs = B * H * T * (T + 1) / 2
flops = {"forward": 2 * pairs * (dq + dv), "backward": 2 * pairs * (3 * dq + 2 * dv)}
for pass_ in ("forward", "backward"):
    best = float("inf")
    for r in range(a.reps + 1):
        if pass_ == "forward":
            sync()
            t0 = time.perf_counter()
            with torch.no_grad():
                attention()
            sync()
        else:
            out = attention()
            sync()
            t0 = time.perf_counter()
            out.backward(dout)
            sync()
            for t in (q, k_head, k_rope, v):
                t.grad = None
        t = time.perf_counter() - t0
        if r > 0:
            best = min(best, t)
    print(json.dumps({"impl": "torch sdpa %s" % a.device, "label": a.label, "pass": pass_,
                      "dtype": "bf16" if a.bf16 else "f32", "batch": B, "tokens": T, "heads": H, "kv_heads": K,
                      "dq": dq, "dv": dv, "ms": round(best * 1e3, 3), "tflops": round(flops[pass_] / best * 1e-12, 3)}),
          flush=True)
