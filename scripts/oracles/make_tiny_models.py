#!/usr/bin/env python3
"""Writes small random-weight GGUF models, one per architecture the CPU engine serves, with
each architecture's real tensor names, shapes and metadata keys (as llama.cpp's converter
writes them), in f32. `record-llama-cpp.sh` quantizes them with llama.cpp's `llama-quantize`
and records llama.cpp's answers on them.

The vocabulary is small and synthetic on purpose (512 byte-level BPE tokens): the embedding
matrix is what makes real vocabularies tens of MB, and these models are committed. Real
vocabularies are tested separately, against llama.cpp's own tokenizer test vectors.

Shapes: hidden 256 and MLP 512 so that every matrix row is a whole K-quant super-block (256)
and llama-quantize really writes Q4_K/Q5_K/Q6_K rather than its fallbacks.

Usage: make_tiny_models.py OUT_DIR [--1b]   (--1b: the ~1B benchmark models instead)
"""
import sys
from pathlib import Path

import numpy as np
import gguf

HIDDEN, FFN, LAYERS, HEADS, KV_HEADS, CONTEXT = 256, 512, 2, 4, 2, 512
VOCAB = 512


def byte_level_alphabet():
    """GPT-2's bytes-to-unicode map: each byte as a printable character."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


def vocabulary():
    """The 128 ASCII byte tokens (no token is a partial UTF-8 character: llama-server holds
    such a token's text, and its probabilities, back until the character completes, which
    would misalign the recorded steps), merges of frequent English pairs, seven control tokens (llama.cpp looks
    `<|end|>`, `<s>`, `</s>` and `<unk>` up by name in Phi-3 vocabularies)."""
    tokens = byte_level_alphabet()[:128]
    merges = []
    letters = "etaoinshrdlu"
    space = tokens[ord(" ")]
    for a in space + letters:
        for b in letters:
            if len(tokens) >= VOCAB - 7:
                break
            merged = a + b
            if merged not in tokens:
                tokens.append(merged)
                merges.append(f"{a} {b}")
    while len(tokens) < VOCAB - 7:
        tokens.append(f"<unused{len(tokens)}>")
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|end|>", "<s>", "</s>", "<unk>"]
    types = [gguf.TokenType.NORMAL] * len(tokens) + [gguf.TokenType.CONTROL] * len(specials)
    return tokens + specials, types, merges


def rng_for(name):
    """The same weights on every run (Python's `hash` is salted per process)."""
    return np.random.default_rng(sum(map(ord, name)) * 7919)


def matrix(rng, rows, cols, scale=1.0):
    """`[rows, cols]` (outputs, inputs), scaled so activations stay near unit size."""
    return (rng.standard_normal((rows, cols)) * scale / np.sqrt(cols)).astype(np.float32)


def norm(rng, n):
    return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)


def write(path, arch, name, *, head_dim=None, qkv_bias=False, qk_norm=False, fused=False,
          tied=False, rope_freqs=False, rope_base=10000.0, post_norms=False, sliding=None):
    head_dim = head_dim or HIDDEN // HEADS
    q_dim, kv_dim = HEADS * head_dim, KV_HEADS * head_dim
    rng = rng_for(name)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(name)
    w.add_context_length(CONTEXT)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FFN)
    w.add_block_count(LAYERS)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    if head_dim != HIDDEN // HEADS:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(rope_base)
    w.add_rope_dimension_count(head_dim)
    if sliding:
        window, pattern, base = sliding
        w.add_sliding_window(window)
        w.add_sliding_window_pattern(pattern)
        w.add_rope_freq_base_swa(base)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    tokens, types, merges = vocabulary()
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(VOCAB - 3)
    w.add_eos_token_id(VOCAB - 5)
    w.add_chat_template(
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

    # Small enough that tied output projections (Qwen 2) give logits of a few units.
    w.add_tensor("token_embd.weight",
                 (0.2 * rng.standard_normal((VOCAB, HIDDEN))).astype(np.float32))
    if not tied:
        w.add_tensor("output.weight", matrix(rng, VOCAB, HIDDEN, 2.0))
    w.add_tensor("output_norm.weight", norm(rng, HIDDEN))
    if rope_freqs:
        # Llama 3.1's shape of factors: 1 for high frequencies, up to 8 for low ones.
        w.add_tensor("rope_freqs.weight",
                     np.geomspace(1.0, 8.0, head_dim // 2).astype(np.float32))
    for i in range(LAYERS):
        p = f"blk.{i}"
        w.add_tensor(f"{p}.attn_norm.weight", norm(rng, HIDDEN))
        if fused:
            w.add_tensor(f"{p}.attn_qkv.weight", matrix(rng, q_dim + 2 * kv_dim, HIDDEN))
        else:
            w.add_tensor(f"{p}.attn_q.weight", matrix(rng, q_dim, HIDDEN))
            w.add_tensor(f"{p}.attn_k.weight", matrix(rng, kv_dim, HIDDEN))
            w.add_tensor(f"{p}.attn_v.weight", matrix(rng, kv_dim, HIDDEN))
        if qkv_bias:
            w.add_tensor(f"{p}.attn_q.bias", (0.2 * rng.standard_normal(q_dim)).astype(np.float32))
            w.add_tensor(f"{p}.attn_k.bias", (0.2 * rng.standard_normal(kv_dim)).astype(np.float32))
            w.add_tensor(f"{p}.attn_v.bias", (0.2 * rng.standard_normal(kv_dim)).astype(np.float32))
        if qk_norm:
            w.add_tensor(f"{p}.attn_q_norm.weight", norm(rng, head_dim))
            w.add_tensor(f"{p}.attn_k_norm.weight", norm(rng, head_dim))
        w.add_tensor(f"{p}.attn_output.weight", matrix(rng, HIDDEN, q_dim))
        if post_norms:
            w.add_tensor(f"{p}.post_attention_norm.weight", norm(rng, HIDDEN))
            w.add_tensor(f"{p}.post_ffw_norm.weight", norm(rng, HIDDEN))
        w.add_tensor(f"{p}.ffn_norm.weight", norm(rng, HIDDEN))
        if fused:
            w.add_tensor(f"{p}.ffn_up.weight", matrix(rng, 2 * FFN, HIDDEN))
        else:
            w.add_tensor(f"{p}.ffn_gate.weight", matrix(rng, FFN, HIDDEN))
            w.add_tensor(f"{p}.ffn_up.weight", matrix(rng, FFN, HIDDEN))
        w.add_tensor(f"{p}.ffn_down.weight", matrix(rng, HIDDEN, FFN))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


MODELS = {
    # Llama 3.1-style: RoPE frequency factors, base 500000.
    "llama": dict(arch="llama", rope_freqs=True, rope_base=500000.0),
    "qwen2": dict(arch="qwen2", qkv_bias=True, tied=True, rope_base=1000000.0),
    "qwen3": dict(arch="qwen3", qk_norm=True, head_dim=128, rope_base=1000000.0),
    "phi3": dict(arch="phi3", fused=True),
    "exaone": dict(arch="exaone", rope_base=1000000.0),
    # Gemma 3: a window of 16 on every other layer (layer 0 slides, layer 1 is global), so the
    # recorded prompts (up to 131 tokens) cross it.
    "gemma3": dict(arch="gemma3", qk_norm=True, head_dim=128, tied=True, post_norms=True,
                   sliding=(16, 2, 10000.0), rope_base=1000000.0),
}

def write_1b(out):
    """~1.1B-parameter llama and qwen2 models (hidden 2048, 22 layers, MLP 5632, 32 heads over
    4 KV heads, vocabulary 32000: TinyLlama's shape) with random weights, for benchmarks only
    (their text is noise; they are generated, never committed)."""
    global HIDDEN, FFN, LAYERS, HEADS, KV_HEADS, CONTEXT, VOCAB
    HIDDEN, FFN, LAYERS, HEADS, KV_HEADS, CONTEXT, VOCAB = 2048, 5632, 22, 32, 4, 4096, 32000
    write(out / "random-1b-llama-f32.gguf", "llama", "random-1b-llama", rope_base=10000.0)
    write(out / "random-1b-qwen2-f32.gguf", "qwen2", "random-1b-qwen2", qkv_bias=True,
          rope_base=1000000.0)


if __name__ == "__main__":
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    if sys.argv[2:] == ["--1b"]:
        write_1b(out)
        sys.exit(0)
    for key, spec in MODELS.items():
        spec = dict(spec)
        arch = spec.pop("arch")
        write(out / f"tiny-{key}-f32.gguf", arch, f"tiny-{key}", **spec)
        print(out / f"tiny-{key}-f32.gguf")
