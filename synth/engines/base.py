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
    prompt       str   the (last) user turn (chat style) or the raw text to continue (completion style)
    history      str   the conversation before `prompt`: a JSON list of messages, in order,
                       [{"role": "user" | "assistant", "content": str}, ...]; "" = none (a
                       single-turn request; a batch without the column reads as ""). Chat
                       style: the turns between the system turn and `prompt` (`chat_messages`);
                       completion style: a transcript before `prompt` (`completion_text`)
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
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from synth.config import ModelSpec, Role, Sampling
from synth.output_parsing import FIELD_KEYS, YES_NO, ordered_fields

if TYPE_CHECKING:
    import ray.data

REQUEST_COLUMNS = (
    "request_id", "role", "task", "system", "prompt", "history", "seed", "json_schema",
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


HISTORY_ROLES = ("user", "assistant")
# How completion style writes the earlier turns of a conversation (`completion_text`).
TRANSCRIPT_SPEAKERS = {"user": "用户", "assistant": "助手"}


def parse_history(value: Any) -> list[dict[str, str]]:
    """The `history` column's value → its messages, each {"role", "content"} (other keys
    dropped). "", None or a null (NaN) → []: a single-turn request, or a batch written before
    the column existed. A JSON string or a sequence of mappings is accepted; anything else, a
    role other than user / assistant or a content that is not a string raises ValueError."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    if isinstance(value, str):
        if not value.strip():
            return []
        try:
            value = json.loads(value)
        except ValueError as e:
            raise ValueError(f"history is not JSON: {e}") from None
    if isinstance(value, (str, bytes, Mapping)) or not hasattr(value, "__iter__"):
        raise ValueError(f"history must be a list of messages, got {type(value).__name__}")
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, Mapping):
            raise ValueError(f"history[{i}] must be a mapping with role and content, got {type(message).__name__}")
        role, content = message.get("role"), message.get("content")
        if role not in HISTORY_ROLES:
            raise ValueError(f"history[{i}].role must be one of {', '.join(HISTORY_ROLES)}, got {role!r}")
        if not isinstance(content, str):
            raise ValueError(f"history[{i}].content must be a string, got {type(content).__name__}")
        messages.append({"role": role, "content": content})
    return messages


def history_json(history: Any) -> str:
    """Messages (or a `history` value, see `parse_history`) → the `history` column: compact
    JSON with the Chinese kept as is, "" when there are none."""
    messages = parse_history(history)
    return json.dumps(messages, ensure_ascii=False) if messages else ""


def chat_messages(system: str, prompt: str, history: Any = "") -> list[dict[str, str]]:
    """Chat style: [the system turn, if any] + the history's messages + [the user turn `prompt`]."""
    messages = [{"role": "system", "content": system}] if system else []
    return messages + parse_history(history) + [{"role": "user", "content": prompt}]


def completion_text(system: str, prompt: str, history: Any = "") -> str:
    r"""Completion style: the raw text a base model continues. Its parts, joined by a blank
    line ("\n\n"): the system text (if any), each earlier message of `history` (if any) as a
    transcript line `用户：{content}` or `助手：{content}` (a content with line breaks keeps
    them), then `prompt` as it is. For example, system "S", history [user "u1", assistant
    "a1"] and prompt "用户：u2\n助手：" give

        S

        用户：u1

        助手：a1

        用户：u2
        助手：

    The prompt is not labelled: a stage that wants the model to answer the last user turn
    ends `prompt` with its own "用户：…\n助手：". Without a history this is what completion
    style always sent: f"{system}\n\n{prompt}", or `prompt` alone without a system text."""
    turns = [f"{TRANSCRIPT_SPEAKERS[m['role']]}：{m['content']}" for m in parse_history(history)]
    return "\n\n".join([*([system] if system else []), *turns, prompt])


def request_chars(row: Mapping[str, Any]) -> int:
    """Characters of a request row the model reads: its system text, the history's messages
    and the prompt (what `synth plan` counts per request; template markup is not included)."""
    history = sum(len(m["content"]) for m in parse_history(row.get("history")))
    return len(row.get("system") or "") + history + len(row.get("prompt") or "")


def request_row(
    *, request_id: str, task: str, prompt: str, role: Role, base_seed: int, system: str = "", json_schema: str = "",
    extra_stop: Sequence[str] = (), top_logprobs: int = 0, history: Sequence[Mapping[str, str]] = (),
) -> dict[str, Any]:
    """One request row; `extra_stop` adds a stage's own stop strings to the role's;
    `top_logprobs`: alternatives per generated token to report (a scoring judge);
    `history`: the conversation before `prompt`, messages {"role": "user" | "assistant",
    "content"} in order (stored as JSON, "" when empty; ValueError if malformed)."""
    sampling: Sampling = role.sampling
    return {
        "request_id": request_id,
        "role": role.name,
        "task": task,
        "system": system,
        "prompt": prompt,
        "history": history_json(history),
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
