"""The PyTorch anchor for the request-core benchmark on a GPU (docs/benchmarks.md).

The same workload as `cargo bench -p local_engine --bench request_core`: C requests at once, each a
~17-token prompt and 128 greedy tokens (end of sequence ignored), on SmolLM2-135M-Instruct, run as
one static batch through Hugging Face transformers' `generate` in bf16 with SDPA attention (what
a PyTorch user runs first). Reports aggregate output tokens/s, TTFT (prefill and first token of
the batch) and inter-token latency per decoding step.

    python3 torch_anchor.py --gguf PATH [--concurrency 1 4 16 64]   # the real weights
    python3 torch_anchor.py --random [--concurrency ...]           # same shapes, random weights

With `--random` the weights are random but every shape is the model's, so the speed is the same:
it needs no model file (used when the file cannot reach the GPU machine).
"""

import argparse
import os
import time

import torch
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    LogitsProcessor,
    LogitsProcessorList,
)

OUTPUT_TOKENS = 128
PROMPT = "In a small village by the sea, an old fisherman told the children a story about"


class StepClock(LogitsProcessor):
    """Records the time each decoding step's logits are ready (after a device sync)."""

    def __init__(self):
        self.times = []

    def __call__(self, input_ids, scores):
        torch.cuda.synchronize()
        self.times.append(time.perf_counter())
        return scores


def percentile(values, p):
    values = sorted(values)
    return values[round(p / 100 * (len(values) - 1))]


def smollm2_135m_config():
    # From the GGUF's metadata (llama.* keys); tied embeddings as in the model.
    return LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        rope_theta=100000.0,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--gguf", help="path of the GGUF file (weights dequantized to bf16)")
    parser.add_argument("--random", action="store_true", help="random weights, the model's shapes")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    args = parser.parse_args()
    device = "cuda:0"
    if args.gguf:
        model = AutoModelForCausalLM.from_pretrained(
            os.path.dirname(os.path.abspath(args.gguf)),
            gguf_file=os.path.basename(args.gguf),
            dtype=torch.bfloat16,
            attn_implementation="sdpa",
        )
        try:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(
                os.path.dirname(os.path.abspath(args.gguf)),
                gguf_file=os.path.basename(args.gguf),
            )
            prompt = tokenizer(PROMPT)["input_ids"]
        except Exception as error:  # the tokenizer only sets the prompt's ids, not the speed
            print(f"tokenizer not loaded ({error}); prompt ids stand in")
            prompt = list(range(100, 117))
        weights = "GGUF dequantized to bf16"
    elif args.random:
        torch.manual_seed(0)
        model = LlamaForCausalLM(smollm2_135m_config()).to(torch.bfloat16)
        prompt = list(range(100, 117))
        weights = "random, the model's shapes, bf16"
    else:
        parser.error("--gguf PATH or --random")
    model = model.to(device).eval()
    # An idle H200 sits at a few hundred MHz: two seconds of matrix products first, so the
    # timed runs see the clocks a busy server has.
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    until = time.perf_counter() + 2
    while time.perf_counter() < until:
        a @ a
        torch.cuda.synchronize()
    print(
        f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}, weights: {weights}, "
        f"prompt {len(prompt)} tokens, {OUTPUT_TOKENS} tokens out per request"
    )
    print("| concurrency | aggregate output tok/s | TTFT p50 | TTFT p99 | ITL p50 | ITL p99 |")
    print("|---|---|---|---|---|---|")
    for c in args.concurrency:
        ids = torch.tensor([prompt] * c, device=device)
        mask = torch.ones_like(ids)

        def generate(tokens, clock=None):
            return model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=tokens,
                min_new_tokens=tokens,
                do_sample=False,
                logits_processor=LogitsProcessorList([clock] if clock else []),
                pad_token_id=2,
            )

        with torch.inference_mode():
            generate(8)  # warm-up: kernels chosen, memory pools filled
            torch.cuda.synchronize()
            clock = StepClock()
            started = time.perf_counter()
            out = generate(OUTPUT_TOKENS, clock)
            torch.cuda.synchronize()
            wall = time.perf_counter() - started
        new_tokens = (out.shape[1] - len(prompt)) * c
        # A static batch: every request gets its first token at the first step.
        ttft = (clock.times[0] - started) * 1000
        itl = [(b - a) * 1000 for a, b in zip(clock.times, clock.times[1:])]
        print(
            f"| {c} | {new_tokens / wall:.1f} | {ttft:.0f} ms | {ttft:.0f} ms | "
            f"{percentile(itl, 50):.1f} ms | {percentile(itl, 99):.1f} ms |"
        )


if __name__ == "__main__":
    main()
