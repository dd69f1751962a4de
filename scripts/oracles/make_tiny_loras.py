#!/usr/bin/env python3
"""Writes LoRA adapters for the tiny models (make_tiny_models.py) in llama.cpp's GGUF adapter
format, as its `convert_lora_to_gguf.py` writes them: `general.type = adapter`,
`adapter.type = lora`, `adapter.lora.alpha`, and per adapted projection `<tensor>.lora_a`
(`[rank, in]`) and `<tensor>.lora_b` (`[out, rank]`) beside the base tensor's name.

Random low-rank weights of the right shapes, scaled so an adapter changes the model's answers
(llama.cpp applies `alpha / rank` times `B·(A·x)` to each projection).

Usage: make_tiny_loras.py OUT_DIR
"""
import sys
from pathlib import Path

import numpy as np
import gguf

import make_tiny_models as tiny

# (file stem, architecture key, rank, alpha, tensor type, seed)
ADAPTERS = [
    ("tiny-llama-lora-f32", "llama", 16, 8.0, "f32", 1),
    ("tiny-llama-lora-q8_0", "llama", 32, 16.0, "q8_0", 2),
    ("tiny-llama-lora-b-f16", "llama", 16, 16.0, "f16", 3),
    ("tiny-llama-lora-c-f16", "llama", 8, 8.0, "f16", 4),
    ("tiny-qwen2-lora-f16", "qwen2", 16, 8.0, "f16", 5),
    ("tiny-qwen3-lora-f16", "qwen3", 16, 8.0, "f16", 6),
    ("tiny-phi3-lora-f16", "phi3", 16, 8.0, "f16", 7),
    ("tiny-exaone-lora-f16", "exaone", 16, 8.0, "f16", 8),
    ("tiny-gemma3-lora-f16", "gemma3", 16, 8.0, "f16", 9),
]


def projections(spec):
    """`(base tensor name, out, in)` of every projection of one layer."""
    head_dim = spec.get("head_dim") or tiny.HIDDEN // tiny.HEADS
    q_dim, kv_dim = tiny.HEADS * head_dim, tiny.KV_HEADS * head_dim
    h, f = tiny.HIDDEN, tiny.FFN
    if spec.get("fused"):
        return [("attn_qkv", q_dim + 2 * kv_dim, h), ("attn_output", h, q_dim),
                ("ffn_up", 2 * f, h), ("ffn_down", h, f)]
    return [("attn_q", q_dim, h), ("attn_k", kv_dim, h), ("attn_v", kv_dim, h),
            ("attn_output", h, q_dim), ("ffn_gate", f, h), ("ffn_up", f, h),
            ("ffn_down", h, f)]


def add(writer, name, array, kind):
    if kind == "f32":
        writer.add_tensor(name, array.astype(np.float32))
    elif kind == "f16":
        writer.add_tensor(name, array.astype(np.float16))
    else:
        quantized = gguf.quants.quantize(array.astype(np.float32), gguf.GGMLQuantizationType.Q8_0)
        writer.add_tensor(name, quantized, raw_dtype=gguf.GGMLQuantizationType.Q8_0)


def write(out, stem, key, rank, alpha, kind, seed):
    spec = dict(tiny.MODELS[key])
    arch = spec.pop("arch")
    rng = np.random.default_rng(seed * 104729)
    w = gguf.GGUFWriter(str(out / f"{stem}.gguf"), arch)
    w.add_string("general.type", "adapter")
    w.add_string("adapter.type", "lora")
    w.add_float32("adapter.lora.alpha", alpha)
    w.add_name(stem)
    for i in range(tiny.LAYERS):
        for base, n_out, n_in in projections(spec):
            a = rng.standard_normal((rank, n_in)) / np.sqrt(n_in)
            b = rng.standard_normal((n_out, rank)) / np.sqrt(rank)
            add(w, f"blk.{i}.{base}.weight.lora_a", a, kind)
            add(w, f"blk.{i}.{base}.weight.lora_b", b, kind)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out / f"{stem}.gguf"


if __name__ == "__main__":
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for adapter in ADAPTERS:
        print(write(out, *adapter))
