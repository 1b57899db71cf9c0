#!/usr/bin/env python3
"""Loads an exported student with stock HF transformers and compares its loss with mlatrain's.

Not a test (it needs PyPI's torch and transformers): a check that an export is the model mlatrain
trained. Reads the first WINDOWS windows of SEQ+1 tokens of a token file in order, as
`mlatrain eval` does, and prints HF's mean loss beside the one mlatrain printed for the same model
and windows (passed in), with their relative difference.

--save-logits FILE keeps the first window's logits (float32 .npy, [SEQ, vocab]); --compare-logits
FILE prints their relative error ||a - b|| / ||b|| against such a file (another machine's, or
the CPU's run); --json FILE writes the figures; --device runs the model there (cpu, cuda).
--max-loss-rel and --max-logits-rel make the exit status 1 when a figure is past them.

usage: check-export-transformers.py EXPORT_DIR VAL.h5 MLATRAIN_LOSS [--seq 512] [--windows 8]
           [--device cpu] [--save-logits FILE] [--compare-logits FILE] [--json FILE]
           [--max-loss-rel X] [--max-logits-rel X]
"""
import argparse
import json
import math
import sys

import h5py
import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("export_dir")
    ap.add_argument("val")
    ap.add_argument("mlatrain_loss", type=float)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--save-logits")
    ap.add_argument("--compare-logits")
    ap.add_argument("--json")
    ap.add_argument("--max-loss-rel", type=float)
    ap.add_argument("--max-logits-rel", type=float)
    a = ap.parse_args()
    tokens = h5py.File(a.val, "r")["tokens"][:].astype(np.int64)
    model = AutoModelForCausalLM.from_pretrained(a.export_dir, dtype=torch.float32).to(a.device)
    model.eval()
    total, count, first = 0.0, 0, None
    with torch.no_grad():
        for w in range(a.windows):
            win = torch.tensor(tokens[w * (a.seq + 1):(w + 1) * (a.seq + 1)])[None].to(a.device)
            if win.shape[1] < a.seq + 1:
                break
            logits = model(win[:, :-1]).logits.double()
            if first is None:
                first = logits[0].float().cpu().numpy()
            lp = torch.log_softmax(logits, -1)
            nll = -lp[0, torch.arange(a.seq, device=lp.device), win[0, 1:]]
            total += nll.sum().item()
            count += a.seq
    if count == 0:
        sys.exit(f"{a.val}: fewer than {a.seq + 1} tokens")
    hf = total / count
    rel = abs(hf - a.mlatrain_loss) / abs(a.mlatrain_loss)
    print(f"{model.config.model_type}: HF transformers {transformers.__version__} ({a.device}) loss {hf:.6f} "
          f"(ppl {math.exp(hf):.3f}), mlatrain {a.mlatrain_loss:.6f}, relative difference {rel:.2e} "
          f"over {count} tokens")
    result = {"model_type": model.config.model_type, "transformers": transformers.__version__,
              "torch": torch.__version__, "device": a.device, "tokens": count, "hf_loss": hf,
              "mlatrain_loss": a.mlatrain_loss, "loss_rel": rel}
    if a.save_logits:
        np.save(a.save_logits, first)
    if a.compare_logits:
        ref = np.load(a.compare_logits).astype(np.float64)
        if ref.shape != first.shape:
            sys.exit(f"{a.compare_logits}: logits of shape {ref.shape}, this run's are {first.shape}")
        err = float(np.linalg.norm(first.astype(np.float64) - ref) / np.linalg.norm(ref))
        result["logits_rel"] = err
        print(f"first window's logits against {a.compare_logits}: relative error {err:.2e}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)
    bad = []
    if a.max_loss_rel is not None and not rel <= a.max_loss_rel:
        bad.append(f"loss relative difference {rel:.2e} > {a.max_loss_rel:g}")
    if a.max_logits_rel is not None and not result.get("logits_rel", math.inf) <= a.max_logits_rel:
        bad.append(f"logits relative error {result.get('logits_rel', 'absent')} > {a.max_logits_rel:g}")
    if bad:
        sys.exit("FAILED: " + "; ".join(bad))


if __name__ == "__main__":
    main()
