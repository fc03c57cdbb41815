"""What sampling settings and dtype cost on this machine's CPU (why pipelines/demo.yaml uses top_k).

One vLLM engine (the demo model), the same 64 respond-stage prompts, seeded sampling at
temperature 0.8, 32 new tokens each; variants measured twice in alternation after a
warm-up call that fills the prefix cache, so the first variant pays no extra prefill:

    top_p=0.9          vLLM sorts the whole vocabulary (262k for Gemma 3) every step
    top_k=40           a partial top-k, no full sort
    top_p=1 (no cut)   the floor: plain sampling

Prints output tokens/s of each and its ratio to top_p=0.9.

    .venv/bin/python bench/cpu_sampling.py                    # float32
    .venv/bin/python bench/cpu_sampling.py --dtype bfloat16
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

VARIANTS = {"top_p=0.9": {"top_p": 0.9}, "top_k=40": {"top_k": 40}, "top_p=1 (no cut)": {}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=32)
    args = ap.parse_args()

    import os

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM, SamplingParams

    from generation import build_rows
    from synth.models import resolve_model

    prompts = [r["prompt"] for r in build_rows(args.requests, args.max_tokens)]
    t = time.monotonic()
    llm = LLM(model=resolve_model("embedded:gemma3-270m"), dtype=args.dtype, max_model_len=2048,
              enforce_eager=True, enable_chunked_prefill=False, enable_prefix_caching=True)
    print(f"dtype {args.dtype}: engine start {time.monotonic() - t:.1f}s", flush=True)
    llm.generate(prompts, [SamplingParams(max_tokens=1, seed=i) for i in range(len(prompts))], use_tqdm=False)
    rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(2):
        for name, extra in VARIANTS.items():
            params = [SamplingParams(temperature=0.8, max_tokens=args.max_tokens, seed=1000 + i, **extra)
                      for i in range(len(prompts))]
            t = time.monotonic()
            outs = llm.generate(prompts, params, use_tqdm=False)
            tokens = sum(len(o.outputs[0].token_ids) for o in outs)
            rates[name].append(tokens / (time.monotonic() - t))
            print(f"  {name:17s} {rates[name][-1]:6.1f} tok/s", flush=True)
    base = max(rates["top_p=0.9"])
    for name, r in rates.items():
        print(f"dtype {args.dtype} {name:17s} best {max(r):6.1f} tok/s  ratio to top_p=0.9: {max(r) / base:.2f}")


if __name__ == "__main__":
    main()
