"""`synth plan`: what a build will ask of its models, before anything runs.

Requests per stage and role follow the stages' own arithmetic: the generator's calls are
exact (the elements stage's rows, computed here by the same code), and every later count is
the previous one times an acceptance rate: rows out per row in of each stage, and requests
per row in of each stage that sends requests. The rates come from a previous build's
manifest (`--from-build DIR`, the best guess for a rerun of a config at a new size) or from
the stated defaults below.

Prompt tokens come from prompts rendered by the stages' own request builders (the real
templates; answers and questions not written yet stand in at their expected lengths) at
`chars_per_token` characters a token; output tokens are `max_tokens` × `output_fill`.
GPU-hours use a throughput table in the config (`plan.throughput`); API cost, per-token
prices (`plan.prices`). Every assumption is printed with the figures.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from synth.config import Generation, PipelineConfig, Role
from synth.errors import BadInput

# Used when no previous build is given: rows out per row in, per stage. The generator's
# yield per call is a share of max_questions_per_call (below).
DEFAULT_KEEP = {
    "augment": None,  # 1 + the rewritten share (computed)
    "filter_questions": 0.80,
    "dedup_questions": 0.97,
    "respond": 0.99,
    "filter_responses": 0.92,
    "annotate": 0.85,
    "filter_pairs": 0.90,
    "dedup_pairs": 0.99,
    "decontaminate": 1.0,
}
DEFAULT_QUESTIONS_PER_CALL_SHARE = 0.8  # of max_questions_per_call, parsed and kept per generator call
SAMPLE_QUESTION_CHARS = 40  # a question not written yet, for rendering respond and judge prompts
REQUEST_STAGES = ("queries", "augment", "respond", "annotate")


def _manifest_rates(path: Path) -> dict[str, dict[str, float]]:
    """Per stage: rows out per row in, requests per row in (sent + cached), from DIR/manifest.json."""
    manifest_path = Path(path) / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        stages = manifest["stages"]
    except FileNotFoundError:
        raise BadInput(f"{manifest_path}: no manifest (--from-build must name a finished build)") from None
    except (ValueError, KeyError, TypeError) as e:
        raise BadInput(f"{manifest_path}: not a build manifest ({type(e).__name__}: {e})") from None
    rates: dict[str, dict[str, float]] = {}
    # the previous build's config (its copy in DIR/inputs): rates that depend on the harmful share
    # (augment rewrites harmful questions only) are rescaled to this config's share
    try:
        previous_config = yaml.safe_load((Path(path) / "inputs" / "config.yaml").read_text(encoding="utf-8"))
        gen = Generation.model_validate((previous_config or {}).get("generation") or {})
        rates["_harmful_share"] = {"value": _harmful_share(gen)}
    except (OSError, ValueError, yaml.YAMLError):
        pass
    for s in stages:
        rows_in = s.get("rows_in") or 0
        req = s.get("requests") or {}
        sent = (req.get("sent") or 0) + (req.get("cached") or 0)
        if rows_in:
            rates[s["name"]] = {"keep": s["rows_out"] / rows_in, "requests": sent / rows_in}
    return rates


def _harmful_share(gen: Generation) -> float:
    calls = gen.harmful_calls_per_subcategory + gen.benign_calls_per_subcategory
    return gen.harmful_calls_per_subcategory / calls if calls else 0.0


def make_plan(config: PipelineConfig, catalog, from_build: Path | None = None) -> dict[str, Any]:
    from synth.output_parsing import ordered_fields
    from synth.stages.generation import element_rows, question_requests
    from synth.stages.labelling import judge_requests, respond_requests

    previous = _manifest_rates(from_build) if from_build else {}
    options = config.plan
    gen = config.generation

    def rate(stage: str, what: str, default: float) -> float:
        return previous.get(stage, {}).get(what, default)

    elements = element_rows(config, catalog)
    stages: list[dict[str, Any]] = []
    roles: dict[str, dict[str, float]] = {}
    stage_output: dict[str, dict[str, float]] = {}  # stage → model → output tokens (for wall time)

    def count(stage: str, role: Role, requests: float, prompt_chars: float) -> None:
        r = roles.setdefault(role.name, {"model": role.model, "requests": 0.0, "prompt_tokens": 0.0,
                                         "output_tokens": 0.0})
        # an embed model (a probe judge) reads its prompt and writes nothing
        output = 0.0 if config.models[role.model].task == "embed" else role.sampling.max_tokens * options.output_fill
        r["requests"] += requests
        r["prompt_tokens"] += requests * prompt_chars / options.chars_per_token
        r["output_tokens"] += requests * output
        by_model = stage_output.setdefault(stage, {})
        by_model[role.model] = by_model.get(role.model, 0.0) + requests * output

    # queries: one call per elements row, prompts rendered exactly
    gen_role = config.roles.generator
    style = config.models[gen_role.model].prompt_style
    rendered = question_requests(pd.DataFrame(elements), catalog, gen_role, style, config.seed, gen) \
        if elements else pd.DataFrame(columns=["prompt", "system"])
    calls = len(elements)
    if calls:
        count("queries", gen_role, calls, float((rendered["prompt"].str.len() + rendered["system"].str.len()).mean()))
    stages.append({"name": "queries", "requests": calls})
    questions = calls * rate("queries", "keep", gen.max_questions_per_call * DEFAULT_QUESTIONS_PER_CALL_SHARE)

    # augment: a share of the harmful questions rewritten by the generator
    harmful_share = _harmful_share(gen)
    scale = harmful_share / previous["_harmful_share"]["value"] if previous.get("_harmful_share", {}).get("value") \
        else 1.0
    augment_requests = questions * (previous["augment"]["requests"] * scale if "augment" in previous
                                    else config.augment.share * harmful_share)
    if augment_requests:
        count("augment", gen_role, augment_requests, SAMPLE_QUESTION_CHARS * 4)
    stages.append({"name": "augment", "requests": augment_requests})
    questions *= (1 + (previous["augment"]["keep"] - 1) * scale if "augment" in previous
                  else 1 + config.augment.share * harmful_share * 0.9)
    for name in ("filter_questions", "dedup_questions"):
        questions *= rate(name, "keep", DEFAULT_KEEP[name])
    questions *= 1 + config.augment.obfuscation.share  # one obfuscated copy per chosen question

    # respond: each question by every responder or by responders_per_question of them
    responders = list(config.roles.responders)
    per_question = config.respond.responders_per_question or len(responders)
    per_question = min(per_question, len(responders))
    respond_total = questions * rate("respond", "requests", per_question)
    sample = pd.DataFrame([{"id": "plan", "question": "问" * SAMPLE_QUESTION_CHARS}])
    answer_chars = []
    for index, role in enumerate(responders):
        r = respond_requests(sample, catalog, role, config.models[role.model].prompt_style,
                             catalog.persona(role.persona, index), config.seed, [role.name], None)
        count("respond", role, respond_total / len(responders), float(len(r["prompt"][0]) + len(r["system"][0])))
        answer_chars.append(role.sampling.max_tokens * options.output_fill * options.chars_per_token)
    stages.append({"name": "respond", "requests": respond_total})
    pairs = questions * rate("respond", "keep", per_question * DEFAULT_KEEP["respond"])
    pairs *= rate("filter_responses", "keep", DEFAULT_KEEP["filter_responses"])

    # annotate: every judge reads every pair
    judges = list(config.roles.judges)
    annotate_total = pairs * rate("annotate", "requests", len(judges))
    pair = pd.DataFrame([{"id": "plan", "question": "问" * SAMPLE_QUESTION_CHARS,
                          "response": "答" * int(sum(answer_chars) / max(1, len(answer_chars)))}])
    for role in judges:
        r = judge_requests(pair, catalog, role, config.models[role.model].prompt_style, config.seed,
                           ordered_fields(config.annotate.fields))
        count("annotate", role, annotate_total / len(judges), float(len(r["prompt"][0]) + len(r["system"][0])))
    stages.append({"name": "annotate", "requests": annotate_total})
    rows = pairs * rate("annotate", "keep", DEFAULT_KEEP["annotate"])
    for name in ("filter_pairs", "dedup_pairs", "decontaminate"):
        rows *= rate(name, "keep", DEFAULT_KEEP[name])

    models = _models(config, roles)
    return {
        "config": config.name,
        "rates_from": str(from_build) if from_build else "defaults (synth/plan.py DEFAULT_KEEP)",
        "assumptions": {"chars_per_token": options.chars_per_token, "output_fill": options.output_fill},
        "stages": [{**s, "requests": round(s["requests"]),
                    "output_tokens": round(sum(stage_output.get(s["name"], {}).values()))} for s in stages],
        "roles": {k: {**v, **{f: round(v[f]) for f in ("requests", "prompt_tokens", "output_tokens")}}
                  for k, v in roles.items()},
        "models": models,
        "labelled_pairs": round(rows),  # after the pair filters, dedup and decontamination (before balance)
        "totals": {
            "requests": round(sum(s["requests"] for s in stages)),
            "prompt_tokens": round(sum(v["prompt_tokens"] for v in roles.values())),
            "output_tokens": round(sum(v["output_tokens"] for v in roles.values())),
            "gpu_hours": round(sum(m["gpu_hours"] or 0 for m in models.values()), 3),
            # the stages one after another; within a stage, its models side by side
            "wall_hours": round(sum(max((_replica_hours(config, m, tokens) for m, tokens in per.items()), default=0)
                                    for per in stage_output.values()), 3),
            "cost_usd": round(sum(m["cost_usd"] or 0 for m in models.values()), 2),
        },
    }


def _throughput(config: PipelineConfig, name: str):
    table = config.plan.throughput.get(name)
    return (table, f"plan.throughput.{name}") if table else \
        (config.plan.default_throughput, "plan.default_throughput (an assumption)")


def _replica_hours(config: PipelineConfig, name: str, output_tokens: float) -> float:
    """Hours the model's replicas take for `output_tokens` (0 for API and stand-in models)."""
    spec = config.models[name]
    if spec.engine != "vllm":
        return 0.0
    tput, _ = _throughput(config, name)
    return output_tokens / tput.output_tokens_per_s / 3600 / (spec.vllm.concurrency if spec.vllm else 1)


def _models(config: PipelineConfig, roles: dict[str, dict[str, float]]) -> dict[str, dict[str, Any]]:
    """Per model: tokens, GPU-hours from the throughput table, wall time for its replicas, API cost."""
    out = {}
    for name, spec in config.models.items():
        used = [r for r in roles.values() if r["model"] == name]
        if not used:
            continue
        prompt = sum(r["prompt_tokens"] for r in used)
        output = sum(r["output_tokens"] for r in used)
        entry: dict[str, Any] = {"engine": spec.engine, "requests": round(sum(r["requests"] for r in used)),
                                 "prompt_tokens": round(prompt), "output_tokens": round(output),
                                 "gpu_hours": None, "wall_hours": None, "cost_usd": None, "throughput_from": None}
        if spec.engine == "openai":
            price = config.plan.prices.get(name)
            if price is not None:
                entry["cost_usd"] = round(prompt / 1e6 * price.input_per_mtok + output / 1e6 * price.output_per_mtok, 2)
        elif spec.engine == "vllm":
            tput, entry["throughput_from"] = _throughput(config, name)
            entry["wall_hours"] = round(_replica_hours(config, name, output), 3)
            on_gpu = spec.vllm is None or spec.vllm.accelerator == "gpu"
            # GPUs per replica: the table's, else the model's tensor parallelism
            gpus = tput.gpus_per_replica if name in config.plan.throughput else \
                int((spec.vllm.engine_kwargs if spec.vllm else {}).get("tensor_parallel_size") or 1)
            entry["gpu_hours"] = round(output / tput.output_tokens_per_s / 3600 * gpus, 3) if on_gpu else 0.0
        out[name] = entry
    return out


def headline(plan: dict[str, Any]) -> str:
    t = plan["totals"]
    parts = [f"{t['requests']:,} requests", f"{t['prompt_tokens'] + t['output_tokens']:,} tokens "
             f"({t['output_tokens']:,} out)", f"~{plan['labelled_pairs']:,} labelled pairs"]
    if t["gpu_hours"]:
        parts.append(f"{t['gpu_hours']:.2f} GPU-hours, {t['wall_hours']:.2f} h of model time")
    if t["cost_usd"]:
        parts.append(f"${t['cost_usd']:,.2f} API")
    return "plan: " + ", ".join(parts)


def render(plan: dict[str, Any]) -> str:
    lines = [f"plan for {plan['config']} (acceptance rates: {plan['rates_from']}; "
             f"{plan['assumptions']['chars_per_token']:g} characters a token, output at "
             f"{plan['assumptions']['output_fill']:.0%} of max_tokens)", "", "requests per stage:"]
    lines += [f"  {s['name']:<10} {s['requests']:>10,}" for s in plan["stages"]]
    lines += ["", "per role:              model          requests  prompt tokens  output tokens"]
    lines += [f"  {name:<20} {r['model']:<14} {r['requests']:>8,} {r['prompt_tokens']:>14,} {r['output_tokens']:>14,}"
              for name, r in plan["roles"].items()]
    lines += ["", "per model:"]
    for name, m in plan["models"].items():
        if m["engine"] == "openai":
            cost = f"${m['cost_usd']:,.2f}" if m["cost_usd"] is not None else "no price in plan.prices"
            lines.append(f"  {name:<20} API cost {cost}")
        elif m["gpu_hours"] is not None:
            lines.append(f"  {name:<20} {m['gpu_hours']:.3f} GPU-hours, {m['wall_hours']:.3f} h for its replicas "
                         f"(throughput: {m['throughput_from']})")
        else:
            lines.append(f"  {name:<20} {m['engine']} engine: no GPU time")
    lines += ["", headline(plan)]
    return "\n".join(lines)
