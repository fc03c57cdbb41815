"""In-context examples for the generative judges (config `annotate.examples`).

A judge request may carry k labelled examples drawn from a gold-format JSONL file (the
fields of `synth eval-judges`' gold: id, question, response, label, category_name,
sub_category_name). Each request gets its own draw, fixed by the build's seed and the pair's
id (a rebuild asks the same), and never the pair's own question:

- the pair's scenario first (an example whose category_name is the pair's scenario name or
  id), then the others;
- with k >= 2, both labels: the first example of each label in that order, then the rest;
- only the question, the answer and the verdict are shown, never an analysis (nothing for
  the judge to copy), each text cut to `max_chars`.

Probe judges read the prompt they were trained on and get no examples. `synth eval-judges`
refuses a gold pair that is also an example (`check_no_overlap`): it would be measured on
its own answer key.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synth.errors import BadInput


@dataclass(frozen=True)
class Examples:
    path: str
    sha256: str  # of the file's bytes: a new examples file is a new judge prompt
    rows: tuple[dict[str, str], ...]  # question, response (stripped), label, category_name, id; in file order


def read_examples(path: Path, where: str) -> Examples:
    """The examples file; a missing or malformed file is a `BadInput` naming it and the line."""
    from synth.gold import read_judge_gold

    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise BadInput(f"{where}: cannot read the examples file {path} ({e.strerror or e})") from None
    try:
        gold = read_judge_gold(Path(path))
    except BadInput as e:
        raise BadInput(f"{where}: {e}") from None
    rows = tuple({"id": row_id, "question": g["question"].strip(), "response": g["response"].strip(),
                  "label": g["label"], "category_name": g["category_name"]} for row_id, g in gold.items())
    return Examples(str(path), hashlib.sha256(raw).hexdigest()[:16], rows)


def _rank(seed: int, pair_id: str, example_id: str) -> str:
    return hashlib.sha256(f"{seed}\x1f{pair_id}\x1f{example_id}".encode()).hexdigest()


def pick(examples: Examples, pair: dict[str, Any], k: int, seed: int, max_chars: int) -> list[dict[str, str]]:
    """The k examples one judge request shows for `pair` (see the module docstring)."""
    scenario = {str(pair.get("scenario") or ""), str(pair.get("scenario_name") or "")} - {""}
    own_question, pair_id = str(pair["question"]).strip(), str(pair["id"])
    candidates = [e for e in examples.rows if e["question"] != own_question]  # never the pair's own question
    candidates.sort(key=lambda e: (e["category_name"] not in scenario, _rank(seed, pair_id, e["id"])))
    chosen: list[dict[str, str]] = []
    if k >= 2:  # the first of each label, in ranked order
        for label in sorted({e["label"] for e in candidates}):
            first = next(e for e in candidates if e["label"] == label)
            chosen.append(first)
        chosen.sort(key=candidates.index)
        chosen = chosen[:k]
    chosen += [e for e in candidates if e not in chosen][: k - len(chosen)]
    return [{"question": _cut(e["question"], max_chars), "response": _cut(e["response"], max_chars),
             "label": e["label"]} for e in chosen]


def _cut(text: str, max_chars: int) -> str:
    return text if len(text) <= max_chars else text[:max_chars] + "……"


def check_no_overlap(gold: dict[str, dict[str, Any]], gold_path: Path, config) -> None:
    """A gold pair that is also one of the config's examples: a `BadInput` naming both."""
    spec = config.annotate.examples
    if spec is None:
        return
    examples = read_examples(spec.path, "annotate.examples")
    shown = {e["question"]: e["id"] for e in examples.rows}
    for row_id, g in gold.items():
        if g["question"].strip() in shown:
            raise BadInput(f"{gold_path}: gold pair {row_id!r} is in-context example {shown[g['question'].strip()]!r} "
                           f"of {spec.path} (annotate.examples): measure the judges on pairs they are not shown")
