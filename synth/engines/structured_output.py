"""Keeping schema-constrained (JSON) outputs parseable under a token budget.

Guided decoding makes every *finished* output valid JSON, but `max_tokens` can still
cut an output mid-string, and a cut JSON does not parse. Two defences:

1. `fit_schema_to_budget` gives every free-text string property a `maxLength` that fits
   the row's `max_tokens` (a conservative 2 tokens per character, plus the JSON skeleton),
   so the grammar itself closes the string in time;
2. `close_truncated_json` completes a cut output (closes the open string, object and
   array) if the result parses and carries the schema's required keys. The row keeps
   `finish_reason: length`, so a stage can still tell it was cut.
"""

from __future__ import annotations

import copy
import json
from typing import Any

TOKENS_PER_CHAR = 2  # conservative: CJK text is ~1 token/char for Qwen/Gemma tokenizers
SKELETON_TOKENS_PER_PROPERTY = 8
SKELETON_TOKENS = 8


def _free_strings(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """String sub-schemas of an object's properties that are free text (no enum/const/pattern)."""
    out = []
    for prop in (schema.get("properties") or {}).values():
        if not isinstance(prop, dict):
            continue
        if prop.get("type") == "string" and not ({"enum", "const", "pattern", "format"} & prop.keys()):
            out.append(prop)
        elif prop.get("type") == "object":
            out.extend(_free_strings(prop))
    return out


def _count_properties(schema: dict[str, Any]) -> int:
    props = schema.get("properties") or {}
    return len(props) + sum(_count_properties(p) for p in props.values() if isinstance(p, dict))


def fit_schema_to_budget(schema: dict[str, Any], max_tokens: int) -> dict[str, Any]:
    """A copy of `schema` whose free-text strings get a `maxLength` that fits `max_tokens`."""
    schema = copy.deepcopy(schema)
    if schema.get("type") != "object":
        return schema
    free = _free_strings(schema)
    if not free:
        return schema
    skeleton = SKELETON_TOKENS + SKELETON_TOKENS_PER_PROPERTY * _count_properties(schema)
    per_string = max(1, (max_tokens - skeleton) // (TOKENS_PER_CHAR * len(free)))
    for prop in free:
        prop["maxLength"] = min(int(prop.get("maxLength", per_string)), per_string)
        prop["minLength"] = min(int(prop.get("minLength", 1)), prop["maxLength"])
    return schema


def close_truncated_json(text: str, schema: dict[str, Any] | None = None) -> str | None:
    """Complete a JSON document cut short; None if that does not give a usable object."""
    stack: list[str] = []
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            stack.append("}" if ch == "{" else "]")
        elif ch in "}]":
            if not stack:
                return None
            stack.pop()
    candidate = text
    if in_string:
        if escaped:
            candidate = candidate[:-1]
        candidate += '"'
    candidate = candidate.rstrip().rstrip(",")
    candidate += "".join(reversed(stack))
    try:
        value = json.loads(candidate)
    except ValueError:
        return None
    if schema and isinstance(value, dict):
        if any(key not in value for key in schema.get("required", [])):
            return None
        for key, prop in (schema.get("properties") or {}).items():
            if key in value and isinstance(prop, dict) and "enum" in prop and value[key] not in prop["enum"]:
                return None
    return json.dumps(value, ensure_ascii=False)


def flat_schema_regex(schema: dict[str, Any]) -> str | None:
    """A regex for a flat object schema (every property required, string or string enum), in
    the JSON a model writes unconstrained: `{"k": "v", "k2": "v2"}`, properties in schema
    order, one space after ':' and ','. None for any other schema.

    Why: xgrammar's JSON grammar either allows free whitespace (a small model then pads the
    object with newlines until max_tokens cuts it) or, as vLLM's `disable_any_whitespace`,
    forces the compact `{"k":"v"}`, a tokenisation the model rarely saw: the Qwen 1.5B judge
    then wrote English and stray braces and fell to chance (BENCHMARKS.md). This regex fixes
    the spacing to the usual one. Free strings exclude quotes, backslashes and newlines."""
    import re

    props = schema.get("properties") if schema.get("type") == "object" else None
    if not props or set(schema.get("required") or []) != set(props):
        return None
    parts = []
    for key, prop in props.items():
        if not isinstance(prop, dict) or prop.get("type") != "string" or {"pattern", "format", "const"} & prop.keys():
            return None
        if "enum" in prop:
            value = "(" + "|".join(re.escape(json.dumps(str(v), ensure_ascii=False)[1:-1]) for v in prop["enum"]) + ")"
        else:
            low, high = int(prop.get("minLength", 0)), prop.get("maxLength")
            value = f'[^"\\\\\\n]{{{low},{"" if high is None else int(high)}}}'
        parts.append(f'"{re.escape(key)}": "{value}"')
    return r"\{" + ", ".join(parts) + r"\}"


def vllm_constraint(schema_json: str, max_tokens: int) -> dict[str, Any] | None:
    """vLLM's `structured_outputs` for a row's `json_schema` under its `max_tokens` (None when
    the row has none): a flat object (the verdict) as a regex in the usual JSON spacing
    (`flat_schema_regex`), anything else as JSON. The in-process engine and `engine: openai`
    with `response_format: structured_outputs` (vLLM's server) both send this, so a judge is
    constrained the same way whichever way it is served."""
    if not schema_json:
        return None
    schema = fit_schema_to_budget(json.loads(schema_json), max_tokens)
    regex = flat_schema_regex(schema)
    return {"regex": regex} if regex else {"json": json.dumps(schema, ensure_ascii=False)}
