#!/usr/bin/env python3
"""A Llama-family HF folder re-labelled as Qwen2 with q/k/v biases added: a Qwen2-architecture
teacher of real weights, for measuring what keeping or dropping the biases costs a conversion.

Each bias entry is frac x (the output's typical size) x N(0, 1), the typical size of output row i
being ||W_i|| x rms(input_layernorm.weight) (the norm's output has about that rms per channel);
frac is 0.5 for q, 1.0 for k (Qwen2's key biases are its largest) and 0.2 for v. Seeded.

usage: as-qwen2-with-biases.py SRC_DIR OUT_DIR [--seed 7] [--scale 1.0]
"""
import argparse
import json
import os
import shutil

import numpy as np
from safetensors.numpy import load_file, save_file

FRACTIONS = {"q_proj": 0.5, "k_proj": 1.0, "v_proj": 0.2}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("src")
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies every fraction")
    a = ap.parse_args()
    cfg = json.load(open(os.path.join(a.src, "config.json")))
    tensors = load_file(os.path.join(a.src, "model.safetensors"))
    rng = np.random.default_rng(a.seed)
    for l in range(cfg["num_hidden_layers"]):
        g = tensors[f"model.layers.{l}.input_layernorm.weight"].astype(np.float64)
        g_rms = float(np.sqrt(np.mean(g * g)))
        for proj, frac in FRACTIONS.items():
            w = tensors[f"model.layers.{l}.self_attn.{proj}.weight"].astype(np.float64)
            size = np.linalg.norm(w, axis=1) * g_rms
            bias = a.scale * frac * size * rng.standard_normal(w.shape[0])
            tensors[f"model.layers.{l}.self_attn.{proj}.bias"] = bias.astype(np.float32)
    cfg["architectures"] = ["Qwen2ForCausalLM"]
    cfg["model_type"] = "qwen2"
    if cfg.get("head_dim") == cfg["hidden_size"] // cfg["num_attention_heads"]:
        del cfg["head_dim"]  # Qwen2Config derives it
    cfg["use_sliding_window"] = False
    cfg["torch_dtype"] = "float32"
    os.makedirs(a.out, exist_ok=True)
    save_file({k: np.ascontiguousarray(v.astype(np.float32)) for k, v in tensors.items()},
              os.path.join(a.out, "model.safetensors"), metadata={"format": "pt"})
    json.dump(cfg, open(os.path.join(a.out, "config.json"), "w"), indent=1)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if os.path.exists(os.path.join(a.src, name)):
            shutil.copy(os.path.join(a.src, name), a.out)


if __name__ == "__main__":
    main()
