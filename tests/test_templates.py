"""Template and config validation: every bad input is refused with exit 2, naming the file and field."""

from __future__ import annotations

import re

import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from synth.cli import app
from synth.config import load_config
from synth.engines import VERDICT_SCHEMA
from synth.errors import BadInput
from synth.templates import load_catalog

runner = CliRunner()


@pytest.fixture()
def tree(tmp_path: Path, repo_root: Path) -> Path:
    """A private copy of templates/ and seeds/ to break."""
    shutil.copytree(repo_root / "templates", tmp_path / "templates")
    shutil.copytree(repo_root / "seeds", tmp_path / "seeds")
    return tmp_path


def validate(tree: Path):
    return runner.invoke(app, ["templates", "validate", str(tree / "templates"), "--seeds", str(tree / "seeds")])


def test_shipped_templates_cover_the_taxonomy(repo_root: Path):
    catalog = load_catalog(repo_root / "templates", repo_root / "seeds")
    assert len(catalog.scenarios) == 7
    subs = [s for sc in catalog.scenarios.values() for s in sc.template.subcategories]
    assert len(subs) == 39
    assert "杀死" not in "".join(t.id for t in catalog.augment.tactics)  # ids are codes, not content
    for scenario in catalog.scenarios.values():
        for sub in scenario.template.subcategories:
            assert len(scenario.pools.behaviors[sub.id]) >= 5
    assert len(catalog.task_types) >= 15 and len(catalog.regions) >= 20 and len(catalog.events) >= 30


def test_validate_ok(tree: Path):
    result = validate(tree)
    assert result.exit_code == 0, result.output
    assert "7 scenarios, 39 subcategories" in result.output


def _edit(path: Path, fn) -> None:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    fn(data)
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")


@pytest.mark.parametrize(
    "breakage, expected",
    [
        (lambda t: (t / "templates/hate_abuse.yaml").write_text("id: [unclosed\n"), ["hate_abuse.yaml", "invalid YAML", "line"]),
        (lambda t: (t / "templates/hate_abuse.yaml").write_text("  \n"), ["hate_abuse.yaml", "empty"]),
        (lambda t: _edit(t / "templates/hate_abuse.yaml", lambda d: d.pop("benign")), ["hate_abuse.yaml", "benign", "Field required"]),
        (lambda t: _edit(t / "templates/hate_abuse.yaml", lambda d: d.update(colour="red")), ["hate_abuse.yaml", "colour"]),
        (
            lambda t: _edit(t / "templates/hate_abuse.yaml", lambda d: d.update(id="ethics_morality")),
            ["hate_abuse.yaml", "ethics_morality", "already defined"],
        ),
        (
            lambda t: _edit(t / "templates/hate_abuse.yaml", lambda d: d["harmful"]["chat"].update(user="写{{ n }}个关于{{ weather }}的问题")),
            ["hate_abuse.yaml", "harmful.chat.user", "weather"],
        ),
        (
            lambda t: _edit(t / "templates/hate_abuse.yaml", lambda d: d["harmful"].update(completion="{{ ''.__class__.__mro__ }}")),
            ["hate_abuse.yaml", "harmful.completion", "sandbox"],
        ),
        (
            lambda t: _edit(
                t / "templates/hate_abuse.yaml",
                lambda d: d["benign"]["chat"].update(user="{% if false %}{{ cycler.__init__.__globals__ }}{% endif %}{{ n }}"),
            ),
            ["hate_abuse.yaml", "benign.chat.user", "sandbox"],
        ),
        (lambda t: (t / "templates/shared/judge.yaml").write_text(""), ["judge.yaml", "empty"]),
        (
            lambda t: _edit(t / "templates/shared/judge.yaml", lambda d: d["chat"].update(user="{{ question }} {{ answer }}")),
            ["judge.yaml", "answer"],
        ),
        (  # the probe form may not use the judge prompt's examples (a probe reads no examples)
            lambda t: _edit(t / "templates/shared/judge.yaml", lambda d: d["probe"].update(completion="{{ examples }}")),
            ["judge.yaml: probe.completion", "examples"],
        ),
        (
            lambda t: _edit(t / "seeds/scenarios/hate_abuse.yaml", lambda d: d["behaviors"].pop("hatred")),
            ["hate_abuse.yaml", "behaviors", "hatred"],
        ),
        (lambda t: (t / "seeds/scenarios/hate_abuse.yaml").unlink(), ["hate_abuse", "no seed pools"]),
        (lambda t: (t / "seeds/regions.yaml").write_text("regions: 3\n"), ["regions.yaml", "regions"]),
    ],
    ids=[
        "invalid-yaml", "empty-file", "missing-key", "unknown-key", "duplicate-scenario-id", "undefined-variable",
        "sandbox-escape", "sandbox-escape-in-dead-branch", "empty-shared", "judge-undefined-variable",
        "judge-probe-undefined-variable",
        "seed-pool-missing-subcategory", "seed-pool-missing-file", "seed-pool-wrong-type",
    ],
)
def test_bad_templates_exit_2_naming_file_and_field(tree: Path, breakage, expected):
    breakage(tree)
    result = validate(tree)
    assert result.exit_code == 2, result.output
    for word in expected:
        assert word in result.output, (word, result.output)


def test_sandbox_blocks_escape_at_render_time(repo_root: Path):
    """Even if a template reached the renderer, the sandbox refuses internals."""
    catalog = load_catalog(repo_root / "templates", repo_root / "seeds")
    with pytest.raises(BadInput, match="unsafe|undefined"):
        catalog._render("{{ ''.__class__.__mro__[1].__subclasses__() }}", {}, "test")
    # A model output passed as a value is never rendered as a template.
    out = catalog._render("{{ question }}", {"question": "{{ 7*7 }}"}, "test")
    assert out == "{{ 7*7 }}"


def _config(repo_root: Path, tmp_path: Path, fn) -> Path:
    data = yaml.safe_load((repo_root / "pipelines/demo.yaml").read_text(encoding="utf-8"))
    fn(data)
    data["templates"] = str(repo_root / "templates")
    data["seeds"] = str(repo_root / "seeds")
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda d: d.update(colour="red"), ["colour", "Extra inputs"]),
        (lambda d: d["generation"].update(questions_per_kall=3), ["generation.questions_per_kall"]),
        (lambda d: d["roles"]["judges"][0].update(model="qwen-72b"), ["roles.judges[0].model", "qwen-72b", "not defined"]),
        (lambda d: d["roles"].pop("judges"), ["roles.judges", "Field required"]),
        (lambda d: d["roles"]["responders"][0].update(persona="pirate"), ["persona", "pirate"]),
        (lambda d: d["filters"]["questions"].insert(0, {"name": "sparkle"}), ["filters.questions[0].name", "sparkle"]),
        (lambda d: d.update(scenarios=["no_such_scenario"]), ["no_such_scenario"]),
    ],
    ids=["unknown-top-key", "unknown-nested-key", "undefined-model", "missing-role", "unknown-persona", "unknown-filter",
         "unknown-scenario"],
)
def test_bad_config_exit_2_and_nothing_written(repo_root: Path, tmp_path: Path, change, expected):
    config = _config(repo_root, tmp_path, change)
    out = tmp_path / "out"
    result = runner.invoke(app, ["build", str(config), "--out", str(out), "--dry-run"])
    assert result.exit_code == 2, result.output
    for word in expected:
        assert word in result.output, (word, result.output)
    assert not out.exists()


def test_config_error_names_the_file(tmp_path: Path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nmodels: {}\n")
    with pytest.raises(BadInput, match="broken.yaml"):
        load_config(path)


def test_preview_renders_without_a_model(repo_root: Path):
    result = runner.invoke(app, ["preview", "hate_abuse", "-n", "2", "--templates", str(repo_root / "templates"),
                                 "--seeds", str(repo_root / "seeds")])
    assert result.exit_code == 0, result.output
    assert result.output.count("--- ") == 2
    assert "{{" not in result.output


def test_a_template_is_compiled_once_and_the_catalog_still_pickles(repo_root: Path, monkeypatch):
    import cloudpickle

    catalog = load_catalog(repo_root / "templates", repo_root / "seeds")
    compiled: list[str] = []
    from_string = catalog.env.from_string

    def counting(source, *args, **kwargs):
        compiled.append(source)
        return from_string(source, *args, **kwargs)

    monkeypatch.setattr(catalog.env, "from_string", counting)
    source = "问题：{{ question }}（{{ n }}）"
    assert catalog._render(source, {"question": "一", "n": 1}, "test") == "问题：一（1）"
    assert catalog._render(source, {"question": "二", "n": 2}, "test") == "问题：二（2）"
    assert compiled == [source]
    # The shipped templates were compiled by load_catalog's sample renders: rendering them again compiles nothing.
    scenario = catalog.scenarios["hate_abuse"]
    catalog.render(scenario.template.harmful, "chat", _sample_vars(catalog, scenario), "test")
    assert compiled == [source]

    monkeypatch.undo()
    copy = cloudpickle.loads(cloudpickle.dumps(catalog))  # as a task closure carries it to a Ray worker
    assert copy._compiled == {} and catalog._compiled
    assert copy._render(source, {"question": "三", "n": 3}, "test") == "问题：三（3）"
    assert source in copy._compiled
    with pytest.raises(BadInput, match="test: cannot render: UndefinedError"):
        copy._render(source, {"question": "四"}, "test")


def _sample_vars(catalog, scenario):
    from synth.templates import sample_scenario_variables

    return sample_scenario_variables(catalog, scenario, scenario.template.subcategories[0])


def test_judge_prompts_show_no_example_a_model_could_copy(repo_root: Path):
    """Every rubric, both styles: the prompt shows the JSON's shape, and the verdict schema
    forbids copying its analysis slot (the 270M judge once copied an example's "简要分析" into
    every analysis; the schema's minLength is longer than any example text)."""
    catalog = load_catalog(repo_root / "templates", repo_root / "seeds")
    assert len(catalog.judge.rubrics) >= 2
    for rubric in catalog.judge.rubrics:
        for style in ("chat", "completion"):
            rendered = catalog.render(catalog.judge, style, {"question": "问题？", "response": "回答。",
                                                             "rubric": rubric.model_dump(), "fields": [],
                                                             "examples": []}, "judge")
            text = rendered.system + rendered.prompt
            assert rubric.text in text and "问题？" in text and "回答。" in text
            slots = re.findall(r'"分析"\s*:\s*"([^"]*)"', text)
            assert slots and all(len(slot) < VERDICT_SCHEMA["properties"]["分析"]["minLength"] for slot in slots)
    with pytest.raises(BadInput, match="rubric 'nope'"):
        catalog.rubric("nope")
