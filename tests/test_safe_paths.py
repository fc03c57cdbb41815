"""Path traversal in the config: names that become paths are refused at load time (exit 2).

A model's key in `models` names `cache/requests/<model>/` and `cache/sent/<model>/`;
role, scenario, filter, tactic and persona names are looked up or matched against a
pattern. Whatever a config says, a bad name is refused with exit 2 naming the field,
before the build directory is created, and nothing appears anywhere outside it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from config_edits import every_role
from synth.cli import app
from synth.config import load_config
from synth.errors import BadInput

runner = CliRunner()

# "ABS" becomes an absolute path inside the test's sentinel directory.
BAD_NAMES = ["../../evil", "../../../../evil", "a/../../b", "ABS", "a\x00b", "a\nb", "evil\n", "..", ".", "a/b", ""]
BAD_IDS = ["up-2", "up-4", "down-then-up", "absolute", "nul", "newline", "trailing-newline", "dotdot", "dot",
           "nested", "empty"]


@pytest.fixture()
def sandbox(tmp_path: Path, repo_root: Path, monkeypatch) -> dict[str, Path]:
    """A config dir, a private templates/seeds copy, an empty sentinel dir as the working directory."""
    cfg, sentinel = tmp_path / "cfg", tmp_path / "sentinel"
    cfg.mkdir()
    sentinel.mkdir()
    shutil.copytree(repo_root / "templates", tmp_path / "templates")
    shutil.copytree(repo_root / "seeds", tmp_path / "seeds")
    monkeypatch.chdir(sentinel)  # a relative path that escaped would land here
    return {"root": tmp_path, "cfg": cfg, "sentinel": sentinel, "out": cfg / "build" / "out"}


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _resolve(name: str, sandbox: dict[str, Path]) -> str:
    return str(sandbox["sentinel"] / "abs") if name == "ABS" else name


def _build(sandbox: dict[str, Path], change, repo_root: Path):
    """`synth build --dry-run` of the demo config changed by `change`; checks nothing was written."""
    data = yaml.safe_load((repo_root / "pipelines/demo.yaml").read_text(encoding="utf-8"))
    data["templates"], data["seeds"] = "../templates", "../seeds"
    change(data)
    config = sandbox["cfg"] / "pipeline.yaml"
    config.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    before = _tree(sandbox["root"])
    result = runner.invoke(app, ["build", str(config), "--out", str(sandbox["out"]), "--dry-run"])
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    assert not sandbox["out"].exists()  # refused before the build directory was made
    assert _tree(sandbox["root"]) == before  # and nothing appeared anywhere else
    assert not any(sandbox["sentinel"].iterdir())
    return result.output


def _shown(name: str) -> str:
    """How an error message shows a name (repr when it holds a newline or NUL)."""
    return name if name.isprintable() else repr(name)


@pytest.mark.parametrize("name", BAD_NAMES, ids=BAD_IDS)
def test_model_key_that_is_not_one_path_component_exits_2(sandbox, repo_root: Path, name: str):
    name = _resolve(name, sandbox)

    def rename_model(data):
        data["models"] = {name: data["models"]["gemma-270m"]}
        for role in every_role(data):
            role["model"] = name

    output = _build(sandbox, rename_model, repo_root)
    assert "models." in output and _shown(name) in output, output
    assert "should match pattern" in output


@pytest.mark.parametrize("where", ["generator", "responders", "judges"])
@pytest.mark.parametrize("name", ["../../evil", "a/../../b", "ABS", "a\x00b", "a\nb", "evil\n"],
                         ids=["up-2", "down-then-up", "absolute", "nul", "newline", "trailing-newline"])
def test_role_name_exits_2(sandbox, repo_root: Path, where: str, name: str):
    name = _resolve(name, sandbox)

    def rename_role(data):
        role = data["roles"][where] if where == "generator" else data["roles"][where][-1]
        role["name"] = name

    output = _build(sandbox, rename_role, repo_root)
    field = "roles.generator.name" if where == "generator" else f"roles.{where}.1.name"
    assert field in output, output


@pytest.mark.parametrize("name", ["../../evil", "ABS", "a\x00b", "a\nb", "hate_abuse/../../evil"],
                         ids=["up-2", "absolute", "nul", "newline", "known-then-up"])
def test_scenario_name_in_config_exits_2(sandbox, repo_root: Path, name: str):
    name = _resolve(name, sandbox)
    output = _build(sandbox, lambda d: d.update(scenarios=["hate_abuse", name]), repo_root)
    assert "scenarios: unknown scenario id" in output, output


@pytest.mark.parametrize("name", ["../../evil", "ABS", "a\x00b", "evil\n"], ids=["up-2", "absolute", "nul", "newline"])
def test_scenario_id_in_template_exits_2(sandbox, repo_root: Path, name: str):
    """A template's id names its seed pool file (seeds/scenarios/<id>.yaml): it must match the id pattern."""
    name = _resolve(name, sandbox)
    path = sandbox["root"] / "templates/hate_abuse.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["id"] = name
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    output = _build(sandbox, lambda d: None, repo_root)
    assert "hate_abuse.yaml" in output and "\n  id: String should match pattern" in output, output


def test_scenario_template_has_no_name_field(sandbox, repo_root: Path):
    path = sandbox["root"] / "templates/hate_abuse.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["name"] = "../../evil"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    output = _build(sandbox, lambda d: None, repo_root)
    assert "hate_abuse.yaml" in output and "name: Extra inputs are not permitted" in output, output


@pytest.mark.parametrize("which", ["questions", "pairs"])
@pytest.mark.parametrize("name", ["../../evil", "ABS", "a\x00b"], ids=["up-2", "absolute", "nul"])
def test_filter_name_exits_2(sandbox, repo_root: Path, which: str, name: str):
    name = _resolve(name, sandbox)
    output = _build(sandbox, lambda d: d["filters"][which].insert(0, {"name": name}), repo_root)
    assert f"filters.{which}[0].name: unknown filter" in output, output


def test_tactic_and_persona_names_exit_2(sandbox, repo_root: Path):
    output = _build(sandbox, lambda d: d["augment"].update(tactics=["../../evil"]), repo_root)
    assert "augment tactic '../../evil'" in output, output
    output = _build(sandbox, lambda d: d["roles"]["responders"][0].update(persona="../../evil"), repo_root)
    assert "responder persona '../../evil'" in output, output


@pytest.mark.parametrize("field", ["templates", "seeds"])
def test_templates_and_seeds_dirs_that_do_not_exist_exit_2(sandbox, repo_root: Path, field: str):
    """templates:/seeds: are read-only inputs relative to the config (`../templates` is the default)."""
    output = _build(sandbox, lambda d: d.update({field: "../../../evil"}), repo_root)
    assert "evil: directory not found" in output, output


def test_shipped_pipelines_model_keys_are_valid(repo_root: Path):
    for path in sorted((repo_root / "pipelines").glob("*.yaml")):
        config, _, _ = load_config(path)
        assert config.models, path


def test_model_key_with_dots_and_dashes_is_fine(sandbox, repo_root: Path):
    data = yaml.safe_load((repo_root / "pipelines/demo.yaml").read_text(encoding="utf-8"))
    data["models"] = {"Qwen2.5-7B_instruct": data["models"]["gemma-270m"]}
    for role in every_role(data):
        role["model"] = "Qwen2.5-7B_instruct"
    path = sandbox["cfg"] / "ok.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    config, _, _ = load_config(path)
    assert list(config.models) == ["Qwen2.5-7B_instruct"]


# -- inside(): the runtime guard behind the config check ---------------------------------


@pytest.mark.parametrize("parts", [("../../evil",), ("a/../../b",), ("/etc",), ("..",), ("sent", "../../x")])
def test_inside_refuses_escapes(tmp_path: Path, parts):
    from synth.storage import inside

    with pytest.raises(BadInput, match="would escape"):
        inside(tmp_path / "cache" / "requests", *parts)


def test_inside_refuses_a_nul_byte_as_bad_input(tmp_path: Path):
    from synth.storage import inside

    with pytest.raises(BadInput, match="not usable"):
        inside(tmp_path / "cache", "a\x00b")


def test_inside_keeps_names_below_base(tmp_path: Path):
    from synth.storage import inside

    base = tmp_path / "cache"
    assert inside(base, "sent", "gemma-270m") == (base / "sent" / "gemma-270m").resolve()
