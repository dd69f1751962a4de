#!/usr/bin/env python3
"""Asks a running llama-server for its greedy continuation of fixed token-id prompts, with the
top log-probabilities of every step (computed by llama.cpp from the raw logits), and writes
them as a JSON fixture the Rust tests compare against.

Usage: record_logits.py URL MODEL_FILE_NAME OUT_JSON
"""
import json
import sys
import urllib.request

# Token-id prompts (the tiny models' vocabulary is synthetic): a short one, one that crosses
# a KV block boundary, and one long enough for several attention runs per head.
PROMPTS = [
    [509, 72, 101, 108, 108, 111],
    [509] + [(i * 37 + 11) % 500 for i in range(40)],
    [509] + [(i * 53 + 5) % 500 for i in range(130)],
]
STEPS = 8
TOP = 8


def post(url, body):
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.load(r)


def main():
    url, model, out = sys.argv[1:4]
    cases = []
    for prompt in PROMPTS:
        answer = post(f"{url}/completion", {
            "prompt": prompt, "n_predict": STEPS, "n_probs": TOP, "temperature": 0,
            # No `ignore_eos`: llama.cpp would mask end-of-generation tokens before computing
            # the probabilities; a case may instead end early on one.
            "top_k": 1, "cache_prompt": False, "return_tokens": True,
            "samplers": ["top_k"],
        })
        steps = []
        for step in answer["completion_probabilities"]:
            steps.append({
                "token": step["id"],
                "top": [[t["id"], round(t["logprob"], 6)] for t in step["top_logprobs"]],
            })
        if len(steps) != STEPS and answer.get("stop_type") != "eos":
            sys.exit(f"{model}: {len(steps)} steps recorded of {STEPS}")
        cases.append({"prompt": prompt, "steps": steps})
    json.dump({"model": model, "top": TOP, "cases": cases}, open(out, "w"), indent=1)
    print(out)


if __name__ == "__main__":
    main()
