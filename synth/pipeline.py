"""The pipeline as a value: its stages, the edges between them, checked as a graph when built.

A `Pipeline` is a list of stages and, for each, the stage whose output it reads (its
input). By default each stage reads the one before it, so inserting a stage is one line in
the list; `inputs={"b": "a"}` gives a stage another input. Building one checks, naming the
stage at fault:

- names are unique, and exactly the first stage has no input;
- every input names a stage of the pipeline, and the edges have no cycle (the stages run in
  an order where each comes after its input: the list's order where it allows);
- every column a stage declares it reads (`Stage.reads`) is written upstream: by its input
  when that declares its `columns`, or, through stages that pass their input's columns on,
  by the nearest one upstream that does.

The runner (`synth.build`), `synth plan`, the exports and the report ask the pipeline which
stage is the last (`final`), which writes a column (`writer_of`), what feeds a stage
(`input_of`), instead of naming stages.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from synth.errors import BadInput
from synth.stages.base import Stage


class PipelineError(BadInput):
    """A pipeline that is not a valid graph (exit 2, naming the stage)."""


class Pipeline:
    def __init__(self, stages: Sequence[Stage], inputs: dict[str, str | None] | None = None) -> None:
        names = [s.name for s in stages]
        if not stages:
            raise PipelineError("a pipeline needs at least one stage")
        seen: set[str] = set()
        for name in names:
            if not name:
                raise PipelineError("a stage has no name")
            if name in seen:
                raise PipelineError(f"stage {name!r} appears twice in the pipeline")
            seen.add(name)
        inputs = dict(inputs or {})
        unknown = [k for k in inputs if k not in seen]
        if unknown:
            raise PipelineError(f"inputs given for {unknown}, which are not stages of the pipeline")
        edges: dict[str, str | None] = {}
        for i, name in enumerate(names):
            edges[name] = inputs[name] if name in inputs else (names[i - 1] if i else None)
        for name, source in edges.items():
            if source is not None and source not in seen:
                raise PipelineError(f"stage {name!r} reads {source!r}, which is not a stage of the pipeline "
                                    f"({', '.join(names)})")
        roots = [n for n, source in edges.items() if source is None]
        if len(roots) != 1:
            raise PipelineError(f"exactly one stage may have no input; these have none: {roots}")
        self._edges = edges
        self._by_name = {s.name: s for s in stages}
        self.stages: tuple[Stage, ...] = tuple(self._by_name[n] for n in self._order(names))
        self._check_columns()

    def _order(self, names: list[str]) -> list[str]:
        """The stages in an order where each follows its input (stable: the list's order where it
        allows); a cycle fails, naming its stages."""
        order: list[str] = []
        placed: set[str] = set()
        for name in names:
            chain: list[str] = []
            current: str | None = name
            while current is not None and current not in placed:
                if current in chain:
                    cycle = chain[chain.index(current):] + [current]
                    raise PipelineError(f"the stages' inputs form a cycle: {' → '.join(reversed(cycle))}")
                chain.append(current)
                current = self._edges[current]
            for stage in reversed(chain):
                order.append(stage)
                placed.add(stage)
        return order

    def _check_columns(self) -> None:
        written: dict[str, set[str] | None] = {}  # stage → the columns of its rows (None: not declared)
        for stage in self.stages:
            source = self._edges[stage.name]
            available = written[source] if source is not None else None
            missing = [c for c in stage.reads if available is not None and c not in available]
            if missing:
                raise PipelineError(f"stage {stage.name!r} reads columns {missing}, which no stage upstream of it "
                                    f"writes (its input is {source!r})")
            written[stage.name] = set(stage.columns) if stage.columns is not None else available

    # --- what the runner, plan, exports and report ask --------------------------------

    def __iter__(self) -> Iterator[Stage]:
        return iter(self.stages)

    def __len__(self) -> int:
        return len(self.stages)

    def __getitem__(self, name: str) -> Stage:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no stage {name!r} in the pipeline ({', '.join(self.names)})") from None

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.stages]

    @property
    def final(self) -> Stage:
        """The stage whose rows the exports read: the last one."""
        return self.stages[-1]

    def input_of(self, name: str) -> str | None:
        return self._edges[name]

    def after(self, name: str) -> tuple[Stage, ...]:
        """The stages from `name` on, in run order."""
        return self.stages[self.names.index(name):]

    def writer_of(self, column: str) -> Stage:
        """The last stage that declares `column` among the columns it writes."""
        for stage in reversed(self.stages):
            if stage.columns is not None and column in stage.columns:
                return stage
        raise KeyError(f"no stage of the pipeline writes column {column!r}")


def _shipped() -> Pipeline:
    from synth.stages.dialogue import Converse
    from synth.stages.cleaning import (Decontaminate, DedupPairs, DedupQuestions, FilterPairs, FilterQuestions,
                                       FilterResponses)
    from synth.stages.generation import Augment, Elements, Obfuscate, Queries
    from synth.stages.labelling import Annotate, Respond
    from synth.stages.question_judge import JudgeQuestions

    return Pipeline([
        Elements(), Queries(), Augment(), FilterQuestions(), DedupQuestions(), JudgeQuestions(), Obfuscate(),
        Converse(), Respond(), FilterResponses(), Annotate(), FilterPairs(), DedupPairs(), Decontaminate(),
    ])


# synth's pipeline: elements → queries → … → judge_questions → … → decontaminate, each stage reading the one before.
PIPELINE = _shipped()
