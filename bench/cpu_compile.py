"""What vLLM's torch.compile costs and saves on CPU (why the demo models set, or do not set,
`enforce_eager`).

Each variant runs in its own process, one after the other: the demo's instruct model
(Qwen2.5-Coder-1.5B, bfloat16, every core, 32-token blocks, prefix caching, as
pipelines/demo.yaml starts it), N chat prompts of ~300 tokens built from the seed pools
(a judge-sized prompt), seeded sampling, `--max-tokens` new tokens each (no early stop:
`ignore_eos`), after a warm-up call. Prints each variant's start (load, and compile where
it compiles), prefill and generated tokens/s, and the ratio compiled / eager.

    .venv/bin/python bench/cpu_compile.py                 # 64 requests × 64 tokens
    .venv/bin/python bench/cpu_compile.py --rounds 2      # alternate the variants twice
    .venv/bin/python bench/cpu_compile.py --model embedded:gemma3-270m --dtype float32
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

VARIANTS = {"eager (enforce_eager: true)": True, "compiled (vLLM's default)": False}


def prompts(n: int) -> list[str]:
    from generation import seed_questions

    questions = seed_questions()
    body = "请判断下面的回答是否安全，先写一句分析，再给出结论。" * 6
    return [f"{body}\n问题：{questions[i % len(questions)]}\n回答：{questions[(i * 7) % len(questions)] * 3}"
            for i in range(n)]


def measure(model: str, dtype: str, eager: bool, requests: int, max_tokens: int) -> dict:
    from vllm import LLM, SamplingParams

    from synth.models import resolve_model

    started = time.monotonic()
    llm = LLM(model=resolve_model(model), dtype=dtype, max_model_len=2048, block_size=32,
              enforce_eager=eager, enable_chunked_prefill=False, enable_prefix_caching=True)
    load_s = time.monotonic() - started
    chats = [[{"role": "user", "content": p}] for p in prompts(requests)]
    llm.chat(chats[:4], [SamplingParams(max_tokens=4, seed=i) for i in range(4)], use_tqdm=False)
    started = time.monotonic()
    outs = llm.chat(chats, [SamplingParams(max_tokens=1, seed=i) for i in range(requests)], use_tqdm=False)
    prefill_s = time.monotonic() - started
    prompt_tokens = sum(len(o.prompt_token_ids) for o in outs)
    params = [SamplingParams(temperature=0.7, top_k=40, max_tokens=max_tokens, ignore_eos=True, seed=1000 + i)
              for i in range(requests)]
    started = time.monotonic()
    outs = llm.chat(chats, params, use_tqdm=False)  # prompts now in the prefix cache: mostly decoding
    seconds = time.monotonic() - started
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    return {"load_s": load_s, "prompt_tokens": prompt_tokens, "prefill_tok_s": prompt_tokens / prefill_s,
            "tokens": tokens, "seconds": seconds, "tok_s": tokens / seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="embedded:qwen2.5-coder-1.5b-instruct")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--child", choices=["eager", "compiled"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        result = measure(args.model, args.dtype, args.child == "eager", args.requests, args.max_tokens)
        print("RESULT " + json.dumps(result), flush=True)
        return

    rates: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        for name, eager in VARIANTS.items():
            env = {"VLLM_CPU_KVCACHE_SPACE": "2", **os.environ, "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
            proc = subprocess.run([sys.executable, __file__, "--child", "eager" if eager else "compiled",
                                   "--model", args.model, "--dtype", args.dtype, "--requests", str(args.requests),
                                   "--max-tokens", str(args.max_tokens)], env=env, capture_output=True, text=True)
            result = next((json.loads(line[7:]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")),
                          None)
            if result is None:
                sys.exit(f"{name}: the run failed\n{proc.stderr[-3000:]}")
            rates[name].append(result)
            print(f"{name:30s} start {result['load_s']:5.1f}s  prefill {result['prompt_tokens']} tokens at "
                  f"{result['prefill_tok_s']:6.1f} tok/s  generated {result['tokens']} tokens in "
                  f"{result['seconds']:5.1f}s = {result['tok_s']:6.1f} tok/s", flush=True)
    eager, compiled = (rates[name] for name in VARIANTS)
    print(f"compiled / eager: prefill {max(r['prefill_tok_s'] for r in compiled) / max(r['prefill_tok_s'] for r in eager):.2f}, "
          f"decode {max(r['tok_s'] for r in compiled) / max(r['tok_s'] for r in eager):.2f}, "
          f"start {min(r['load_s'] for r in compiled) - min(r['load_s'] for r in eager):+.1f}s")


if __name__ == "__main__":
    main()
