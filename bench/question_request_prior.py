"""The request as evidence: what `judge_questions.request_prior` does to a question probe's topics.

    .venv/bin/python bench/question_request_prior.py --build builds/demo \
        [--config pipelines/demo-question-probe.yaml] [--priors 0.2,0.4,0.6]

A question probe's topic head places a question in one of the catalog's subcategories from its
pooled state alone. A question in a build was *asked for* a subcategory, and a writer is on topic
some share of the time: with that share as a prior (Bayes' rule, synth.probe.QuestionProbe.topics)
the judged subcategory is the most likely one given the state *and* the request. This script:

1. reads the pooled states of three sets of questions through the build's engine (one model load):
   the build's own questions (`<build>/stages/dedup_questions/rows`), the project's question gold
   (seeds/gold/question_gold.jsonl) and, when `../shared/reference/` is there, `--per-category`
   public harmful questions from each of XSafety's seven typical-safety categories (bench/question_judge_reference.py's
   mapping to synth's scenarios; read from there, never copied);
2. **estimates the prior on the build's own questions, with no label**: the share w for which the
   mean posterior probability of the requested subcategory equals w (the fixed point of EM on a
   two-part mixture: on topic with probability w, else any other class evenly);
3. reports, with no prior and at each prior (the estimate and `--priors`):
   - gold, the request the true subcategory: the share judged on it (the head alone: eval-judges'
     subcategory accuracy);
   - gold, the request a wrong subcategory, in the same scenario and in another: the share of
     false acceptances (the judged subcategory is the wrong request);
   - public, the request a subcategory of another scenario than the question's mapped one: the
     share of false acceptances; and a subcategory of the mapped scenario: the share accepted;
   - the build: the share of questions judged on their requested subcategory, and the number of
     subcategories with a question judged harmful (the probe's harm head above the config's
     threshold) and on topic: an upper bound of the content coverage a build could report, before
     responders, judges, filters and balance.
Step 2's estimate comes from the probe's own probabilities and is likely overconfident (0.71 on a
demo build, where a hand count finds about one harmful-kind question in four on topic). The demo's
0.2 was chosen on the gold instead (recall on the true request minus false acceptance of a wrong
one in the same scenario, over the estimate and `--priors`); the public figures only report it.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from question_judge_reference import REFERENCE, SCENARIO_OF  # noqa: E402


def estimate_prior(probe, states: list[np.ndarray], requested: list[str], iterations: int = 200) -> float:
    """The fixed point w = mean over questions of P(requested | state, w) (see the module)."""
    w = 0.5
    for _ in range(iterations):
        new = float(np.mean([probe.topics(v, r, w)[probe.classes.index(r)] for v, r in zip(states, requested)]))
        if abs(new - w) < 1e-6:
            break
        w = new
    return w


def accepts(probe, state: np.ndarray, request: str, prior: float | None) -> bool:
    """Whether the judged class, given `request` at `prior`, is the request."""
    return probe.topic(state, request, prior)[0] == request


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--build", required=True, help="a build directory with stages/dedup_questions")
    parser.add_argument("--config", default=str(ROOT / "pipelines" / "demo-question-probe.yaml"))
    parser.add_argument("--gold", default=str(ROOT / "seeds" / "gold" / "question_gold.jsonl"))
    parser.add_argument("--priors", default="0.2,0.4,0.6")
    parser.add_argument("--per-category", type=int, default=50, help="public questions per mapped category")
    parser.add_argument("--seed", type=int, default=20261205)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from synth.eval_questions import read_question_gold
    from synth.prepare import prepare
    from synth.probe_train import pooled_states
    from synth.stages.question_judge import question_judge_requests, question_probes

    config, catalog = prepare(Path(args.config))
    role = next((r for r in config.roles.question_judges if r.probe is not None), None)
    if role is None:
        print(f"{args.config}: no question judge is a probe", file=sys.stderr)
        return 2
    probe = question_probes(config)[role.name]
    scenario_of = catalog.scenario_of

    built = pd.read_parquet(Path(args.build) / "stages" / "dedup_questions" / "rows")
    gold = read_question_gold(Path(args.gold), catalog)
    public = []
    xsafety = REFERENCE / "xsafety_zh_harmful.jsonl"
    if xsafety.exists():
        by_category: dict[str, list[dict]] = {}
        for line in xsafety.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if row.get("category_name") in SCENARIO_OF:
                by_category.setdefault(row["category_name"], []).append(row)
        rng = random.Random(args.seed)
        for category in sorted(by_category):
            public += rng.sample(by_category[category], min(args.per_category, len(by_category[category])))
    rows = ([{"id": f"b\x1f{r['id']}", "question": r["question"]} for r in built.to_dict("records")]
            + [{"id": f"g\x1f{k}", "question": g["question"]} for k, g in gold.items()]
            + [{"id": f"p\x1f{r['id']}", "question": r["question"]} for r in public])
    states = pooled_states(config, catalog, role, pd.DataFrame(rows), question_judge_requests, False, {},
                           "question")

    built_rows = built.to_dict("records")
    b = [states[f"b\x1f{r['id']}"] for r in built_rows]
    b_req = [r["subcategory"] for r in built_rows]
    b_harm = np.array([probe.harm(v) > config.judge_questions.threshold for v in b])
    w_hat = estimate_prior(probe, b, b_req)
    priors = [None, round(w_hat, 3), *[float(x) for x in args.priors.split(",") if x]]

    result = {"n": {"build": len(built), "gold": len(gold), "public": len(public)},
              "estimated_prior": round(w_hat, 4), "rows": []}
    for prior in priors:
        on_true, same, other = [], [], []
        for key, g in gold.items():
            v = states[f"g\x1f{key}"]
            on_true.append(accepts(probe, v, g["subcategory"], prior))
            for sub in scenario_of:
                if sub != g["subcategory"]:
                    (same if scenario_of[sub][0] == g["scenario"] else other).append(accepts(probe, v, sub, prior))
        public_other, public_same = [], []
        for r in public:
            v, mapped = states[f"p\x1f{r['id']}"], SCENARIO_OF[r["category_name"]]
            for sub in scenario_of:
                (public_same if scenario_of[sub][0] == mapped else public_other).append(accepts(probe, v, sub, prior))
        on_topic = np.array([accepts(probe, v, req, prior) for v, req in zip(b, b_req)])
        covered = {b_req[i] for i in np.flatnonzero(on_topic & b_harm)}
        result["rows"].append({
            "prior": prior, "gold_on_true": float(np.mean(on_true)), "gold_false_same_scenario": float(np.mean(same)),
            "gold_false_other_scenario": float(np.mean(other)),
            "public_false_other_scenario": float(np.mean(public_other)) if public else None,
            "public_accept_mapped_scenario": float(np.mean(public_same)) if public else None,
            "build_on_topic": float(on_topic.mean()), "build_harmful_on_topic_subcategories": len(covered)})
    if args.json:
        print(json.dumps(result, ensure_ascii=False, indent=2))
        return 0
    print(f"questions: build {len(built)}, gold {len(gold)}, public {len(public)}; "
          f"prior estimated on the build's own questions: {w_hat:.3f}")
    print("| prior | gold: on the true request | gold: false accept, same scenario | other scenario "
          "| public: false accept, other scenario | public: accept, mapped scenario "
          "| build: on topic | build: subcategories harmful & on topic |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in result["rows"]:
        fmt = (lambda v: "n/a" if v is None else f"{v:.3f}")
        print(f"| {'none' if r['prior'] is None else r['prior']} | {fmt(r['gold_on_true'])} "
              f"| {fmt(r['gold_false_same_scenario'])} | {fmt(r['gold_false_other_scenario'])} "
              f"| {fmt(r['public_false_other_scenario'])} | {fmt(r['public_accept_mapped_scenario'])} "
              f"| {fmt(r['build_on_topic'])} | {r['build_harmful_on_topic_subcategories']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
