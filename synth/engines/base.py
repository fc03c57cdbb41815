"""The one interface every LLM engine implements.

An engine turns a Ray Dataset of *request rows* into the same rows plus *result
columns*. Working on datasets (not lists) is what lets the vLLM engine stream
batches through vLLM replicas (Ray actors) on many GPUs while the stand-in and the
OpenAI-compatible engines use the same stage code.

Request columns (written by the stages, see `request_row`):
    request_id   str   stable id of the row the request belongs to
    role         str   role name (sampling and seed belong to the role, so one model
                       loaded once can serve several roles in one pass)
    task         str   "questions" | "augment" | "respond" | "judge" (for logs and the stand-in)
    system       str   system prompt for chat-style models ("" = none)
    prompt       str   user turn (chat style) or the raw text to continue (completion style)
    seed         int   per-request sampling seed, derived from request_id and the role
    json_schema  str   JSON schema the output must follow ("" = free text)
    temperature, top_p, top_k, max_tokens, stop   the role's sampling parameters
    top_logprobs int   alternatives per generated token to report (0 = none; a scoring judge)

Result columns (added by every engine):
    text, finish_reason, prompt_tokens, completion_tokens, error ("" = ok),
    logprobs (the generated tokens' log-probabilities in `synth.scoring`'s form, "" = none)

A failed request has `error` set and `text` empty; the stage decides what that
row becomes (`failure_reason`: pending if transient, else a reject). Engines never drop rows.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from synth.config import ModelSpec, Role, Sampling
from synth.output_parsing import FIELD_KEYS, YES_NO, ordered_fields

if TYPE_CHECKING:
    import ray.data

REQUEST_COLUMNS = (
    "request_id", "role", "task", "system", "prompt", "seed", "json_schema",
    "temperature", "top_p", "top_k", "max_tokens", "stop", "top_logprobs",
)
RESULT_COLUMNS = ("text", "finish_reason", "prompt_tokens", "completion_tokens", "error", "logprobs")

# The guard verdict every judge must produce (kept in one place: engines enforce it,
# annotate parses it, exports render it). Property order is the order a constrained model
# writes them (vLLM's engine enforces it as a regex in the usual JSON spacing,
# structured_output.flat_schema_regex): 分析 first, at least 12 characters, so the judge
# states its verdict and why before the label field (BENCHMARKS.md, "The judge prompt").
# At most 80 (one sentence): vLLM gives a regex 5 s to compile, and `{12,180}` (384 tokens'
# worth) timed out on a loaded 2-core machine, which returned an empty verdict.
VERDICT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "分析": {"type": "string", "minLength": 12, "maxLength": 80},
        "答案": {"type": "string", "enum": ["安全", "不安全"]},
    },
    "required": ["分析", "答案"],
    "additionalProperties": False,
}
VERDICT_SCHEMA_JSON = json.dumps(VERDICT_SCHEMA, ensure_ascii=False)  # keeps the property order


def verdict_schema(fields: Sequence[str] = (), subcategories: Sequence[str] = (),
                   analysis: bool = True) -> dict[str, Any]:
    """VERDICT_SCHEMA with the requested judge fields (config `annotate.fields`) after 答案:
    yes/no fields written before the verdict lowered a judge's accuracy, so the verdict
    comes first and the fields after it. No fields: VERDICT_SCHEMA itself. `analysis` False
    (a score-only judge, roles.judges[].analysis): no 分析, the verdict at once."""
    fields = ordered_fields(fields)
    if not fields and analysis:
        return VERDICT_SCHEMA
    properties = dict(VERDICT_SCHEMA["properties"])
    if not analysis:
        properties.pop("分析")
    for name in fields:
        choices = list(subcategories) if name == "subcategory" else list(YES_NO)
        properties[FIELD_KEYS[name]] = {"type": "string", "enum": choices}
    return {**VERDICT_SCHEMA, "properties": properties, "required": list(properties)}


def question_verdict_schema(topics: Sequence[str]) -> dict[str, Any]:
    """The question judge's verdict (templates/shared/question_judge.yaml): a short reason first,
    then 问题有害 (是/否), then 子类 (one of `topics`: the catalog's 场景-子类 labels and 都不是,
    Catalog.topics). With 子类 before 问题有害 the Qwen 1.5B judge's harm accuracy fell from 0.67
    to 0.53 on the shipped gold (BENCHMARKS.md)."""
    return {
        "type": "object",
        "properties": {
            "分析": {"type": "string", "minLength": 6, "maxLength": 60},
            FIELD_KEYS["question_harmful"]: {"type": "string", "enum": list(YES_NO)},
            FIELD_KEYS["subcategory"]: {"type": "string", "enum": list(topics)},
        },
        "required": ["分析", FIELD_KEYS["question_harmful"], FIELD_KEYS["subcategory"]],
        "additionalProperties": False,
    }


def request_seed(request_id: str, role_name: str, base_seed: int) -> int:
    """A sampling seed per request: same row, role and build seed → same seed."""
    digest = hashlib.sha256(f"{base_seed}:{role_name}:{request_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def request_row(
    *, request_id: str, task: str, prompt: str, role: Role, base_seed: int, system: str = "", json_schema: str = "",
    extra_stop: Sequence[str] = (), top_logprobs: int = 0,
) -> dict[str, Any]:
    """One request row; `extra_stop` adds a stage's own stop strings to the role's;
    `top_logprobs`: alternatives per generated token to report (a scoring judge)."""
    sampling: Sampling = role.sampling
    return {
        "request_id": request_id,
        "role": role.name,
        "task": task,
        "system": system,
        "prompt": prompt,
        "seed": request_seed(request_id, role.name, base_seed),
        "json_schema": json_schema,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "top_k": sampling.top_k,
        "max_tokens": sampling.max_tokens,
        "stop": list(sampling.stop) + [s for s in extra_stop if s not in sampling.stop],
        "top_logprobs": int(top_logprobs),
    }


# A failed request is transient (429, 5xx, a timeout, an unreachable endpoint, an engine
# that died: sending it again later may succeed) or permanent (a prompt longer than the
# context, another 4xx, a schema violation). Engines mark transient errors with this
# prefix; `failure_reason` turns an error into the row's reason: a transient one leaves the
# row *pending* (the stage completes, and the next run sends exactly those requests again),
# a permanent one makes it a reject.
TRANSIENT = "transient: "
PENDING = "pending_request"


def transient(message: str) -> str:
    return TRANSIENT + message


def failure_reason(error: str) -> str:
    if error.startswith(TRANSIENT):
        return f"{PENDING}: {error[len(TRANSIENT):]}"
    return f"llm_error: {error}"


class Engine(ABC):
    """Sends request rows to one model. Sampling travels with each row."""

    def __init__(self, name: str, spec: ModelSpec):
        self.name = name  # the key of the model in the config's `models`
        self.spec = spec

    @abstractmethod
    def generate(self, requests: "ray.data.Dataset") -> "ray.data.Dataset":
        """Return the request rows with RESULT_COLUMNS added; one output row per input row."""

    def start(self) -> None:
        """Begin loading the model, without waiting for it (generate() otherwise starts it).
        Engines that load nothing (a server, the stand-in) have nothing to start."""

    def close(self) -> None:
        """Release what the engine holds (a loaded model); a later generate() starts it again."""

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self) -> dict[str, Any]:
        """What the manifest records about this engine (never secrets)."""
        return {"name": self.name, "engine": self.spec.engine, "model": self.spec.model,
                "prompt_style": self.spec.prompt_style}
