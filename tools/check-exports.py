#!/usr/bin/env python3
"""Logits of mlatrain's DeepSeek-V2 exports in stock HF transformers beside mlatrain's own, under
both conventions for the latent norms' epsilon: HF's (kv_a_layernorm and q_a_layernorm built with
1e-6 whatever the config says) and vLLM/SGLang's (rms_norm_eps from config.json), the latter
emulated by setting those norms' epsilon to rms_norm_eps after loading.

--tiny builds tiny random teachers with transformers (Llama, Qwen2 with random q/k/v biases,
Mistral with head_dim != hidden/heads), converts each with `mlatrain convert --dtype f32` (which
writes the export) and checks it; --model NAME=DIR checks an export already written (say the
SmolLM2 student). mlatrain's logits come from dump_logits (tools/dump_logits.c), which reads the
folder as `hf_model_load` does. Ids: the first windows of --val when given, else random.

The figure is ||logits_hf - logits_mlatrain|| / ||logits_mlatrain|| over every position (float32
on the CPU), and the exit status is 1 when one passes --max-rel (default 1e-5). PyPI transformers
and torch (not needed by the build or CI).

usage: check-exports.py --dump-logits BUILD/dump_logits [--mlatrain BUILD/mlatrain] [--tiny]
           [--model NAME=EXPORT_DIR ...] [--val VAL.h5] [--seq 64] [--batch 2] [--work DIR]
           [--json OUT] [--max-rel 1e-5]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM


# ---- tiny teachers ----

def tiny_teachers():
    """(name, config, convert settings) for each family; every teacher f32, 2 layers."""
    common = dict(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=8, max_position_embeddings=256, tie_word_embeddings=False,
                  bos_token_id=1, eos_token_id=2)
    llama = transformers.LlamaConfig(num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=10000.0, **common)
    qwen = transformers.Qwen2Config(num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=1000000.0,
                                    use_sliding_window=False, **common)
    qwen_eps = transformers.Qwen2Config(num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=1000000.0,
                                        use_sliding_window=False, **dict(common, tie_word_embeddings=True))
    mistral = transformers.MistralConfig(num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5, rope_theta=10000.0,
                                         sliding_window=None, **common)
    mla = {"kv_lora_rank": 16, "qk_rope_head_dim": 4, "qk_nope_head_dim": 8, "v_head_dim": 8,
           "rope_select": "uniform", "calibration_tokens": 256}
    return [
        ("llama", llama, mla),
        ("llama-latent-norm", llama, dict(mla, latent_norm=True, q_norm=True, q_lora_rank=24)),
        ("qwen2-bias", qwen, mla),                                   # q bias through the q bottleneck
        ("qwen2-bias-qlora", qwen, dict(mla, q_lora_rank=24)),
        ("qwen2-bias-eps1e-5-tied", qwen_eps, dict(mla, latent_norm=True)),
        ("mistral", mistral, dict(mla, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16)),
        ("llama-qlora", llama, dict(mla, q_lora_rank=24)),           # both norms written linear
    ]


def write_teacher(cfg, path, seed):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):          # random init leaves them zero
                p.normal_(0.0, 0.5)
            elif "norm" in name:                # around 1, not exactly 1, so a misplaced norm shows
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
    model.save_pretrained(path, safe_serialization=True)


def convert(mlatrain, teacher_dir, mla, out_dir, work):
    cfg = {"run": {"dir": os.path.join(work, "unused"), "seed": 3},
           "student": {"init_from": teacher_dir, "mla": mla},
           "data": {"seq_len": 64}}
    path = out_dir + ".json"
    json.dump(cfg, open(path, "w"))
    r = subprocess.run([mlatrain, "convert", "--config", path, "--out", out_dir, "--dtype", "f32"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"mlatrain convert failed for {teacher_dir}:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")


# ---- the comparison ----

def mlatrain_logits(dump, export_dir, ids, work):
    ids_path = os.path.join(work, "ids.bin")
    out_path = os.path.join(work, "logits.bin")
    ids.astype(np.int32).tofile(ids_path)
    r = subprocess.run([dump, export_dir, ids_path, str(ids.shape[1]), out_path], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"dump_logits failed on {export_dir}: {r.stderr.strip()}")
    return np.fromfile(out_path, dtype=np.float32).reshape(ids.shape[0], ids.shape[1], -1)


def hf_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor(ids, dtype=torch.long)).logits.float().numpy()


def latent_norms(model):
    for layer in model.model.layers:
        attn = layer.self_attn
        for norm in (getattr(attn, "kv_a_layernorm", None), getattr(attn, "q_a_layernorm", None)):
            if norm is not None:
                yield norm


def rel(a, b):
    return float(np.linalg.norm((a - b).astype(np.float64)) / np.linalg.norm(b.astype(np.float64)))


def unrescaled_vllm(model, cfg, ids):
    """What vLLM computed of an export written with the trained epsilon and no residual rescale: the
    rescale undone, every norm (latent ones included, as vLLM builds them) at the trained epsilon.
    Changes the model in place; None when the export needed no rescale."""
    trained = cfg.get("mlatrain_rms_norm_eps")
    if not trained or trained == cfg["rms_norm_eps"]:
        return None
    s = (cfg["rms_norm_eps"] / trained) ** 0.5
    with torch.no_grad():
        model.model.embed_tokens.weight.div_(s)
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.div_(s)
            layer.mlp.down_proj.weight.div_(s)
            layer.input_layernorm.variance_epsilon = trained
            layer.post_attention_layernorm.variance_epsilon = trained
        if cfg.get("tie_word_embeddings"):  # transformers ties the head to the (scaled) embedding
            model.model.norm.weight.mul_(s)
        model.model.norm.variance_epsilon = trained
        for n in latent_norms(model):
            n.variance_epsilon = trained
    return hf_logits(model, ids)


def check_export(name, export_dir, dump, ids, work):
    cfg = json.load(open(os.path.join(export_dir, "config.json")))
    model, info = AutoModelForCausalLM.from_pretrained(export_dir, dtype=torch.float32, output_loading_info=True)
    model.eval()
    bad = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if bad:
        raise SystemExit(f"{name}: transformers did not load every tensor as it is: {bad}")
    ref = mlatrain_logits(dump, export_dir, ids, work)
    hf_eps = sorted({n.variance_epsilon for n in latent_norms(model)})
    hf = hf_logits(model, ids)
    for n in latent_norms(model):
        n.variance_epsilon = cfg["rms_norm_eps"]
    vllm = hf_logits(model, ids)
    before = unrescaled_vllm(model, cfg, ids)
    return {"export": export_dir, "rms_norm_eps": cfg["rms_norm_eps"],
            "trained_rms_norm_eps": cfg.get("mlatrain_rms_norm_eps", cfg["rms_norm_eps"]),
            "attention_bias": cfg.get("attention_bias", False), "q_lora_rank": cfg.get("q_lora_rank"),
            "hf_latent_norm_eps": hf_eps, "positions": int(ids.size),
            "rel_hf": rel(hf, ref), "rel_vllm": rel(vllm, ref),
            "rel_vllm_unrescaled": None if before is None else rel(before, ref)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dump-logits", required=True)
    ap.add_argument("--mlatrain")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--model", action="append", default=[], metavar="NAME=DIR")
    ap.add_argument("--val")
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--work")
    ap.add_argument("--json")
    ap.add_argument("--max-rel", type=float, default=1e-5)
    a = ap.parse_args()
    work = a.work or tempfile.mkdtemp(prefix="check-exports-")
    os.makedirs(work, exist_ok=True)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    transformers.utils.logging.disable_progress_bar()

    exports = []
    if a.tiny:
        if not a.mlatrain:
            raise SystemExit("--tiny needs --mlatrain (the conversion writes the exports)")
        for i, (name, cfg, mla) in enumerate(tiny_teachers()):
            teacher = os.path.join(work, "teacher-" + name)
            out = os.path.join(work, "export-" + name)
            write_teacher(cfg, teacher, seed=11 + i)
            convert(a.mlatrain, teacher, mla, out, work)
            exports.append((name, out))
    for spec in a.model:
        name, _, path = spec.partition("=")
        exports.append((name, path))
    if not exports:
        raise SystemExit("nothing to check: give --tiny or --model NAME=DIR")

    rows, failed = {}, False
    print(f"transformers {transformers.__version__}, torch {torch.__version__}; relative error of HF's logits "
          f"against mlatrain's")
    print("| export | rms_norm_eps (trained) | attention_bias | q_lora | HF convention | vLLM convention | "
          "vLLM, had rms_norm_eps stayed the trained one |")
    print("|---|---|---|---|---|---|---|")
    for name, path in exports:
        vocab = json.load(open(os.path.join(path, "config.json")))["vocab_size"]
        if a.val:
            import h5py
            tokens = h5py.File(a.val, "r")["tokens"][: a.batch * a.seq].astype(np.int64)
            ids = tokens.reshape(a.batch, a.seq)
        else:
            ids = np.random.default_rng(5).integers(0, vocab, size=(a.batch, a.seq))
        r = check_export(name, path, a.dump_logits, ids, work)
        rows[name] = r
        print(f"| {name} | {r['rms_norm_eps']:g} ({r['trained_rms_norm_eps']:g}) | {r['attention_bias']} | "
              f"{r['q_lora_rank']} | {r['rel_hf']:.2e} | {r['rel_vllm']:.2e} | "
              f"{'-' if r['rel_vllm_unrescaled'] is None else '%.2e' % r['rel_vllm_unrescaled']} |", flush=True)
        failed |= not (r["rel_hf"] <= a.max_rel and r["rel_vllm"] <= a.max_rel)
    if a.json:
        json.dump(rows, open(a.json, "w"), indent=1)
    if failed:
        print(f"FAIL: a figure is past {a.max_rel:g}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
