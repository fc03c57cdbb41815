"""`synth probe train`: fit a probe judge (synth.probe) on gold pairs.

The judge role's model (task: embed) reads every gold pair through the judge's own prompt;
a logistic regression over the pooled hidden states is fitted and written as the probe file.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from synth.errors import BadInput
from synth.probe import decode_vector, fit, item_hash, judge_prompt_fingerprint


def train_probe(gold_paths: list[Path], config_path: Path, judge: str, out: Path, *,
                dry_run: bool = False) -> dict[str, Any]:
    """Read the judge role's pooled states for every gold pair and fit the probe (module docstring)."""
    import ray

    from synth.prepare import prepare
    from synth.session import init_ray
    from synth.eval_judges import gold_pairs
    from synth.gold import read_judge_gold
    from synth.stages.base import StageContext
    from synth.stages.labelling import judge_requests

    golds = {}
    for path in gold_paths:
        for row_id, row in read_judge_gold(Path(path)).items():
            golds[f"{Path(path).name}\x1f{row_id}"] = row
    config, catalog = prepare(config_path, None, None)
    role = next((r for r in config.roles.judges if r.name == judge), None)
    if role is None:
        raise BadInput(f"--judge: {judge!r} is not a judge role of {config_path} "
                       f"({', '.join(r.name for r in config.roles.judges)})")
    spec = config.models[role.model]
    if spec.task != "embed":
        raise BadInput(f"--judge {judge}: its model '{role.model}' needs task: embed (pooled hidden states)")
    init_ray()
    ctx = StageContext(config=config, catalog=catalog, dry_run=dry_run, cache_root=None).for_stage("probe_train")
    started = time.monotonic()
    try:
        requests = ray.data.from_pandas(gold_pairs(golds)).map_batches(judge_requests, batch_format="pandas", fn_kwargs={
            "catalog": catalog, "role": role, "style": ctx.prompt_style(role), "seed": config.seed, "fields": [],
            "top_logprobs": 0, "schema": False})
        from synth.progress import StageProgress

        with StageProgress(ctx.stage, ctx.tally):
            answered = ctx.generate([(role, requests)]).to_pandas()
    finally:
        ctx.close()
    vectors, labels, hashes = [], [], []
    by_id = {row["id"]: row for row in answered.to_dict("records")}
    for row_id, g in golds.items():
        row = by_id[row_id]
        vector = decode_vector(row["text"]) if not row["error"] else None
        if vector is None:
            raise BadInput(f"probe train: no pooled state for gold pair {row_id.split(chr(31))[-1]!r} "
                           f"({row['error'] or 'the engine returned text, not a vector: is task: embed set?'})")
        vectors.append(vector)
        labels.append(g["label"])
        hashes.append(item_hash(g["question"], g["response"]))
    record = {**fit(np.vstack(vectors), labels), "judge": judge, "model": spec.model, "prompt_style": spec.prompt_style,
              "rubric": catalog.rubric(role.rubric).id, "judge_prompt": judge_prompt_fingerprint(catalog, role.rubric),
              "pooling": "mean of the last hidden states (vLLM pooling runner, convert: embed)",
              "gold": [str(p) for p in gold_paths], "n": len(labels), "trained_on": sorted(set(hashes)),
              "dry_run": dry_run, "seconds": round(time.monotonic() - started, 1),
              "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(out)
    return {k: v for k, v in record.items() if k not in ("mean", "scale", "coef", "trained_on")}
