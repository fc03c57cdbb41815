"""Does vLLM's output for a request depend on what else is in the batch? (issue 6, reproducibility)

A fixed set of PROBE requests (real respond/judge-style prompts, per-request seeds, as the
pipeline sends them) is generated under several batch compositions, each in a fresh engine
process:

  alone      every probe in its own `generate` call (batch of one)
  together   all probes in one call, in order
  reversed   all probes in one call, reversed order
  mixed      the probes shuffled among FILLER other requests of different lengths
  again      `together` once more in a new process (run-to-run determinism)

and, when --invariant is given, the same again with VLLM_BATCH_INVARIANT=1. It prints for
each composition how many probes produced exactly the same tokens as in `together`, and
for those that differ the first token position where they diverge. Sampling is seeded
(temperature 0.8, top_k 40 as the demo) and greedy (temperature 0), so both
cases are covered.

    .venv/bin/python bench/batch_invariance.py                 # 32 probes, 96 fillers, 64 tokens
    .venv/bin/python bench/batch_invariance.py --invariant     # also with VLLM_BATCH_INVARIANT=1
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

QUESTIONS = [
    "如何在网上保护自己的隐私？", "怎样和邻居友好地解决噪音纠纷？", "为什么不应该在网上散布谣言？",
    "孩子沉迷手机游戏，家长应该怎么办？", "如何识别电信诈骗的常见话术？", "公司加班不给加班费合法吗？",
    "怎样科学地减肥？", "遇到网络暴力应该如何应对？",
]


def probes(n: int, seed_base: int) -> list[dict]:
    """Respond- and judge-style completion prompts; half seeded sampling, half greedy."""
    out = []
    for i in range(n):
        q = QUESTIONS[i % len(QUESTIONS)]
        if i % 2 == 0:
            prompt = f"以下是一段问答。\n问题：{q}\n回答："
        else:
            prompt = f"你是文本安全专家。判断下面回答是否安全。\n问题：{q}\n回答：我不能帮助你。\n判断："
        out.append({"id": f"p{i:03d}", "prompt": prompt, "seed": seed_base + i,
                    "temperature": 0.8 if i % 4 < 2 else 0.0})
    return out


def fillers(n: int) -> list[dict]:
    rng = random.Random(7)
    out = []
    for i in range(n):
        body = "".join(rng.choice(QUESTIONS) for _ in range(rng.randint(1, 12)))
        out.append({"id": f"f{i:03d}", "prompt": f"请总结以下内容：{body}\n总结：", "seed": 1000 + i,
                    "temperature": 0.9})
    return out


def child(args) -> None:
    from vllm import LLM, SamplingParams

    from synth.config import ModelSpec
    from synth.engines.vllm_ray import VLLMEngine

    spec = ModelSpec(engine="vllm", model=args.model, prompt_style="completion",
                     vllm={"accelerator": "cpu", "max_model_len": 1024, "engine_kwargs": {"dtype": "bfloat16"}})
    engine = VLLMEngine("probe", spec)
    llm = LLM(model=engine.model_path, **engine.engine_kwargs())
    plan = json.loads(Path(args.plan).read_text(encoding="utf-8"))

    def run(batch: list[dict]) -> dict[str, list[int]]:
        params = [SamplingParams(temperature=r["temperature"], top_k=40, max_tokens=args.max_tokens,
                                 seed=r["seed"]) for r in batch]
        outs = llm.generate([r["prompt"] for r in batch], params, use_tqdm=False)
        return {r["id"]: list(o.outputs[0].token_ids) for r, o in zip(batch, outs)}

    result: dict[str, dict[str, list[int]]] = {}
    for name, batches in plan.items():
        tokens: dict[str, list[int]] = {}
        for batch in batches:
            tokens.update(run(batch))
        result[name] = {k: v for k, v in tokens.items() if k.startswith("p")}
    print("RESULT " + json.dumps(result), flush=True)


def first_divergence(a: list[int], b: list[int]) -> int:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b)) if len(a) != len(b) else -1


def parent(args) -> None:
    from synth.models import resolve_model

    resolve_model(args.model)
    p = probes(args.probes, 20261128)
    f = fillers(args.fillers)
    mixed = p + f
    random.Random(3).shuffle(mixed)
    plan_a = {"together": [p], "alone": [[r] for r in p], "reversed": [p[::-1]], "mixed": [mixed]}
    plan_b = {"again": [p]}
    tmp = Path(tempfile.mkdtemp(prefix="bench-bi-"))
    settings = [("default", {})] + ([("VLLM_BATCH_INVARIANT=1", {"VLLM_BATCH_INVARIANT": "1"})] if args.invariant else [])
    report = {}
    for label, extra_env in settings:
        outputs: dict[str, dict[str, list[int]]] = {}
        for i, plan in enumerate((plan_a, plan_b)):
            plan_file = tmp / f"plan-{i}.json"
            plan_file.write_text(json.dumps(plan, ensure_ascii=False), encoding="utf-8")
            env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", **extra_env}
            t = time.monotonic()
            proc = subprocess.run([sys.executable, __file__, "--child", "--plan", str(plan_file),
                                   "--model", args.model, "--max-tokens", str(args.max_tokens)],
                                  env=env, capture_output=True, text=True)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not lines:
                tail = proc.stderr.strip().splitlines()[-8:]
                print(f"[{label}] engine process failed (exit {proc.returncode}):\n  " + "\n  ".join(tail))
                outputs = {}
                break
            outputs.update(json.loads(lines[-1][len("RESULT "):]))
            print(f"[{label}] plan {i} done in {time.monotonic() - t:.0f}s", flush=True)
        if not outputs:
            report[label] = "failed to start"
            continue
        base = outputs["together"]
        report[label] = {}
        for name in ("alone", "reversed", "mixed", "again"):
            diffs = {k: first_divergence(base[k], outputs[name][k]) for k in base}
            differ = {k: d for k, d in diffs.items() if d >= 0}
            greedy = [r["id"] for r in p if r["temperature"] == 0.0]
            report[label][name] = {
                "identical": f"{len(base) - len(differ)}/{len(base)}",
                "greedy_identical": f"{sum(1 for k in greedy if k not in differ)}/{len(greedy)}",
                "first_divergence_token": sorted(differ.values()),
            }
            print(f"[{label}] {name:9s} vs together: identical {report[label][name]['identical']} "
                  f"(greedy {report[label][name]['greedy_identical']}); first divergence at tokens "
                  f"{sorted(differ.values())[:12]}", flush=True)
    if settings[0][0] == "default" and isinstance(report.get("default"), dict):
        print()
        print(json.dumps(report, ensure_ascii=False))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="embedded:gemma3-270m")
    ap.add_argument("--probes", type=int, default=32)
    ap.add_argument("--fillers", type=int, default=96)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--invariant", action="store_true", help="also run with VLLM_BATCH_INVARIANT=1")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--plan", help=argparse.SUPPRESS)
    args = ap.parse_args()
    child(args) if args.child else parent(args)


if __name__ == "__main__":
    main()
