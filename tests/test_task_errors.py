"""Errors raised inside Ray tasks reach the CLI as themselves: bad input exits 2 with its message, no traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from synth.errors import BadInput, BuildFailed, unwrap

MESSAGE = "seeds/scenarios/x.yaml: behaviors.sub_b[3]: cannot be used\n(second line of the message)"


def test_unwrap_finds_bad_input_raised_in_a_map_batches_task(ray_session):
    ray = ray_session

    def _raise_bad_input(batch):  # local, so it pickles by value (workers cannot import this test module)
        raise BadInput(MESSAGE)

    with pytest.raises(Exception) as info:
        ray.data.from_items([{"a": 1}, {"a": 2}]).map_batches(_raise_bad_input).materialize()
    wrapped = info.value
    assert isinstance(wrapped, ray.exceptions.RayTaskError)  # what Ray Data hands the driver
    assert not isinstance(wrapped, BadInput)
    error = unwrap(wrapped)
    assert type(error) is BadInput
    assert str(error) == MESSAGE and error.exit_code == 2
    assert "ray::" not in str(error) and "Traceback" not in str(error)


def test_unwrap_takes_the_cause_of_a_remote_task_error_not_rays_text(ray_session):
    ray = ray_session

    @ray.remote(max_retries=0)
    def fail():
        raise BuildFailed("engine for model x died")

    with pytest.raises(BuildFailed) as info:  # Ray's dual class RayTaskError(BuildFailed) ...
        ray.get(fail.remote())
    assert "ray::" in str(info.value)  # ... whose text is Ray's traceback
    error = unwrap(info.value)
    assert type(error) is BuildFailed and str(error) == "engine for model x died"


def test_unwrap_leaves_other_errors_alone():
    plain = BadInput("config.yaml: seed: not an integer")
    assert unwrap(plain) is plain
    try:
        try:
            raise BadInput("x.yaml: field")
        except BadInput as e:
            raise BuildFailed("stage y failed") from e
    except BuildFailed as e:
        assert str(unwrap(e)) == "stage y failed"
    try:
        try:
            raise BadInput("x.yaml: field")
        except BadInput:
            {}["missing"]  # a bug while handling bad input is a bug
    except KeyError as e:
        assert unwrap(e) is None
    try:
        raise RuntimeError("wrapped") from BadInput("x.yaml: field")
    except RuntimeError as e:
        assert str(unwrap(e)) == "x.yaml: field"
    assert unwrap(ValueError("no")) is None


def test_bad_template_found_inside_the_queries_task_exits_2_naming_it(ray_session, repo_root: Path, tmp_path: Path):
    """A typo in a template branch the load-time sample render does not take (it renders the
    first subcategory) is only found when the queries stage renders the other subcategories,
    inside a Ray task."""
    shutil.copytree(repo_root / "templates", tmp_path / "templates")
    shutil.copytree(repo_root / "seeds", tmp_path / "seeds")
    path = tmp_path / "templates/hate_abuse.yaml"
    template = yaml.safe_load(path.read_text(encoding="utf-8"))
    second = template["subcategories"][1]["id"]
    branch = f'{{% if subcategory.id == "{second}" %}}（{{{{ subcategory.nmae_zh }}}}）{{% endif %}}'
    template["harmful"]["chat"]["user"] += branch
    template["harmful"]["completion"] += branch
    path.write_text(yaml.safe_dump(template, allow_unicode=True), encoding="utf-8")

    config = yaml.safe_load((repo_root / "pipelines/demo.yaml").read_text(encoding="utf-8"))
    config.update(templates=str(tmp_path / "templates"), seeds=str(tmp_path / "seeds"), scenarios=["hate_abuse"])
    config_path = tmp_path / "pipeline.yaml"
    config_path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")

    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}  # reuse the test's Ray
    env.pop("SYNTH_FAULT", None)
    validate = subprocess.run([sys.executable, "-m", "synth.cli", "templates", "validate", str(tmp_path / "templates"),
                               "--seeds", str(tmp_path / "seeds")], env=env, capture_output=True, text=True, timeout=120)
    assert validate.returncode == 0, validate.stderr  # the branch is not taken at load time

    result = subprocess.run([sys.executable, "-m", "synth.cli", "build", str(config_path), "--out", str(tmp_path / "out"),
                             "--dry-run"], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "error: hate_abuse.harmful." in result.stderr, result.stderr[-3000:]
    assert "'dict object' has no attribute 'nmae_zh'" in result.stderr, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "ray::" not in result.stderr, result.stderr[-3000:]
    assert "UserCodeException" not in result.stderr, result.stderr[-3000:]
