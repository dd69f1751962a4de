#!/usr/bin/env python3
"""Writes a LoRA adapter of random low-rank weights for any base GGUF, in llama.cpp's adapter
format (what its `convert_lora_to_gguf.py` writes): every attention and feed-forward projection
of every layer gets `<tensor>.lora_a` (`[rank, in]`) and `<tensor>.lora_b` (`[out, rank]`),
shapes read from the base file itself. For benchmarks: what an adapter costs depends on its
rank and shapes, not on what it learnt.

Usage: make_lora_for_model.py BASE.gguf OUT.gguf [--rank 16] [--alpha 16] [--seed 1] [--type f16|f32]
"""
import argparse
import re

import numpy as np
import gguf

PROJECTIONS = re.compile(
    r"^blk\.\d+\.(attn_q|attn_k|attn_v|attn_qkv|attn_output|ffn_gate|ffn_up|ffn_down)\.weight$")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("base")
    p.add_argument("out")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--alpha", type=float, default=16.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--type", choices=["f16", "f32"], default="f16")
    args = p.parse_args()

    base = gguf.GGUFReader(args.base)
    arch = bytes(base.fields["general.architecture"].parts[-1]).decode()
    rng = np.random.default_rng(args.seed * 7919)
    dtype = np.float16 if args.type == "f16" else np.float32
    w = gguf.GGUFWriter(args.out, arch)
    w.add_string("general.type", "adapter")
    w.add_string("adapter.type", "lora")
    w.add_float32("adapter.lora.alpha", args.alpha)
    w.add_name(f"random rank-{args.rank} adapter (seed {args.seed})")
    n = 0
    for tensor in base.tensors:
        if not PROJECTIONS.match(tensor.name):
            continue
        # GGUF lists dimensions innermost first: [in, out].
        n_in, n_out = (int(d) for d in tensor.shape[:2])
        a = rng.standard_normal((args.rank, n_in)) / np.sqrt(n_in)
        b = rng.standard_normal((n_out, args.rank)) / np.sqrt(args.rank) * 0.1
        w.add_tensor(f"{tensor.name}.lora_a", a.astype(dtype))
        w.add_tensor(f"{tensor.name}.lora_b", b.astype(dtype))
        n += 1
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"{args.out}: {n} projections, rank {args.rank}, {arch}")


if __name__ == "__main__":
    main()
