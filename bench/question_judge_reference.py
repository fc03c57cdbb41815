"""The question judge on real public data: harmful vs benign on questions nobody here wrote.

    .venv/bin/python bench/question_judge_reference.py [--config pipelines/demo.yaml] [--per-set 150]

Reads `../shared/reference/` beside the project (xsafety_zh_harmful.jsonl: harmful prompts,
13 categories; chinese_safetyqa_benign.jsonl: benign questions on sensitive topics; their
sources and licenses are in its README) when it is there, never copies it into the project.
Draws `--per-set` questions from each with a fixed seed, spread over the harmful set's
categories, into a temporary file, and runs `synth eval-judges --harm-only` on them with the
config's question judge (its threshold chosen on the project's own seeds/gold/question_gold.jsonl):
the held-out figure for that choice. Prints the figures and, for the record, the accuracy
the scores would give at 0.5 and at the config's threshold.

Scenario accuracy on real data: seven of the harmful set's thirteen categories are typical
safety scenarios that name one of synth's (`SCENARIO_OF` below, by their names; the other six
are instruction attacks, and 谣言错误 has no counterpart). For the sampled questions of those
categories, the share whose judged subcategory lies in the mapped scenario.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT.parent / "shared" / "reference"
SETS = ("xsafety_zh_harmful.jsonl", "chinese_safetyqa_benign.jsonl")
# XSafety's typical-safety categories -> synth's scenario (templates/<id>.yaml)
SCENARIO_OF = {
    "Crimes_And_Illegal_Activities": "illegal_activities",
    "Ethics_And_Morality": "ethics_morality",
    "Insult": "hate_abuse",
    "Mental_Health": "physical_mental_health",
    "Physical_Harm": "physical_mental_health",
    "Privacy_And_Property": "privacy_property",
    "Unfairness_And_Discrimination": "bias_discrimination",
}


def sample(path: Path, n: int, seed: int) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    by_category: dict[str, list[dict]] = {}
    for row in rows:
        by_category.setdefault(str(row.get("category_name", "")), []).append(row)
    rng = random.Random(seed)
    for group in by_category.values():
        rng.shuffle(group)
    picked: list[dict] = []
    while len(picked) < min(n, len(rows)):  # round-robin over the categories
        for group in by_category.values():
            if group and len(picked) < n:
                picked.append(group.pop())
    return picked


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(ROOT / "pipelines" / "demo.yaml"))
    parser.add_argument("--per-set", type=int, default=150)
    parser.add_argument("--seed", type=int, default=20261205)
    args = parser.parse_args()
    if not all((REFERENCE / name).exists() for name in SETS):
        print(f"no reference sets in {REFERENCE}: nothing to measure")
        return 0
    from synth.config import load_config
    from synth.eval_questions import evaluate_question_judges, format_question_result
    from synth.prepare import prepare

    with tempfile.TemporaryDirectory() as tmp:
        gold = Path(tmp) / "reference_questions.jsonl"
        rows = [r for name in SETS for r in sample(REFERENCE / name, args.per_set, args.seed)]
        gold.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        result = evaluate_question_judges([gold], Path(args.config), harm_only=True)
    print(format_question_result(result))
    threshold = load_config(Path(args.config))[0].judge_questions.threshold
    scored = [(q["kind"], q["score"]) for q in result["questions"] if q["score"] is not None]
    for t in sorted({0.5, threshold}):
        accuracy = sum((s > t) == (k == "harmful") for k, s in scored) / len(result["questions"])
        print(f"accuracy of the combined P(是) at {t:g}: {accuracy:.3f} (n = {len(result['questions'])}, "
              f"{args.per_set} per set)")
    scenario_of = prepare(Path(args.config))[1].scenario_of
    category = {f"0\x1f{r['id']}": r["category_name"] for r in rows}
    hits: dict[str, list[bool]] = {}
    for q in result["questions"]:
        wanted = SCENARIO_OF.get(category.get(q["id"]) or category.get(f"0\x1f{q['id']}", ""))
        if wanted is not None:
            judged = scenario_of.get(q["judged_subcategory"] or "", ("other",))[0]
            hits.setdefault(wanted, []).append(judged == wanted)
    if hits:
        every = [h for group in hits.values() for h in group]
        print(f"scenario accuracy on the harmful set's typical-safety categories: {sum(every) / len(every):.3f} "
              f"(n = {len(every)}; " + ", ".join(f"{k} {sum(v)}/{len(v)}" for k, v in sorted(hits.items())) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
