"""Scenario templates, shared prompts and seed pools: loaded, validated, rendered.

Templates are untrusted data. They are parsed as YAML into strict models and
rendered by jinja2's `SandboxedEnvironment` with `StrictUndefined`: a template
can read the variables the renderer gives it and nothing else (no attribute
access to internals, no files, no environment). Model outputs are only ever
passed *into* templates as values, never rendered as templates themselves.

Layout:
    templates/<scenario>.yaml       one file per harm scenario
    templates/shared/augment.yaml   red-team tactics and rewrites
    templates/shared/respond.yaml   responder prompts and personas
    templates/shared/judge.yaml     the guard / judge prompt
    templates/shared/question_judge.yaml, dialogue.yaml, dialogue_judge.yaml   (optional) the question
                                    judge; dialogue strategies and their judge (synth.dialogue_templates)
    seeds/task_types.yaml, seeds/regions.yaml, seeds/events.yaml   shared element pools
    seeds/scenarios/<scenario>.yaml behaviours and benign topics per subcategory
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment
from pydantic import BaseModel, Field, ValidationError

from synth.config import format_validation_error
from synth.errors import BadInput
from synth.output_parsing import FIELD_KEYS, JUDGE_FIELDS, ordered_fields
from synth.template_forms import (ID_PATTERN, PromptForms, Rendered, Strict, Style, check_source, digest,
                                  make_environment, read_yaml)

class Subcategory(Strict):
    id: str = Field(pattern=ID_PATTERN)
    name_zh: str
    name_en: str


class ScenarioTemplate(Strict):
    id: str = Field(pattern=ID_PATTERN)
    name_zh: str
    name_en: str
    description: str
    subcategories: list[Subcategory] = Field(min_length=1)
    harmful: PromptForms
    benign: PromptForms


class Tactic(PromptForms):
    id: str = Field(pattern=ID_PATTERN)
    name_zh: str
    description: str


class AugmentTemplates(Strict):
    tactics: list[Tactic] = Field(min_length=1)


class Persona(Strict):
    id: str = Field(pattern=ID_PATTERN)
    system: str


class RespondTemplates(PromptForms):
    personas: list[Persona] = Field(min_length=1)


class Rubric(Strict):
    id: str = Field(pattern=ID_PATTERN)
    text: str


class JudgeTemplates(PromptForms):
    # A judge template written before rubrics existed (e.g. the judge.yaml recorded in an
    # older build's inputs/) has one empty rubric and does not use {{ rubric }}.
    rubrics: list[Rubric] = Field(default_factory=lambda: [Rubric(id="default", text="")], min_length=1)
    # What a probe judge reads (roles.judges[].probe, synth.probe.Probe), when the file has it:
    # a short prompt, so the pooling engine (which prefills every token of every prompt) reads the
    # pair, not the instructions. Without it a probe reads the judge prompt itself.
    probe: PromptForms | None = None


class TaskTypes(Strict):
    task_types: list[str] = Field(min_length=1)


class Regions(Strict):
    regions: list[str] = Field(min_length=1)


class Events(Strict):
    events: list[str] = Field(min_length=1)


class ScenarioPools(Strict):
    behaviors: dict[str, list[str]]
    benign_topics: dict[str, list[str]]


# The variables each kind of template may use. Validation renders every template
# with exactly these, so a template asking for anything else fails at load time.
SCENARIO_VARIABLES = ("scenario", "subcategory", "behavior", "task_type", "region", "event", "benign_topic", "n")
AUGMENT_VARIABLES = ("question", "scenario", "subcategory")
RESPOND_VARIABLES = ("question", "persona", "history")
JUDGE_VARIABLES = ("question", "response", "rubric", "fields", "examples")
# `history`: a conversation's earlier turns (role, content), [] for a single question
JUDGE_PROBE_VARIABLES = ("question", "response", "history", "rubric")
# `scenarios`: the catalog, each scenario with its id, name_zh and subcategories (id, name_zh)
QUESTION_JUDGE_VARIABLES = ("question", "scenarios")

class QuestionJudgeForms(PromptForms):
    """templates/shared/question_judge.yaml: the generative judge's prompt, and `probe`, what a
    question probe reads (synth.probe.QuestionProbe), when the file has it."""

    probe: PromptForms | None = None


@dataclass
class Scenario:
    template: ScenarioTemplate
    pools: ScenarioPools
    path: Path
    hash: str  # of the template file and its seed pool: what the scenario's rows depend on

    @property
    def id(self) -> str:
        return self.template.id


@dataclass
class Catalog:
    """Everything a build reads from templates/ and seeds/, validated."""

    scenarios: dict[str, Scenario]
    augment: AugmentTemplates
    respond: RespondTemplates
    judge: JudgeTemplates
    task_types: list[str]
    regions: list[str]
    events: list[str]
    hashes: dict[str, str] = field(default_factory=dict)  # shared file name -> content hash
    obfuscation: Any = None  # synth.obfuscation.Tables, from seeds/obfuscation/ when it is there
    env: SandboxedEnvironment = field(default_factory=lambda: make_environment(), repr=False)
    # every subcategory id -> its Chinese name, across all scenarios (also those a config leaves out):
    # the choices of the judge field `subcategory`
    subcategories: dict[str, str] = field(default_factory=dict)
    # the question judge's prompt (templates/shared/question_judge.yaml); None when the file is not there
    question_judge: QuestionJudgeForms | None = None
    # dialogue strategies and the dialogue judge (synth.dialogue_templates.Dialogue, from
    # templates/shared/dialogue.yaml and dialogue_judge.yaml); None when dialogue.yaml is not there
    dialogue: Any = None
    # every subcategory id -> (scenario id, scenario name_zh), across all scenarios: where a
    # question judged to be about that subcategory is reassigned to
    scenario_of: dict[str, tuple[str, str]] = field(default_factory=dict)
    # what the question judge's prompt lists: every scenario with its subcategories
    taxonomy: list[dict[str, Any]] = field(default_factory=list)
    # every scenario's template, across all scenarios: a reassigned question's scenario may be one
    # the config leaves out, and a conversation it seeds is planned from it
    every_scenario: dict[str, ScenarioTemplate] = field(default_factory=dict)
    # source -> compiled template, filled as templates are first rendered in this process.
    # Not pickled (a Catalog travels to Ray workers in task closures): each process compiles its own.
    _compiled: dict[str, jinja2.Template] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_compiled"] = {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("_compiled", {})

    # -- rendering -------------------------------------------------------------
    def render(self, forms: PromptForms, style: Style, variables: dict[str, Any], where: str) -> Rendered:
        if style == "chat":
            return Rendered(
                system=self._render(forms.chat.system, variables, f"{where}.chat.system"),
                prompt=self._render(forms.chat.user, variables, f"{where}.chat.user"),
            )
        return Rendered(system="", prompt=self._render(forms.completion, variables, f"{where}.completion"))

    def _render(self, source: str, variables: dict[str, Any], where: str) -> str:
        if not source:
            return ""
        try:
            template = self._compiled.get(source)
            if template is None:
                template = self._compiled[source] = self.env.from_string(source)
            return template.render(**variables)
        except jinja2.TemplateError as e:
            raise BadInput(f"{where}: cannot render: {type(e).__name__}: {e}") from None

    def tactic(self, tactic_id: str) -> Tactic:
        for tactic in self.augment.tactics:
            if tactic.id == tactic_id:
                return tactic
        raise BadInput(f"augment tactic '{tactic_id}' is not in templates/shared/augment.yaml")

    def persona(self, persona_id: str | None, index: int) -> Persona:
        if persona_id is None:
            return self.respond.personas[index % len(self.respond.personas)]
        for persona in self.respond.personas:
            if persona.id == persona_id:
                return persona
        raise BadInput(f"responder persona '{persona_id}' is not in templates/shared/respond.yaml")

    def rubric(self, rubric_id: str | None) -> Rubric:
        """A judge's rubric: the named one, or the first (the default) when none is named."""
        if rubric_id is None:
            return self.judge.rubrics[0]
        for rubric in self.judge.rubrics:
            if rubric.id == rubric_id:
                return rubric
        raise BadInput(f"judge rubric '{rubric_id}' is not in templates/shared/judge.yaml")

    @property
    def topics(self) -> dict[str, str]:
        """What the question judge writes for a subcategory (its label 场景-子类, which a small model
        reads better than an id; 都不是 for none) -> the subcategory id (`other` for none)."""
        from synth.output_parsing import OTHER_SUBCATEGORY, OTHER_TOPIC

        return {**{sub["label"]: sub["id"] for s in self.taxonomy for sub in s["subcategories"]},
                OTHER_TOPIC: OTHER_SUBCATEGORY}

    def judge_fields(self, fields: list[str]) -> list[dict[str, Any]]:
        """The judge template's `fields`: per requested field (config `annotate.fields`, in schema
        order) its name, the JSON key the judge writes and, for `subcategory`, the choices."""
        return [{"name": name, "key": FIELD_KEYS[name],
                 "choices": [f"{i}（{zh}）" for i, zh in self.subcategories.items()] if name == "subcategory" else []}
                for name in ordered_fields(fields)]


# -- loading -------------------------------------------------------------------


def _parse(model: type[BaseModel], path: Path) -> Any:
    try:
        return model.model_validate(read_yaml(path))
    except ValidationError as e:
        raise BadInput(f"{path}: invalid {model.__name__}:\n{format_validation_error(e)}") from None


def _check_forms(env: SandboxedEnvironment, forms: PromptForms, allowed: tuple[str, ...], where: str) -> None:
    check_source(env, forms.chat.system, allowed, f"{where}.chat.system")
    check_source(env, forms.chat.user, allowed, f"{where}.chat.user")
    check_source(env, forms.completion, allowed, f"{where}.completion")


def load_catalog(templates_dir: Path, seeds_dir: Path, only: list[str] | None = None) -> Catalog:
    """Load and validate templates and seeds, then render every template once.

    Raises BadInput naming the file and field on the first problem.
    """
    templates_dir, seeds_dir = Path(templates_dir), Path(seeds_dir)
    for d in (templates_dir, seeds_dir):
        if not d.is_dir():
            raise BadInput(f"{d}: directory not found")
    env = make_environment()
    shared = templates_dir / "shared"
    shared_files = {name: shared / f"{name}.yaml" for name in ("augment", "respond", "judge")}
    augment = _parse(AugmentTemplates, shared_files["augment"])
    respond = _parse(RespondTemplates, shared_files["respond"])
    judge = _parse(JudgeTemplates, shared_files["judge"])
    for tactic in augment.tactics:
        _check_forms(env, tactic, AUGMENT_VARIABLES, f"{shared_files['augment']}: tactics[{tactic.id}]")
    _check_forms(env, respond, RESPOND_VARIABLES, str(shared_files["respond"]))
    for persona in respond.personas:
        check_source(env, persona.system, (), f"{shared_files['respond']}: personas[{persona.id}].system")
    _check_forms(env, judge, JUDGE_VARIABLES, str(shared_files["judge"]))
    if judge.probe is not None:
        _check_forms(env, judge.probe, JUDGE_PROBE_VARIABLES, f"{shared_files['judge']}: probe")
    _unique([t.id for t in augment.tactics], f"{shared_files['augment']}: tactics", "tactic id")
    _unique([p.id for p in respond.personas], f"{shared_files['respond']}: personas", "persona id")
    _unique([r.id for r in judge.rubrics], f"{shared_files['judge']}: rubrics", "rubric id")

    pool_files = {name: seeds_dir / f"{name}.yaml" for name in ("task_types", "regions", "events")}
    task_types = _parse(TaskTypes, pool_files["task_types"]).task_types
    regions = _parse(Regions, pool_files["regions"]).regions
    events = _parse(Events, pool_files["events"]).events

    scenarios: dict[str, Scenario] = {}
    files = sorted(templates_dir.glob("*.yaml")) + sorted(templates_dir.glob("*.yml"))
    if not files:
        raise BadInput(f"{templates_dir}: no scenario templates (*.yaml)")
    for path in files:
        template = _parse(ScenarioTemplate, path)
        if template.id in scenarios:
            raise BadInput(
                f"{path}: id: scenario id '{template.id}' is already defined in {scenarios[template.id].path}"
            )
        _unique([s.id for s in template.subcategories], f"{path}: subcategories", "subcategory id")
        _check_forms(env, template.harmful, SCENARIO_VARIABLES, f"{path}: harmful")
        _check_forms(env, template.benign, SCENARIO_VARIABLES, f"{path}: benign")
        pool_path = seeds_dir / "scenarios" / f"{template.id}.yaml"
        if not pool_path.exists():
            raise BadInput(f"{path}: scenario '{template.id}' has no seed pools: expected {pool_path}")
        pools = _parse(ScenarioPools, pool_path)
        sub_ids = [s.id for s in template.subcategories]
        for field_name in ("behaviors", "benign_topics"):
            pool = getattr(pools, field_name)
            missing = [s for s in sub_ids if not pool.get(s)]
            extra = sorted(set(pool) - set(sub_ids))
            if missing:
                raise BadInput(f"{pool_path}: {field_name}: no entries for subcategory {', '.join(missing)}")
            if extra:
                raise BadInput(f"{pool_path}: {field_name}: unknown subcategory {', '.join(extra)}")
        scenarios[template.id] = Scenario(template, pools, path, digest(path, pool_path))

    subcategories = {sub.id: sub.name_zh for s in scenarios.values() for sub in s.template.subcategories}
    scenario_of = {sub.id: (s.id, s.template.name_zh) for s in scenarios.values() for sub in s.template.subcategories}
    taxonomy = [{"id": s.id, "name_zh": s.template.name_zh,
                 "subcategories": [{"id": sub.id, "name_zh": sub.name_zh, "label": f"{s.template.name_zh}-{sub.name_zh}"}
                                   for sub in s.template.subcategories]}
                for s in scenarios.values()]
    question_judge_path = shared / "question_judge.yaml"
    question_judge = None
    if question_judge_path.exists():
        question_judge = _parse(QuestionJudgeForms, question_judge_path)
        _check_forms(env, question_judge, QUESTION_JUDGE_VARIABLES, str(question_judge_path))
        if question_judge.probe is not None:
            _check_forms(env, question_judge.probe, QUESTION_JUDGE_VARIABLES, f"{question_judge_path}: probe")
    every = dict(scenarios)
    if only:
        unknown = sorted(set(only) - set(scenarios))
        if unknown:
            raise BadInput(f"scenarios: unknown scenario id(s) {', '.join(unknown)} (known: {', '.join(scenarios)})")
        scenarios = {k: v for k, v in scenarios.items() if k in only}

    catalog = Catalog(
        scenarios=scenarios,
        augment=augment,
        respond=respond,
        judge=judge,
        task_types=task_types,
        regions=regions,
        events=events,
        hashes={
            **{f"templates/shared/{k}": digest(p) for k, p in shared_files.items()},
            **{f"seeds/{k}": digest(p) for k, p in pool_files.items()},
        },
        env=env,
        subcategories=subcategories,
        question_judge=question_judge,
        scenario_of=scenario_of,
        taxonomy=taxonomy,
        every_scenario={k: v.template for k, v in every.items()},
    )
    if question_judge is not None:
        catalog.hashes["templates/shared/question_judge"] = digest(question_judge_path)
    if (shared / "dialogue.yaml").exists():
        from synth.dialogue_templates import load_dialogue

        catalog.dialogue = load_dialogue(shared, catalog)
        catalog.hashes.update(catalog.dialogue.hashes)
    if (seeds_dir / "obfuscation").is_dir():
        from synth.obfuscation import load_tables

        catalog.obfuscation = load_tables(seeds_dir / "obfuscation")
        catalog.hashes["seeds/obfuscation"] = catalog.obfuscation.hash
    _render_everything(catalog)
    return catalog


def _unique(ids: list[str], where: str, what: str) -> None:
    seen: set[str] = set()
    for i in ids:
        if i in seen:
            raise BadInput(f"{where}: duplicate {what} '{i}'")
        seen.add(i)


def sample_scenario_variables(catalog: Catalog, scenario: Scenario, sub: Subcategory, n: int = 3) -> dict[str, Any]:
    """Variables for one render, from the first entry of every pool (validation only)."""
    return {
        "scenario": scenario_vars(scenario.template),
        "subcategory": sub.model_dump(),
        "behavior": scenario.pools.behaviors[sub.id][0],
        "benign_topic": scenario.pools.benign_topics[sub.id][0],
        "task_type": catalog.task_types[0],
        "region": catalog.regions[0],
        "event": catalog.events[0],
        "n": n,
    }


def scenario_vars(template: ScenarioTemplate) -> dict[str, str]:
    return {k: getattr(template, k) for k in ("id", "name_zh", "name_en", "description")}


def _render_everything(catalog: Catalog) -> None:
    """Render every template in both styles, so runtime errors surface at load time."""
    for scenario in catalog.scenarios.values():
        sub = scenario.template.subcategories[0]
        variables = sample_scenario_variables(catalog, scenario, sub)
        for kind in ("harmful", "benign"):
            for style in ("chat", "completion"):
                catalog.render(getattr(scenario.template, kind), style, variables, f"{scenario.path}: {kind}")
        for tactic in catalog.augment.tactics:
            for style in ("chat", "completion"):
                catalog.render(
                    tactic,
                    style,
                    {"question": "示例问题？", "scenario": variables["scenario"], "subcategory": variables["subcategory"]},
                    f"templates/shared/augment.yaml: tactics[{tactic.id}]",
                )
    for persona in catalog.respond.personas:
        for style in ("chat", "completion"):
            catalog.render(
                catalog.respond, style, {"question": "示例问题？", "persona": persona.model_dump(),
                                         "history": [{"role": "user", "content": "示例"}, {"role": "assistant", "content": "示例回答"}]},
                "templates/shared/respond.yaml",
            )
    if catalog.question_judge is not None:
        for style in ("chat", "completion"):
            catalog.render(catalog.question_judge, style, {"question": "示例问题？", "scenarios": catalog.taxonomy},
                           "templates/shared/question_judge.yaml")
    for rubric in catalog.judge.rubrics:
        for style in ("chat", "completion"):
            for fields, examples in (([], []), (catalog.judge_fields(list(JUDGE_FIELDS)),
                                                [{"question": "例题？", "response": "例答。", "label": "安全"}])):
                catalog.render(catalog.judge, style, {"question": "示例问题？", "response": "示例回答。",
                                                      "rubric": rubric.model_dump(), "fields": fields,
                                                      "examples": examples},
                               f"templates/shared/judge.yaml: rubrics[{rubric.id}]")
