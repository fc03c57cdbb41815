"""Heuristic filters: small classes whose `check` returns KEEP or Drop(reason).

A filter names itself (`name`), takes its thresholds as constructor keyword
arguments from the pipeline YAML (`filters.questions` / `filters.pairs`), and
looks at one row at a time. The filter stage applies them in the configured
order; the first Drop wins and its reason (prefixed with the filter name) goes
to the rejects table.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

from synth.errors import BadInput


@dataclass(frozen=True)
class Drop:
    reason: str


KEEP = None
Verdict = Drop | None

REGISTRY: dict[str, type["Filter"]] = {}


class Filter(ABC):
    name: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            REGISTRY[cls.name] = cls

    @abstractmethod
    def check(self, row: dict[str, Any]) -> Verdict:
        """KEEP, or Drop(reason) with a short reason such as 'too_short'."""


def build_filters(specs: list[Any], where: str) -> list[Filter]:
    """Instantiate filters from config specs (`FilterSpec`: name + params)."""
    from synth.filters import basic  # noqa: F401  (registers the built-in filters)

    filters = []
    for i, spec in enumerate(specs):
        cls = REGISTRY.get(spec.name)
        if cls is None:
            raise BadInput(f"{where}[{i}].name: unknown filter '{spec.name}' (known: {', '.join(sorted(REGISTRY))})")
        try:
            filters.append(cls(**spec.params))
        except TypeError as e:
            raise BadInput(f"{where}[{i}].params: {e}") from None
    return filters


def apply_filters(filters: list[Filter], row: dict[str, Any]) -> str:
    """The first drop reason ('' = keep), prefixed with the filter's name."""
    for f in filters:
        verdict = f.check(row)
        if verdict is not None:
            return f"{f.name}: {verdict.reason}"
    return ""
