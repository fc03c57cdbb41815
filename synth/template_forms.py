"""The primitives every template file is loaded with: strict models, the prompt in its two
forms, the jinja2 sandbox, YAML reading, content digests and the static check of a template's
source. `synth.templates` (the scenario templates and shared prompts) and
`synth.dialogue_templates` (the dialogue strategies) both build on this module.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import jinja2
import jinja2.meta
import jinja2.nodes
import yaml
from jinja2.sandbox import SandboxedEnvironment
from pydantic import BaseModel, ConfigDict

from synth.errors import BadInput

ID_PATTERN = r"^[a-z0-9_]+$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ChatPrompt(Strict):
    system: str = ""
    user: str


class PromptForms(Strict):
    """A prompt in both forms: chat (instruct models) and completion (base models)."""

    chat: ChatPrompt
    completion: str


Style = Literal["chat", "completion"]


@dataclass(frozen=True)
class Rendered:
    system: str
    prompt: str


def make_environment() -> SandboxedEnvironment:
    return SandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=False)


def read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise BadInput(f"{path}: cannot read: {e.strerror}") from None
    if not text.strip():
        raise BadInput(f"{path}: file is empty")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark else ""
        raise BadInput(f"{path}: invalid YAML{line}: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise BadInput(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def check_source(env: SandboxedEnvironment, source: str, allowed: tuple[str, ...], where: str) -> None:
    """Syntax and variable check without rendering: names the field and line."""
    try:
        ast = env.parse(source)
    except jinja2.TemplateSyntaxError as e:
        raise BadInput(f"{where}: template syntax error at line {e.lineno}: {e.message}") from None
    # The sandbox would refuse these at render time too; refusing them here also
    # catches escapes hidden in branches that a sample render does not take.
    for node in ast.find_all((jinja2.nodes.Getattr, jinja2.nodes.Getitem)):
        name = node.attr if isinstance(node, jinja2.nodes.Getattr) else getattr(node.arg, "value", None)
        if isinstance(name, str) and name.startswith("_"):
            raise BadInput(f"{where}: line {node.lineno}: access to '{name}' is not allowed in templates (sandbox)")
    unknown = sorted(jinja2.meta.find_undeclared_variables(ast) - set(allowed))
    if unknown:
        raise BadInput(
            f"{where}: uses variable(s) {', '.join(unknown)} that the renderer does not provide "
            f"(available: {', '.join(allowed)})"
        )
