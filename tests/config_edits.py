"""Edits tests make to a pipeline config read as YAML (a dict), before they write it back."""

from __future__ import annotations

from typing import Any


def every_role(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Every role of the config's `roles`: the generator, the responders, the judges, the
    question judges and the user-turn writer, where they are set (pipelines/demo.yaml has all)."""
    roles = data["roles"]
    single = [roles[name] for name in ("generator", "user_turn_writer") if roles.get(name)]
    return [*single, *roles.get("responders", []), *roles.get("judges", []), *roles.get("question_judges", [])]
