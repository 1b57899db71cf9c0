#!/usr/bin/env python3
"""Loads an exported student with stock HF transformers and compares its loss with mlatrain's.

Not a test (it needs PyPI's torch and transformers): a check that an export is the model mlatrain
trained. Reads the first WINDOWS windows of SEQ+1 tokens of a token file in order, as
`mlatrain eval` does, and prints HF's mean loss beside the one mlatrain printed for the same model
and windows (passed in), with their relative difference.

usage: check-export-transformers.py EXPORT_DIR VAL.h5 MLATRAIN_LOSS [--seq 512] [--windows 8]
"""
import argparse
import math

import h5py
import numpy as np
import torch
from transformers import AutoModelForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("export_dir")
    ap.add_argument("val")
    ap.add_argument("mlatrain_loss", type=float)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--windows", type=int, default=8)
    a = ap.parse_args()
    tokens = h5py.File(a.val, "r")["tokens"][:].astype(np.int64)
    model = AutoModelForCausalLM.from_pretrained(a.export_dir, dtype=torch.float32)
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for w in range(a.windows):
            win = torch.tensor(tokens[w * (a.seq + 1):(w + 1) * (a.seq + 1)])[None]
            if win.shape[1] < a.seq + 1:
                break
            logits = model(win[:, :-1]).logits.double()
            lp = torch.log_softmax(logits, -1)
            nll = -lp[0, torch.arange(a.seq), win[0, 1:]]
            total += nll.sum().item()
            count += a.seq
    hf = total / count
    rel = abs(hf - a.mlatrain_loss) / abs(a.mlatrain_loss)
    print(f"{model.config.model_type}: HF transformers loss {hf:.6f} (ppl {math.exp(hf):.3f}), "
          f"mlatrain {a.mlatrain_loss:.6f}, relative difference {rel:.2e} over {count} tokens")


if __name__ == "__main__":
    main()
