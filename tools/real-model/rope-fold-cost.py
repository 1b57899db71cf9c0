#!/usr/bin/env python3
"""What folding a RoPE frequency pair onto its neighbour's frequency (TransMLA's FreqFold) costs a
real teacher, beside that pair losing RoPE outright, per pair: the attention-weighted score error
sum_{t>=s} P[t,s] (c'(t,s) - c(t,s))^2 over all layers and heads, relative to the pair's own
sum P c^2, where c is the pair's RoPE score term q_i(t) . R((t-s) w_i) k_i(s) and c' the same term
at w_{i-1} (folded) or at 0 (no RoPE, no fitted map). P is the teacher's own attention.

usage: rope-fold-cost.py HF_DIR TOKENS.h5 [--tokens 512]   (needs torch, transformers, h5py)
"""
import argparse

import h5py
import numpy as np
import torch
from transformers import AutoModelForCausalLM

ap = argparse.ArgumentParser()
ap.add_argument("model")
ap.add_argument("tokens")
ap.add_argument("--tokens", dest="n", type=int, default=512)
args = ap.parse_args()
torch.set_num_threads(1)
m = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, attn_implementation="eager").eval()
cfg = m.config
H, K = cfg.num_attention_heads, cfg.num_key_value_heads
hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // H
half = hd // 2
theta = (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta") or getattr(cfg, "rope_theta", 10000.0)
inv = 1.0 / (theta ** (torch.arange(0, half, dtype=torch.float64) * 2 / hd))
T = args.n
ids = torch.tensor(np.array(h5py.File(args.tokens)["tokens"][:T]), dtype=torch.long)[None]
inputs = {}


def keep_input(l):
    def hook(mod, a, kw):
        inputs[l] = kw["hidden_states"].detach()
    return hook


for l, layer in enumerate(m.model.layers):
    layer.self_attn.register_forward_pre_hook(keep_input(l), with_kwargs=True)
with torch.no_grad():
    out = m(ids, output_attentions=True)
pos = torch.arange(T, dtype=torch.float64)
dist = pos[:, None] - pos[None, :]
energy, folded, dropped = np.zeros(half), np.zeros(half), np.zeros(half)
for l in range(cfg.num_hidden_layers):
    a = inputs[l][0].double()
    att = m.model.layers[l].self_attn
    q = (a @ att.q_proj.weight.double().T).view(T, H, hd)
    k = (a @ att.k_proj.weight.double().T).view(T, K, hd)
    P = out.attentions[l][0].double() * (dist >= 0)
    for h in range(H):
        g, Ph = h // (H // K), P[h]
        zq = torch.complex(q[:, h, :half], q[:, h, half:])  # rotate-half pairs as complex numbers
        zk = torch.complex(k[:, g, :half], k[:, g, half:])
        for i in range(1, half):
            prod = zq[:, i][:, None] * zk[:, i].conj()[None, :]
            c = (prod * torch.exp(1j * dist * inv[i])).real
            energy[i] += (Ph * c**2).sum().item()
            folded[i] += (Ph * ((prod * torch.exp(1j * dist * inv[i - 1])).real - c) ** 2).sum().item()
            dropped[i] += (Ph * (prod.real - c) ** 2).sum().item()
print(f"rope_theta {theta:g}, head_dim {hd}: adjacent frequencies differ by a factor {float(inv[1] / inv[0]):.3f}")
print("| pair | share of score energy | error folded onto pair - 1 | error without RoPE |")
print("|---|---|---|---|")
E = energy[1:].sum()
for i in range(1, half):
    print(f"| {i} | {energy[i] / E:.4f} | {folded[i] / energy[i]:.3f} | {dropped[i] / energy[i]:.3f} |")
for name, pairs in (("faster half", range(1, half // 2)), ("slower half", range(half // 2, half))):
    e = sum(energy[i] for i in pairs)
    print(f"{name}: {e / E:.3f} of the score energy; error folded {sum(folded[i] for i in pairs) / e:.3f}, "
          f"without RoPE {sum(dropped[i] for i in pairs) / e:.3f}")
