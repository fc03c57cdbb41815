"""Heuristic filters: small classes whose `check` returns KEEP or Drop(reason).

A filter names itself (`name`), takes its thresholds as constructor keyword
arguments from the pipeline YAML (`filters.questions` / `filters.pairs`), and
looks at one row at a time. The filter stage applies them in the configured
order; the first Drop wins and its reason (prefixed with the filter name) goes
to the rejects table.

The pair filters that read the judges' output (`reads_labels`) run after annotate, the
others before it, each group in its configured order (`synth/stages/cleaning.py`).

A Drop may name a side output instead of the rejects table: `Drop(reason,
to="hard")` sends the row to the hard pool (`<stage>/hard/`, merged into
`<out>/hard/` by the export, reason kept). `Drop(reason, to="controversial")`
keeps the row in the stream with label 有争议 and `controversy` = the reason (the
controversial tier; only for the filters that read labels). A filter declares up front, in
`self.diverts`, every reason it may send elsewhere; the filter stage's
`side_outputs` is the resulting `{"<filter>: <reason>": side}` map, which the runner
uses to write those rows to their side output.

The filters and their defaults are described, with the measurements behind
the thresholds, in docs/filters.md.
"""

from __future__ import annotations

from typing import Any

from synth.errors import BadInput, BuildFailed


from synth.filters.base import (  # re-exported: the package's API
    CONTROVERSIAL_TIER, KEEP, REGISTRY, SIDE_OUTPUTS, Drop, Filter, Verdict,
)


def _register_builtin() -> None:
    from synth.filters import basic, labels, language, leakage, questions, repetition, truncation  # noqa: F401


def build_filters(specs: list[Any], where: str) -> list[Filter]:
    """Instantiate filters from config specs (`FilterSpec`: name + params)."""
    _register_builtin()
    filters = []
    for i, spec in enumerate(specs):
        cls = REGISTRY.get(spec.name)
        if cls is None:
            raise BadInput(f"{where}[{i}].name: unknown filter '{spec.name}' (known: {', '.join(sorted(REGISTRY))})")
        try:
            f = cls(**spec.params)
        except (TypeError, ValueError) as e:
            raise BadInput(f"{where}[{i}].params: {e}") from None
        for side in f.diverts.values():
            if side not in SIDE_OUTPUTS:
                raise BadInput(f"{where}[{i}].params: side output '{side}' (known: {', '.join(SIDE_OUTPUTS)})")
            if side == CONTROVERSIAL_TIER and not f.reads_labels:
                raise BadInput(f"{where}[{i}].params: only a filter that reads the judges' labels can send rows "
                               f"to the {CONTROVERSIAL_TIER} tier")
        filters.append(f)
    return filters


def reads_labels(name: str) -> bool:
    """Whether the filter registered as `name` reads the judges' output (see `Filter.reads_labels`)."""
    _register_builtin()
    cls = REGISTRY.get(name)
    return bool(cls and cls.reads_labels)


def user_turn_filters(specs: list[Any]) -> list[Filter]:
    """The question filters (`filters.questions`) a conversation's user turns must pass too
    (`Filter.user_turns`)."""
    return [f for f in build_filters(specs, "filters.questions") if f.user_turns]


def reason_of(f: Filter, reason: str) -> str:
    return f"{f.name}: {reason}"


def diversions(filters: list[Filter]) -> dict[str, str]:
    """{full reason: side output} for every reason the filters may divert (the stage's `diverted`
    is this without the controversial tier, whose rows stay in the stream)."""
    return {reason_of(f, r): side for f in filters for r, side in f.diverts.items()}


def apply_filters(filters: list[Filter], row: dict[str, Any]) -> str:
    """The first drop reason ('' = keep), prefixed with the filter's name."""
    for f in filters:
        verdict = f.check(row)
        if verdict is not None:
            if f.diverts.get(verdict.reason) != verdict.to:
                raise BuildFailed(
                    f"filter {f.name}: Drop({verdict.reason!r}, to={verdict.to!r}) does not match its declared "
                    f"diversions {f.diverts} (bug in the filter)"
                )
            return reason_of(f, verdict.reason)
    return ""


def explain(filters: list[Filter], row: dict[str, Any]) -> list[tuple[str, Verdict]]:
    """Every filter's verdict on one row (not only the first drop): for debugging thresholds."""
    return [(f.name, f.check(row)) for f in filters]
