"""Generation throughput: straight vLLM vs the pipeline's path (Ray Data + VLLMEngine).

The same N requests (respond-stage prompts rendered from templates/shared/respond.yaml
with questions built from the seed pools; same model, sampling, seeds and max tokens)
are sent
  (a) straight to `vllm.LLM.generate` in one process, and
  (b) through Ray Data + `VLLMEngine`, as the respond stage does:
      `ray.data.from_items(rows)` → `engine.generate(ds)` → `write_parquet`.
Each runs in its own subprocess, one after the other (they cannot share 2 cores).
Times are end to end from process start (imports, Ray start, engine start included).
Prints output tokens/s of each and the ratio (b)/(a).

    python bench/generation.py                      # 512 requests × 32 tokens, demo model
    python bench/generation.py --requests 64 --max-tokens 32 --repeat 1
    python bench/generation.py --all-cores          # the engine on every core, as the demo
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STARTED = time.monotonic()
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def seed_questions() -> list[str]:
    """Plain questions built from the seed pools' behaviours and benign topics."""
    import yaml

    questions: list[str] = []
    for path in sorted((ROOT / "seeds/scenarios").glob("*.yaml")):
        pools = yaml.safe_load(path.read_text(encoding="utf-8"))
        for items in (pools.get("behaviors") or {}).values():
            questions += [f"请问怎样才能{b}？" for b in items]
        for items in (pools.get("benign_topics") or {}).values():
            questions += [f"能介绍一下{t}吗？" for t in items]
    if not questions:
        raise SystemExit("no seed pools found under seeds/scenarios")
    return questions


def build_rows(n: int, max_tokens: int) -> list[dict]:
    """N respond-stage request rows (completion style), rendered from the shipped templates."""
    import yaml
    from jinja2.sandbox import SandboxedEnvironment

    from synth.config import Role, Sampling
    from synth.engines.base import request_row

    respond = yaml.safe_load((ROOT / "templates/shared/respond.yaml").read_text(encoding="utf-8"))
    template = SandboxedEnvironment().from_string(respond["completion"])
    personas = respond["personas"]
    questions = seed_questions()
    # the demo responders' sampling (top_k, not top_p: see pipelines/demo.yaml)
    role = Role(name="responder", model="demo",
                sampling=Sampling(temperature=0.7, top_p=1.0, top_k=40, max_tokens=max_tokens))
    rows = []
    for i in range(n):
        prompt = template.render(question=questions[i % len(questions)], persona=personas[i % len(personas)])
        rows.append(request_row(request_id=f"q{i:05d}", task="respond", prompt=prompt, role=role, base_seed=20261128))
    return rows


def make_spec(args):
    from synth.config import ModelSpec

    engine_kwargs = {"dtype": args.dtype} if args.dtype != "auto" else {}
    return ModelSpec(
        engine="vllm", model=args.model, prompt_style="completion",
        vllm={"accelerator": "cpu", "batch_size": args.batch_size, "max_model_len": 2048,
              "max_concurrent_batches": args.max_concurrent_batches, "engine_kwargs": engine_kwargs},
    )


def run_direct(args, rows: list[dict]) -> dict:
    """(a) vllm.LLM.generate, with the engine settings VLLMEngine would use."""
    from vllm import LLM, SamplingParams
    from vllm.sampling_params import StructuredOutputsParams  # noqa: F401  (same import cost as (b))

    from synth.engines.base import completion_text
    from synth.engines.vllm_ray import VLLMEngine, sampling_params

    engine = VLLMEngine("demo", make_spec(args))
    t0 = time.monotonic()
    llm = LLM(model=engine.model_path, **engine.engine_kwargs())
    loaded = time.monotonic()
    prompts = [completion_text(r["system"], r["prompt"], r.get("history", "")) for r in rows]
    params = [SamplingParams(**{k: v for k, v in sampling_params(r).items() if k != "structured_outputs"})
              for r in rows]
    outs = llm.generate(prompts, params, use_tqdm=False)
    done = time.monotonic()
    return {
        "output_tokens": sum(len(o.outputs[0].token_ids) for o in outs),
        "engine_start_s": loaded - t0,
        "generate_s": done - loaded,
        "rows": len(outs),
    }


def run_ray(args, rows: list[dict]) -> dict:
    """(b) the respond stage's path: Ray Data rows → VLLMEngine.generate → parquet."""
    import pyarrow.parquet as pq
    import ray

    from synth.engines import make_engine

    try:
        from synth.session import init_ray
    except ImportError:  # pragma: no cover
        def init_ray():
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)

    t0 = time.monotonic()
    init_ray()
    ray_up = time.monotonic()
    blocks = {"override_num_blocks": args.blocks} if args.blocks else {}
    ds = ray.data.from_items(rows, **blocks)
    out_dir = tempfile.mkdtemp(prefix="bench-gen-")
    with make_engine("demo", make_spec(args)) as engine:
        engine.generate(ds).write_parquet(out_dir)
        done = time.monotonic()
    table = pq.read_table(out_dir, columns=["completion_tokens", "error"])
    errors = sum(1 for e in table.column("error").to_pylist() if e)
    return {
        "output_tokens": int(sum(table.column("completion_tokens").to_pylist())),
        "ray_init_s": ray_up - t0,
        "generate_s": done - ray_up,
        "rows": table.num_rows,
        "errors": errors,
    }


def child(args) -> None:
    rows = json.loads(Path(args.rows).read_text(encoding="utf-8"))
    result = run_direct(args, rows) if args.child == "direct" else run_ray(args, rows)
    result["wall_s"] = time.monotonic() - STARTED
    result["tokens_per_s"] = result["output_tokens"] / result["wall_s"]
    print("RESULT " + json.dumps(result), flush=True)


def parent(args) -> None:
    from synth.models import resolve_model

    t = time.monotonic()
    path = resolve_model(args.model)  # convert once, outside the timed runs
    print(f"model {args.model} -> {path} (resolve/convert {time.monotonic() - t:.1f}s)", flush=True)
    rows = build_rows(args.requests, args.max_tokens)
    rows_file = Path(tempfile.mkdtemp(prefix="bench-gen-")) / "rows.json"
    rows_file.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    if args.all_cores:  # as pipelines/demo.yaml; (b)'s Ray workers inherit it from its process
        env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
    passthrough = ["--model", args.model, "--batch-size", str(args.batch_size), "--dtype", args.dtype,
                   "--max-concurrent-batches", str(args.max_concurrent_batches), "--blocks", str(args.blocks)]
    results: dict[str, list[dict]] = {"direct": [], "ray": []}
    for rep in range(args.repeat):
        for which in ("direct", "ray"):
            cmd = [sys.executable, __file__, "--child", which, "--rows", str(rows_file), *passthrough]
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                sys.stderr.write(proc.stderr[-4000:])
                raise SystemExit(f"{which} run failed (exit {proc.returncode})")
            res = json.loads(lines[-1][len("RESULT "):])
            # CPU seconds of the reaped process tree: robust to other load on the machine
            # (approximate: processes orphaned before exit are not counted).
            res["cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            results[which].append(res)
            print(f"[{rep + 1}/{args.repeat}] {which:6s} " + json.dumps({k: round(v, 1) if isinstance(v, float) else v
                                                                        for k, v in res.items()}), flush=True)
    best = {k: max(v, key=lambda r: r["tokens_per_s"]) for k, v in results.items()}
    a, b = best["direct"], best["ray"]
    print()
    print(f"requests {args.requests} x max_tokens {args.max_tokens}, batch_size {args.batch_size}, "
          f"dtype {args.dtype}, cpus {os.cpu_count()}, all cores {args.all_cores}, best of {args.repeat}")
    print(f"(a) vllm.LLM.generate     : {a['output_tokens']} tokens in {a['wall_s']:.1f}s "
          f"= {a['tokens_per_s']:.1f} tok/s (engine start {a['engine_start_s']:.1f}s, generate {a['generate_s']:.1f}s)")
    print(f"(b) Ray Data + VLLMEngine : {b['output_tokens']} tokens in {b['wall_s']:.1f}s "
          f"= {b['tokens_per_s']:.1f} tok/s (ray init {b['ray_init_s']:.1f}s, start+generate+write {b['generate_s']:.1f}s)")
    print(f"ratio (b)/(a) = {b['tokens_per_s'] / a['tokens_per_s']:.3f}   "
          f"(CPU seconds of the process trees: (a) {a['cpu_s']:.0f}s, (b) {b['cpu_s']:.0f}s)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=512)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--model", default="embedded:gemma3-270m")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-concurrent-batches", type=int, default=8)
    p.add_argument("--dtype", default="float32", help="vLLM dtype (auto = the checkpoint's; float32 as the demo on AVX2)")
    p.add_argument("--blocks", type=int, default=0, help="override_num_blocks for from_items (0 = Ray's default)")
    p.add_argument("--all-cores", action="store_true",
                   help="both sides: VLLM_CPU_NUM_OF_RESERVED_CPU=0 (no core kept for vLLM's scheduler, as the demo)")
    p.add_argument("--repeat", type=int, default=1, help="alternate (a),(b) this many times; report the best of each")
    p.add_argument("--child", choices=["direct", "ray"], help=argparse.SUPPRESS)
    p.add_argument("--rows", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
    else:
        parent(args)


if __name__ == "__main__":
    main()
