"""What the generative pair judge's requests cost, part by part, on this machine.

The demo's annotate stage spends most of its time in one judge (judge-answer: Qwen 1.5B,
a short analysis then the verdict, as JSON under a grammar, with the verdict's top-5
log-probabilities for its score). This replays that judge's own requests, rendered by the
stage's code (`judge_requests`) from a finished build's `filter_responses` rows, in one
`vllm.LLM` with the engine settings a build gives the model (`VLLMEngine.engine_kwargs`),
and times them as sent, then without the grammar, without the log-probabilities, and
without both (the prefix cache is reset before each run, so each pays its own prompts).
Prints seconds, prompt and generated tokens, and each variant's time over the first's.

    .venv/bin/python bench/judge_costs.py --build builds/demo
    .venv/bin/python bench/judge_costs.py --build builds/demo --n 96 --variants as-sent,no-grammar
    .venv/bin/python bench/judge_costs.py --build builds/demo --variants as-sent --max-num-seqs 64
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VARIANTS = ("as-sent", "no-grammar", "no-logprobs", "neither")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", required=True, help="a finished build directory (stages/filter_responses)")
    ap.add_argument("--config", default=str(ROOT / "pipelines" / "demo-question-probe.yaml"))
    ap.add_argument("--judge", default="judge-answer")
    ap.add_argument("--n", type=int, default=0, help="the first N pairs (0: all)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--max-num-seqs", type=int, default=0, help="vLLM's max_num_seqs (0: the build's)")
    args = ap.parse_args()

    from synth.engines.vllm_ray import ChatPromptRenderer, VLLMEngine, request_batch
    from synth.models import resolve_model
    from synth.prepare import prepare
    from synth.scoring import TOP_LOGPROBS
    from synth.stages.labelling import judge_requests

    config, catalog = prepare(Path(args.config))
    role = next(r for r in config.roles.judges if r.name == args.judge)
    spec = config.models[role.model]
    pairs = pd.read_parquet(Path(args.build) / "stages" / "filter_responses" / "rows")
    if args.n:
        pairs = pairs.head(args.n)
    requests = judge_requests(pairs, catalog, role, spec.prompt_style, config.seed,
                              top_logprobs=TOP_LOGPROBS if config.annotate.scores != "off" else 0)
    if spec.prompt_style == "chat":
        requests = ChatPromptRenderer(resolve_model(spec.model))(requests)
    prompts, params = request_batch(requests)

    engine = VLLMEngine(role.model, spec)
    kwargs = engine.engine_kwargs()
    if args.max_num_seqs:
        kwargs["max_num_seqs"] = args.max_num_seqs
    os.environ.update({"VLLM_CPU_KVCACHE_SPACE": str(engine.options.cpu_kvcache_gib), **engine.options.env_vars})
    import vllm
    from vllm.sampling_params import StructuredOutputsParams

    started = time.monotonic()
    llm = vllm.LLM(model=engine.model_path, **kwargs)
    print(f"{role.model}: loaded in {time.monotonic() - started:.1f}s; {len(prompts)} requests of {args.judge}",
          flush=True)
    llm.generate(prompts[:2], [vllm.SamplingParams(max_tokens=2)] * 2, use_tqdm=False)  # warm-up

    base = None
    for variant in args.variants.split(","):
        sampling = []
        for p in params:
            p = dict(p)
            if variant in ("no-grammar", "neither"):
                p["structured_outputs"] = None
            if variant in ("no-logprobs", "neither"):
                p.pop("logprobs", None)
            constraint = p.get("structured_outputs")
            sampling.append(vllm.SamplingParams(**{
                **p, "structured_outputs": StructuredOutputsParams(**constraint) if constraint else None}))
        llm.reset_prefix_cache()
        started = time.monotonic()
        outs = llm.generate(prompts, sampling, use_tqdm=False)
        seconds = time.monotonic() - started
        base = base or seconds
        prompt_tokens = sum(len(o.prompt_token_ids) for o in outs)
        generated = sum(len(o.outputs[0].token_ids) for o in outs)
        longest = max(len(o.outputs[0].token_ids) for o in outs)
        print(f"{variant:12s} {seconds:6.1f}s  prompt {prompt_tokens} tokens, generated {generated} "
              f"(longest {longest})  {seconds / base:.2f}× as-sent", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
