"""What a filter is: `Filter` (a name, `check(row)` → KEEP or `Drop(reason, to=side)`), and the
registry every subclass with a `name` joins. See `synth.filters`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(frozen=True)
class Drop:
    reason: str
    to: str | None = None  # a side output ("hard") instead of the rejects table


KEEP = None
Verdict = Drop | None

REGISTRY: dict[str, type["Filter"]] = {}
CONTROVERSIAL_TIER = "controversial"  # a Drop kept in the stream, relabelled 有争议
SIDE_OUTPUTS = ("hard", CONTROVERSIAL_TIER)  # where a filter may divert rows (besides the rejects table)


class Filter(ABC):
    name: ClassVar[str]
    # reason -> side output, for every Drop(reason, to=side) this filter may return
    diverts: dict[str, str] = {}
    # True for a filter that reads the judges' output (label, judgements, analyze). The pair
    # filters run in two passes: the others before annotate (`filter_responses`), so no judge
    # request is spent on a pair they drop, and these after it (`filter_pairs`).
    reads_labels: ClassVar[bool] = False
    # Whether a question filter also applies to every user turn of a conversation (the converse
    # stage checks each turn it writes); False for one that only a standalone question must pass.
    user_turns: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            REGISTRY[cls.name] = cls

    @abstractmethod
    def check(self, row: dict[str, Any]) -> Verdict:
        """KEEP, or Drop(reason) with a short reason such as 'too_short'."""
