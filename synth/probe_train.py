"""`synth probe train`: fit a probe judge (synth.probe) on gold pairs, or a question probe on
the seed pools (`--questions`).

The judge role's model (task: embed) reads every gold pair through the judge's own prompt;
a logistic regression over the pooled hidden states is fitted and written as the probe file.
A question judge's model reads every seed-pool item as written (synth.probe.question_items).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from synth.errors import BadInput
from synth.storage import write_bytes
from synth.probe import POOLING, decode_vector, fit, item_hash, judge_prompt_fingerprint


def embed_role(config, roles, judge: str, what: str, config_path: Path):
    """The role named `judge` among `roles` and its model, which must pool (task: embed);
    a `BadInput` naming the flag otherwise."""
    role = next((r for r in roles if r.name == judge), None)
    if role is None:
        raise BadInput(f"--judge: {judge!r} is not {what} role of {config_path} "
                       f"({', '.join(r.name for r in roles) or 'none'})")
    spec = config.models[role.model]
    if spec.task != "embed":
        raise BadInput(f"--judge {judge}: its model '{role.model}' needs task: embed (pooled hidden states)")
    return role, spec


def pooled_states(config, catalog, role, rows, make_requests, dry_run: bool, kwargs: dict[str, Any],
                  what: str) -> dict[str, np.ndarray]:
    """Each row's pooled state (row id -> vector) from `role`'s task: embed model, through the
    build's engine; requests made by `make_requests(batch, catalog, role, style, seed, **kwargs)`."""
    import ray

    from synth.progress import StageProgress
    from synth.session import init_ray
    from synth.stages.base import StageContext

    init_ray()
    ctx = StageContext(config=config, catalog=catalog, dry_run=dry_run, cache_root=None).for_stage("probe_train")
    try:
        requests = ray.data.from_pandas(rows).map_batches(make_requests, batch_format="pandas", fn_kwargs={
            "catalog": catalog, "role": role, "style": ctx.prompt_style(role), "seed": config.seed, **kwargs})
        with StageProgress(ctx.stage, ctx.tally):
            answered = ctx.generate([(role, requests)]).to_pandas()
    finally:
        ctx.close()
    states = {}
    for row in answered.to_dict("records"):
        vector = decode_vector(row["text"]) if not row["error"] else None
        if vector is None:
            raise BadInput(f"probe train: no pooled state for {what} {str(row['id']).split(chr(31))[-1]!r} "
                           f"({row['error'] or 'the engine returned text, not a vector: is task: embed set?'})")
        states[row["id"]] = vector
    return states


def read_negatives(config) -> list[str]:
    """seeds/probe_negatives.yaml's `questions` (none when the file is not there); a `BadInput`
    naming the file when it is not a list of strings."""
    import yaml

    path = Path(config.seeds_dir) / "probe_negatives.yaml"
    if not path.exists():
        return []
    try:
        questions = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("questions") or []
    except (OSError, yaml.YAMLError, AttributeError) as e:
        raise BadInput(f"{path}: cannot read it ({type(e).__name__}: {e})") from None
    if not all(isinstance(q, str) and q.strip() for q in questions):
        raise BadInput(f"{path}: `questions` must be a list of non-empty strings")
    return list(questions)


def train_question_probe(config_path: Path, judge: str, out: Path, *, dry_run: bool = False) -> dict[str, Any]:
    """A question probe (synth.probe.QuestionProbe) for question judge `judge`, fitted on the seed
    pools of the config's scenarios (synth.probe.question_items) read by the role's model."""
    import pandas as pd

    from synth.prepare import prepare
    from synth.probe import QUESTION_PROBE, fit_question, question_items, question_probe_fingerprint
    from synth.stages.question_judge import question_judge_requests

    config, catalog = prepare(config_path, None, None)
    role, spec = embed_role(config, config.roles.question_judges, judge, "a question judge", config_path)
    if catalog.question_judge is None or catalog.question_judge.probe is None:
        raise BadInput("probe train --questions: templates/shared/question_judge.yaml has no `probe` form to read "
                       "the questions in")
    items = question_items(catalog, read_negatives(config))
    rows = pd.DataFrame([{"id": f"seed{i}", "question": text, "kind": "harmful" if harmful else "benign",
                          "subcategory": sub} for i, (text, harmful, sub, _) in enumerate(items)])
    started = time.monotonic()
    states = pooled_states(config, catalog, role, rows,
                           question_judge_requests, dry_run, {"top_logprobs": 0}, "seed item")
    vectors = np.vstack([states[f"seed{i}"] for i in range(len(items))])
    record = {**fit_question(vectors, [i[1] for i in items], [i[2] for i in items], [i[3] for i in items]),
              "judge": judge,
              "model": spec.model, "prompt_style": spec.prompt_style, "prompt": question_probe_fingerprint(catalog),
              "reads": "templates/shared/question_judge.yaml's probe form",
              "pooling": POOLING,
              "trained_on_source": "seed pools (seeds/scenarios/*.yaml): behaviours harmful, benign topics benign, "
                                   "each as written and as a question; seeds/probe_negatives.yaml topic other (topic head only)",
              "n": len(items), "trained_on": sorted({item_hash(item[0], "") for item in items}),
              "dry_run": dry_run, "seconds": round(time.monotonic() - started, 1),
              "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    assert record["kind"] == QUESTION_PROBE
    write_bytes(out, (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
    return {k: v for k, v in record.items() if k not in ("mean", "scale", "harm_coef", "topic_coef", "topic_intercept",
                                                          "trained_on", "classes")}


def train_probe(gold_paths: list[Path], config_path: Path, judge: str, out: Path, *,
                dry_run: bool = False) -> dict[str, Any]:
    """Read the judge role's pooled states for every gold pair and fit the probe (module docstring)."""
    from synth.prepare import prepare
    from synth.eval_judges import gold_pairs
    from synth.gold import read_judge_gold
    from synth.stages.labelling import judge_requests

    golds = {}
    for path in gold_paths:
        for row_id, row in read_judge_gold(Path(path)).items():
            golds[f"{Path(path).name}\x1f{row_id}"] = row
    config, catalog = prepare(config_path, None, None)
    role, spec = embed_role(config, config.roles.judges, judge, "a judge", config_path)
    started = time.monotonic()
    states = pooled_states(config, catalog, role, gold_pairs(golds), judge_requests, dry_run, {
        "fields": [], "top_logprobs": 0, "schema": False, "probe": True}, "gold pair")
    vectors, labels, hashes = [], [], []
    for row_id, g in golds.items():
        vectors.append(states[row_id])
        labels.append(g["label"])
        hashes.append(item_hash(g["question"], g["response"]))
    record = {**fit(np.vstack(vectors), labels), "judge": judge, "model": spec.model, "prompt_style": spec.prompt_style,
              "rubric": catalog.rubric(role.rubric).id, "judge_prompt": judge_prompt_fingerprint(catalog, role.rubric),
              "pooling": POOLING,
              "gold": [str(p) for p in gold_paths], "n": len(labels), "trained_on": sorted(set(hashes)),
              "dry_run": dry_run, "seconds": round(time.monotonic() - started, 1),
              "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_bytes(out, (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
    return {k: v for k, v in record.items() if k not in ("mean", "scale", "coef", "trained_on")}
