"""Two vLLM engines on the same cores: what running them at once costs on this machine.

The demo's stages use two engines at once (converse and respond answer with Gemma 3 270M and
Qwen 1.5B; annotate loads the probe engine while the generative judge runs). vLLM on CPU
runs each engine's model in an OpenMP team as wide as the machine, so two busy engines
put twice as many threads on the cores.

Each engine runs in its own process (the demo's settings: every core, 32-token blocks,
prefix caching, enforce_eager). It loads, waits for the other at a barrier, then generates
its work: Gemma `--gemma` prompts × 48 tokens, Qwen `--qwen` chat prompts × 48 tokens.
Variants:
  alone       each engine's work timed with the other process idle (after the barrier,
              Gemma works first while Qwen waits, then Qwen)
  together    both work at once after the barrier
and each with `--env K=V` added (e.g. OMP_WAIT_POLICY=PASSIVE). Prints the seconds of each
and together / (Gemma alone + Qwen alone): above 1, running at once loses time.

    .venv/bin/python bench/engine_contention.py
    .venv/bin/python bench/engine_contention.py --env OMP_WAIT_POLICY=PASSIVE
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

MODELS = {"gemma": ("embedded:gemma3-270m", "float32"), "qwen": ("embedded:qwen2.5-coder-1.5b-instruct", "bfloat16")}


def wait_for(path: Path) -> None:
    while not path.exists():
        time.sleep(0.05)


def child(which: str, n: int, tokens: int, barrier: Path, go: Path, done_other: Path | None) -> dict:
    from vllm import LLM, SamplingParams

    from generation import build_rows
    from synth.models import resolve_model

    model, dtype = MODELS[which]
    llm = LLM(model=resolve_model(model), dtype=dtype, max_model_len=2048, block_size=32, enforce_eager=True,
              enable_chunked_prefill=False, enable_prefix_caching=True)
    prompts = [r["prompt"] for r in build_rows(n, tokens)]
    params = [SamplingParams(temperature=0.7, top_k=40, max_tokens=tokens, ignore_eos=True, seed=i) for i in range(n)]
    run = (lambda: llm.chat([[{"role": "user", "content": p}] for p in prompts], params, use_tqdm=False)) \
        if which == "qwen" else (lambda: llm.generate(prompts, params, use_tqdm=False))
    llm.generate(prompts[:2], [SamplingParams(max_tokens=2)] * 2, use_tqdm=False)  # warm-up
    barrier.with_name(barrier.name + "." + which).touch()
    wait_for(go)
    if done_other is not None:  # alone: wait until the other engine has finished
        wait_for(done_other)
    started = time.monotonic()
    run()
    seconds = time.monotonic() - started
    barrier.with_name(barrier.name + "." + which + ".done").touch()
    return {"seconds": seconds}


def pair(mode: str, args, extra_env: dict[str, str]) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        barrier, go = Path(tmp) / "ready", Path(tmp) / "go"
        env = {"VLLM_CPU_KVCACHE_SPACE": "1", **os.environ, "VLLM_CPU_NUM_OF_RESERVED_CPU": "0", **extra_env}
        procs = {}
        for which in MODELS:
            done_other = str(barrier.with_name("ready.gemma.done")) if (mode == "alone" and which == "qwen") else ""
            procs[which] = subprocess.Popen(
                [sys.executable, __file__, "--child", which, "--gemma", str(args.gemma), "--qwen", str(args.qwen),
                 "--tokens", str(args.tokens), "--barrier", str(barrier), "--go", str(go), "--done-other", done_other],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for which in MODELS:
            while not barrier.with_name("ready." + which).exists():
                if procs[which].poll() is not None:
                    sys.exit(f"{which} failed:\n{procs[which].stderr.read()[-3000:]}")
                time.sleep(0.1)
        started = time.monotonic()
        go.touch()
        out = {}
        for which, proc in procs.items():
            stdout, stderr = proc.communicate()
            result = next((json.loads(line[7:]) for line in stdout.splitlines() if line.startswith("RESULT ")), None)
            if result is None:
                sys.exit(f"{which} failed:\n{stderr[-3000:]}")
            out[which] = result["seconds"]
        out["wall"] = time.monotonic() - started
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gemma", type=int, default=128, help="Gemma's requests")
    ap.add_argument("--qwen", type=int, default=64, help="Qwen's requests")
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--env", action="append", default=[], help="K=V for both engines (a second pair of runs)")
    ap.add_argument("--child", choices=list(MODELS), help=argparse.SUPPRESS)
    ap.add_argument("--barrier", help=argparse.SUPPRESS)
    ap.add_argument("--go", help=argparse.SUPPRESS)
    ap.add_argument("--done-other", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        n = args.gemma if args.child == "gemma" else args.qwen
        result = child(args.child, n, args.tokens, Path(args.barrier), Path(args.go),
                       Path(args.done_other) if args.done_other else None)
        print("RESULT " + json.dumps(result), flush=True)
        return

    settings = [("default", {})]
    if args.env:
        settings.append((" ".join(args.env), dict(e.split("=", 1) for e in args.env)))
    for label, extra in settings:
        alone = pair("alone", args, extra)
        together = pair("together", args, extra)
        ratio = together["wall"] / (alone["gemma"] + alone["qwen"])
        print(f"{label:30s} alone: Gemma {alone['gemma']:5.1f}s + Qwen {alone['qwen']:5.1f}s = "
              f"{alone['gemma'] + alone['qwen']:5.1f}s   together: {together['wall']:5.1f}s "
              f"(Gemma {together['gemma']:5.1f}s, Qwen {together['qwen']:5.1f}s)   together / alone {ratio:.2f}",
              flush=True)


if __name__ == "__main__":
    main()
