"""Converting the embedded models: one after the other against both at once (`prepare_models`).

    .venv/bin/python bench/model_conversion.py

Each run converts Gemma 3 270M and Qwen2.5-Coder-1.5B-Instruct into its own empty cache, after
dropping the page cache when it may (root), so each starts as a fresh machine would; then it
checks that both runs wrote the same tensors. Prints each run's seconds and their ratio.

On these machines a conversion is mostly the VM bringing fresh memory in (~15 s per GB first
touched, BENCHMARKS "Model conversion"), which two processes do in about the time of one.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODELS = ["embedded:gemma3-270m", "embedded:qwen2.5-coder-1.5b-instruct"]


def drop_page_cache() -> None:
    subprocess.run(["sync"], check=False)
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        pass
    time.sleep(5)


def timed(commands: list[list[str]]) -> float:
    drop_page_cache()
    started = time.monotonic()
    for command in commands:
        subprocess.run(command, check=True)
    return time.monotonic() - started


def tensors(directory: Path) -> dict:
    from safetensors import safe_open

    out = {}
    for f in sorted(directory.glob("*.safetensors")):
        with safe_open(f, "pt") as fh:
            out.update((k, fh.get_tensor(k)) for k in fh.keys())
    return out


def main() -> None:
    import torch

    prepare = [sys.executable, "-m", "synth.models", "prepare"]
    with tempfile.TemporaryDirectory() as one, tempfile.TemporaryDirectory() as both:
        serial = timed([prepare + [m, "--cache-dir", one] for m in MODELS])
        parallel = timed([prepare + MODELS + ["--cache-dir", both]])
        for d in ("gemma3-270m", "qwen2.5-coder-1.5b-instruct"):
            a, b = tensors(Path(one) / d), tensors(Path(both) / d)
            same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
            print(f"{d}: {len(a)} tensors, {'identical' if same else 'DIFFERENT'} in both runs")
            if not same:
                sys.exit(1)
    print(f"one after the other: {serial:.1f} s")
    print(f"both at once:        {parallel:.1f} s")
    print(f"ratio:               {serial / parallel:.2f}x")


if __name__ == "__main__":
    main()
