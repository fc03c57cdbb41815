"""What vLLM's reserved scheduler core costs on this machine (why pipelines/demo.yaml sets
VLLM_CPU_NUM_OF_RESERVED_CPU=0).

vLLM on CPU keeps one core for its scheduler process by default and runs the model on
the rest: on 2 cores, one OpenMP thread. Each variant runs in its own process (the setting
is read when the engine starts): the demo model, the same 64 respond-stage prompts,
seeded sampling (top_k 40, as the demo), 48 new tokens each, after a warm-up call that
fills the prefix cache. Prints the engine's core ids, output tokens/s of each variant and
the ratio of all cores to the default.

    .venv/bin/python bench/cpu_threads.py
    .venv/bin/python bench/cpu_threads.py --rounds 2     # alternate the variants twice
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

VARIANTS = {"default (1 core kept for the scheduler)": {}, "all cores": {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}}


def measure(requests: int, max_tokens: int) -> dict:
    from vllm import LLM, SamplingParams

    from generation import build_rows
    from synth.models import resolve_model

    prompts = [r["prompt"] for r in build_rows(requests, max_tokens)]
    started = time.monotonic()
    llm = LLM(model=resolve_model("embedded:gemma3-270m"), dtype="float32", max_model_len=2048, block_size=32,
              enforce_eager=True, enable_chunked_prefill=False, enable_prefix_caching=True)
    load_s = time.monotonic() - started
    llm.generate(prompts, [SamplingParams(max_tokens=1, seed=i) for i in range(len(prompts))], use_tqdm=False)
    params = [SamplingParams(temperature=0.8, top_k=40, max_tokens=max_tokens, seed=1000 + i)
              for i in range(len(prompts))]
    started = time.monotonic()
    outs = llm.generate(prompts, params, use_tqdm=False)
    seconds = time.monotonic() - started
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    return {"load_s": load_s, "tokens": tokens, "seconds": seconds, "tok_s": tokens / seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(measure(args.requests, args.max_tokens)), flush=True)
        return

    rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        for name, extra in VARIANTS.items():
            env = {k: v for k, v in os.environ.items() if k != "VLLM_CPU_NUM_OF_RESERVED_CPU"}
            env = {"VLLM_CPU_KVCACHE_SPACE": "1", **env, **extra}
            proc = subprocess.run([sys.executable, __file__, "--child", "--requests", str(args.requests),
                                   "--max-tokens", str(args.max_tokens)], env=env, capture_output=True, text=True)
            result = next((json.loads(line[7:]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")), None)
            if result is None:
                sys.exit(f"{name}: the run failed\n{proc.stderr[-3000:]}")
            cores = [line.split("core ids=")[-1] for line in (proc.stdout + proc.stderr).splitlines() if "core ids=" in line]
            rates[name].append(result["tok_s"])
            print(f"{name:40s} engine cores {cores[-1] if cores else '?':8s} start {result['load_s']:5.1f}s  "
                  f"{result['tokens']} tokens in {result['seconds']:5.1f}s = {result['tok_s']:6.1f} tok/s", flush=True)
    base, ours = (max(r) for r in rates.values())
    print(f"all cores / default: {ours / base:.2f}")


if __name__ == "__main__":
    main()
