"""Dialogue strategies and the dialogue judge prompt: loaded, validated, rendered.

templates/shared/dialogue.yaml declares how multi-turn conversations are written: per
strategy (harmful: escalation, context then pivot, ...; benign: sensitive but legitimate
follow-ups, ...) a plan prompt for the user-turn writer, in both forms (chat and
completion, `PromptForms`), and the range its number of user turns is drawn from. A team
adds a strategy with YAML only. templates/shared/dialogue_judge.yaml, when there, is the
pair judges' prompt for a whole conversation: they label its last answer.

Every error names the file and the line of the offending strategy or field
(`templates/shared/dialogue.yaml:23: strategies[escalation].turns: ...`): the file is also
composed into YAML nodes, whose marks map a pydantic error's location to a line. Like the
other templates, every prompt is checked for the variables it uses and rendered once in
both styles at load time, so a runtime error surfaces in `synth templates validate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, StrictInt, ValidationError, field_validator

from synth.errors import BadInput
from synth.output_parsing import JUDGE_FIELDS, SAFE
from synth.template_forms import ID_PATTERN, PromptForms, Rendered, Strict, Style, check_source, digest, read_yaml

# `catalog` below is a synth.templates.Catalog (its sandbox `env` and `render`); not imported, since
# synth.templates loads this module (one direction, no import cycle).
Catalog = Any

MIN_TURNS, MAX_TURNS = 1, 8
KINDS = ("harmful", "benign")
ROLES = ("user", "assistant")

# The variables a plan prompt may use: scenario (id, name_zh, name_en, description),
# subcategory (id, name_zh, name_en), behavior (harmful kind: the target behaviour) or
# benign_topic (benign kind), turn (1-based index of the user turn to write), turns (the
# planned number of user turns), history (the messages so far, each {role, content}, role
# user | assistant) and strategy (id, name_zh, description).
DIALOGUE_VARIABLES = ("scenario", "subcategory", "behavior", "benign_topic", "turn", "turns", "history", "strategy")
# A strategy gets the seed of its own kind only: a harmful strategy asking for
# `benign_topic` (or a benign one for `behavior`) is refused at load, not at build time.
PLAN_VARIABLES = {
    "harmful": tuple(v for v in DIALOGUE_VARIABLES if v != "benign_topic"),
    "benign": tuple(v for v in DIALOGUE_VARIABLES if v != "behavior"),
}
# The dialogue judge's variables: synth.templates.JUDGE_VARIABLES with question and response
# replaced by `messages` (the whole conversation, each {role, content}, ending with the
# answer to label). Each of `examples` is {messages, label}.
DIALOGUE_JUDGE_VARIABLES = ("messages", "rubric", "fields", "examples")

DIALOGUE_FILE = "dialogue.yaml"
DIALOGUE_JUDGE_FILE = "dialogue_judge.yaml"


class Strategy(Strict):
    id: str = Field(pattern=ID_PATTERN)
    kind: Literal["harmful", "benign"]
    name_zh: str
    description: str
    turns: tuple[StrictInt, StrictInt]  # [min, max] user turns, each within 1..8
    plan: PromptForms  # the user-turn writer's prompt

    @field_validator("turns")
    @classmethod
    def _turn_range(cls, turns: tuple[int, int]) -> tuple[int, int]:
        low, high = turns
        if not (MIN_TURNS <= low <= MAX_TURNS and MIN_TURNS <= high <= MAX_TURNS):
            raise ValueError(f"turn range [{low}, {high}] is outside {MIN_TURNS}–{MAX_TURNS}")
        if low > high:
            raise ValueError(f"turn range [{low}, {high}]: min is greater than max")
        return turns


class DialogueStrategies(Strict):
    strategies: list[Strategy] = Field(min_length=1)


@dataclass
class Dialogue:
    """What a conversation stage reads: the strategies, the dialogue judge (None without
    dialogue_judge.yaml), and where each came from (for runtime error messages)."""

    strategies: list[Strategy]
    path: Path
    judge: PromptForms | None = None
    judge_path: Path | None = None
    lines: dict[str, int] = field(default_factory=dict)  # strategy id -> the line of its plan
    hashes: dict[str, str] = field(default_factory=dict)  # "templates/shared/<name>" -> content hash

    def strategy(self, strategy_id: str) -> Strategy:
        for strategy in self.strategies:
            if strategy.id == strategy_id:
                return strategy
        raise BadInput(f"dialogue strategy '{strategy_id}' is not in {self.path}")

    def of_kind(self, kind: str) -> list[Strategy]:
        return [s for s in self.strategies if s.kind == kind]

    def plan_where(self, strategy: Strategy) -> str:
        return f"{self.path}:{self.lines.get(strategy.id, 1)}: strategies[{strategy.id}].plan"

    def render_plan(self, catalog: Catalog, strategy: Strategy, style: Style, variables: dict[str, Any]) -> Rendered:
        """The user-turn writer's prompt for one turn (variables from `plan_variables`)."""
        return catalog.render(strategy.plan, style, variables, self.plan_where(strategy))

    def render_judge(self, catalog: Catalog, style: Style, variables: dict[str, Any]) -> Rendered:
        """The dialogue judge's prompt: variables messages (ending with the answer to label),
        rubric, fields, examples."""
        if self.judge is None:
            raise BadInput(f"the dialogue judge needs {self.path.parent / DIALOGUE_JUDGE_FILE}")
        messages = variables["messages"]
        if not messages or messages[-1].get("role") != "assistant":
            raise ValueError("the dialogue judge labels the last answer: messages must end with an assistant message")
        return catalog.render(self.judge, style, variables, str(self.judge_path))


# -- file:line ---------------------------------------------------------------------


class _Located:
    """A YAML file's data and its composed nodes: a location (pydantic's `loc`) -> its line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data = read_yaml(path)  # BadInput for an unreadable, empty, invalid or non-mapping file
        self.root = yaml.compose(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)

    def line(self, loc: tuple[Any, ...]) -> int:
        """1-based line of the deepest part of `loc` the file has: a mapping key's own line, a
        list item's first line; for a missing field, the line of the mapping that lacks it."""
        node, line = self.root, self.root.start_mark.line + 1
        for part in loc:
            if isinstance(node, yaml.MappingNode) and isinstance(part, str):
                found = next(((k, v) for k, v in node.value if getattr(k, "value", None) == part), None)
                if found is None:
                    break
                node, line = found[1], found[0].start_mark.line + 1
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
                node = node.value[part]
                line = node.start_mark.line + 1
            else:
                break
        return line

    def name(self, loc: tuple[Any, ...]) -> str:
        """`strategies[escalation].turns`: a list item by its id when it has one."""
        out, data = "", self.data
        for part in loc:
            if isinstance(part, int):
                item = data[part] if isinstance(data, list) and 0 <= part < len(data) else None
                ident = item.get("id") if isinstance(item, dict) else None
                out += f"[{ident}]" if isinstance(ident, str) and ident else f"[{part}]"
                data = item
            else:
                text = str(part) if str(part).isprintable() else repr(part)
                out += f".{text}" if out else text
                data = data.get(part) if isinstance(data, dict) else None
        return out or "(top level)"

    def where(self, *loc: Any) -> str:
        return f"{self.path}:{self.line(loc)}: {self.name(loc)}"

    def parse(self, model: type[Strict]) -> Any:
        try:
            return model.model_validate(self.data)
        except ValidationError as e:
            lines = []
            for item in e.errors():
                message = item["msg"].removeprefix("Value error, ")
                lines.append(f"{self.where(*item['loc'])}: {message}")
            raise BadInput("\n".join(lines)) from None


# -- loading -----------------------------------------------------------------------


def load_dialogue(shared_dir: Path, catalog: Catalog) -> Dialogue:
    """Load and validate shared_dir/dialogue.yaml (and dialogue_judge.yaml when it is there),
    then render every prompt once in both styles. `catalog`: its environment renders, and the
    judge's rubrics and fields come from it. Raises BadInput naming file:line."""
    path = Path(shared_dir) / DIALOGUE_FILE
    located = _Located(path)
    parsed: DialogueStrategies = located.parse(DialogueStrategies)
    strategies = parsed.strategies
    for kind in KINDS:
        if not any(s.kind == kind for s in strategies):
            raise BadInput(f"{located.where('strategies')}: no {kind} strategy "
                           f"(at least one of each kind, {' and '.join(KINDS)}, is needed)")
    seen: dict[str, int] = {}
    for i, strategy in enumerate(strategies):
        if strategy.id in seen:
            raise BadInput(f"{located.where('strategies', i, 'id')}: duplicate strategy id '{strategy.id}' "
                           f"(first at line {located.line(('strategies', seen[strategy.id]))})")
        seen[strategy.id] = i
        _check_prompt(catalog, strategy.plan, PLAN_VARIABLES[strategy.kind], located, "strategies", i, "plan")
    dialogue = Dialogue(
        strategies=strategies,
        path=path,
        lines={s.id: located.line(("strategies", i, "plan")) for i, s in enumerate(strategies)},
        hashes={"templates/shared/dialogue": digest(path)},
    )
    judge_path = Path(shared_dir) / DIALOGUE_JUDGE_FILE
    if judge_path.exists():
        judge_located = _Located(judge_path)
        dialogue.judge = judge_located.parse(PromptForms)
        dialogue.judge_path = judge_path
        _check_prompt(catalog, dialogue.judge, DIALOGUE_JUDGE_VARIABLES, judge_located)
        dialogue.hashes["templates/shared/dialogue_judge"] = digest(judge_path)
    _render_everything(dialogue, catalog)
    return dialogue


def _check_prompt(catalog: Catalog, forms: PromptForms, allowed: tuple[str, ...], located: _Located,
                  *loc: Any) -> None:
    """Each form under its own file:line: not empty (the user part and the completion), only
    `allowed` variables, no sandbox escapes, valid syntax (its error adds the line in the prompt)."""
    for part in (("chat", "system"), ("chat", "user"), ("completion",)):
        source = forms.completion if part == ("completion",) else getattr(forms.chat, part[1])
        where = located.where(*loc, *part)
        if part != ("chat", "system") and not source.strip():
            raise BadInput(f"{where}: the prompt is empty")
        check_source(catalog.env, source, allowed, where)


# -- rendering ---------------------------------------------------------------------


def plan_variables(
    strategy: Strategy,
    *,
    scenario: dict[str, Any],
    subcategory: dict[str, Any],
    target: str,
    turn: int,
    turns: int,
    history: list[dict[str, str]],
) -> dict[str, Any]:
    """The variables for writing user turn `turn` of `turns`: `target` is the behaviour
    (harmful strategy) or the benign topic (benign strategy); `history` the conversation so
    far, user and assistant alternating from the user, one exchange per earlier turn."""
    low, high = strategy.turns
    if not low <= turns <= high:
        raise ValueError(f"strategy {strategy.id}: {turns} turns is outside its range [{low}, {high}]")
    if not 1 <= turn <= turns:
        raise ValueError(f"turn {turn} is outside 1..{turns}")
    if len(history) != 2 * (turn - 1):
        raise ValueError(f"turn {turn} follows {2 * (turn - 1)} messages, got {len(history)}")
    for i, message in enumerate(history):
        if message.get("role") != ROLES[i % 2]:
            raise ValueError(f"history[{i}]: role must be {ROLES[i % 2]}, got {message.get('role')!r}")
    return {
        "scenario": scenario,
        "subcategory": subcategory,
        "behavior" if strategy.kind == "harmful" else "benign_topic": target,
        "turn": turn,
        "turns": turns,
        "history": [{"role": m["role"], "content": m["content"]} for m in history],
        "strategy": {"id": strategy.id, "name_zh": strategy.name_zh, "description": strategy.description},
    }


_SAMPLE_SCENARIO = {"id": "sample", "name_zh": "示例场景", "name_en": "Sample", "description": "示例场景的说明。"}
_SAMPLE_SUBCATEGORY = {"id": "sample_sub", "name_zh": "示例子类", "name_en": "Sample subcategory"}


def _sample_history(turn: int) -> list[dict[str, str]]:
    return [{"role": role, "content": f"示例{'发言' if role == 'user' else '回答'}{k}。"}
            for k in range(1, turn) for role in ROLES]


def _render_everything(dialogue: Dialogue, catalog: Catalog) -> None:
    """Every plan prompt for every turn of its shortest and longest conversation, and the judge
    with every rubric, with and without fields and examples, in both styles."""
    for strategy in dialogue.strategies:
        for turns in sorted(set(strategy.turns)):
            for turn in range(1, turns + 1):
                variables = plan_variables(strategy, scenario=_SAMPLE_SCENARIO, subcategory=_SAMPLE_SUBCATEGORY,
                                           target="示例目标", turn=turn, turns=turns, history=_sample_history(turn))
                for style in ("chat", "completion"):
                    dialogue.render_plan(catalog, strategy, style, variables)
    if dialogue.judge is None:
        return
    messages = _sample_history(3)  # two exchanges: the judge labels the last answer
    example = {"messages": _sample_history(2), "label": SAFE}
    for rubric in catalog.judge.rubrics:
        for fields, examples in (([], []), (catalog.judge_fields(list(JUDGE_FIELDS)), [example])):
            for style in ("chat", "completion"):
                dialogue.render_judge(catalog, style, {"messages": messages, "rubric": rubric.model_dump(),
                                              "fields": fields, "examples": examples})
