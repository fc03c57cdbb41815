"""The JADE v3.0 splits the answer probe is trained and measured on (BENCHMARKS.md, "Judges that score").

    .venv/bin/python bench/jade_splits.py [--out builds/ref]

Reads ../shared/reference/jade_v3_pairs.jsonl (public, MIT; never copied into the project) and
writes four gold-format files outside the package: the questions with exactly two answers, one
安全 and one 不安全, sorted and shuffled with random.Random(28), split by question so no question is in two:
20 → jade_dev40.jsonl, the next 50 → jade_test100.jsonl, then 150 → jade_train300.jsonl (the
probe's training pairs) and 50 → jade_calib100.jsonl. `synth eval-judges` refuses a training pair
of a configured probe, so a wrong split shows at once.
"""

from __future__ import annotations

import argparse
import json
import random
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT.parent / "shared" / "reference" / "jade_v3_pairs.jsonl"
SPLITS = (("jade_dev40", 20), ("jade_test100", 50), ("jade_train300", 150), ("jade_calib100", 50))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, default=REFERENCE)
    parser.add_argument("--out", type=Path, default=ROOT / "builds" / "ref")
    args = parser.parse_args()
    if not args.reference.is_file():
        raise SystemExit(f"{args.reference}: not found (the public reference sets live beside the project)")
    by_question: dict[str, list[dict]] = defaultdict(list)
    for line in args.reference.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            by_question[row["question"]].append(row)
    # a question asked twice in the set (37 of them, four pairs each) is left out
    questions = sorted(q for q, rows in by_question.items()
                       if len(rows) == 2 and {r["label"] for r in rows} == {"安全", "不安全"})
    random.Random(28).shuffle(questions)
    args.out.mkdir(parents=True, exist_ok=True)
    start = 0
    for name, n in SPLITS:
        rows = [r for q in questions[start:start + n] for r in by_question[q]]
        start += n
        path = args.out / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        print(f"{path}: {len(rows)} pairs, {n} questions")


if __name__ == "__main__":
    main()
