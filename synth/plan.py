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

import yaml

from synth.config import Generation, PipelineConfig, Role
from synth.errors import BadInput

# Used when no previous build is given: the generator's yield per call is a share of
# max_questions_per_call; every other stage's rows out per row in is its `Stage.keep`.


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


class Planner:
    """What `synth plan` carries from stage to stage. Each stage of the pipeline, in order, reads
    `rows` (its estimated rows in), counts its requests per role (`count`) and leaves its rows out
    (`keep`, or `done` after setting `rows` itself); `notes` carries what a later stage's prompts
    need (the elements rows, the responders' answer length)."""

    def __init__(self, config: PipelineConfig, catalog, previous: dict[str, dict[str, float]]) -> None:
        self.config, self.catalog, self.previous = config, catalog, previous
        self.rows = 0.0
        self.notes: dict[str, Any] = {}
        self.stages: list[dict[str, Any]] = []
        self.roles: dict[str, dict[str, float]] = {}
        self.stage_output: dict[str, dict[str, float]] = {}  # stage → model → output tokens (for wall time)
        self._requests: dict[str, float] = {}

    def rate(self, stage: str, what: str, default: float) -> float:
        """A rate of the earlier build (`--from-build`), else `default`."""
        return self.previous.get(stage, {}).get(what, default)

    def count(self, stage: str, role: Role, requests: float, prompt_chars: float) -> None:
        options = self.config.plan
        r = self.roles.setdefault(role.name, {"model": role.model, "requests": 0.0, "prompt_tokens": 0.0,
                                              "output_tokens": 0.0})
        # an embed model (a probe judge) reads its prompt and writes nothing
        output = 0.0 if self.config.models[role.model].task == "embed" else \
            role.sampling.max_tokens * options.output_fill
        r["requests"] += requests
        r["prompt_tokens"] += requests * prompt_chars / options.chars_per_token
        r["output_tokens"] += requests * output
        by_model = self.stage_output.setdefault(stage, {})
        by_model[role.model] = by_model.get(role.model, 0.0) + requests * output
        self._requests[stage] = self._requests.get(stage, 0.0) + requests

    def keep(self, stage: str, default: float) -> None:
        """Rows out = rows in × the stage's rate (the earlier build's, else `default`)."""
        self.rows *= self.rate(stage, "keep", default)
        self.done(stage)

    def done(self, stage: str) -> None:
        self.stages.append({"name": stage, "requests": self._requests.get(stage, 0.0), "rows": self.rows})

    def harmful_share(self) -> tuple[float, float]:
        """(this config's harmful share of generator calls, its ratio to the earlier build's: rates that
        depend on it, such as augment's, are rescaled)."""
        share = _harmful_share(self.config.generation)
        before = self.previous.get("_harmful_share", {}).get("value")
        return share, (share / before if before else 1.0)


def make_plan(config: PipelineConfig, catalog, from_build: Path | None = None, pipeline=None) -> dict[str, Any]:
    """The plan of a build of `config` through `pipeline` (default: synth.pipeline.PIPELINE): every
    stage estimates its own requests and rows (`Stage.estimate`)."""
    if pipeline is None:
        from synth.pipeline import PIPELINE as pipeline
    planner = Planner(config, catalog, _manifest_rates(from_build) if from_build else {})
    for stage in pipeline:
        stage.estimate(planner)
    stages, roles, options = planner.stages, planner.roles, config.plan
    models = _models(config, roles)
    return {
        "config": config.name,
        "rates_from": str(from_build) if from_build else "defaults (each stage's keep, synth/stages/)",
        "assumptions": {"chars_per_token": options.chars_per_token, "output_fill": options.output_fill},
        "stages": [{**s, "requests": round(s["requests"]), "rows": round(s["rows"]),
                    "output_tokens": round(sum(planner.stage_output.get(s["name"], {}).values()))} for s in stages],
        "roles": {k: {**v, **{f: round(v[f]) for f in ("requests", "prompt_tokens", "output_tokens")}}
                  for k, v in roles.items()},
        "models": models,
        "labelled_pairs": round(planner.rows),  # rows out of the final stage (before balance)
        "totals": {
            "requests": round(sum(s["requests"] for s in stages)),
            "prompt_tokens": round(sum(v["prompt_tokens"] for v in roles.values())),
            "output_tokens": round(sum(v["output_tokens"] for v in roles.values())),
            "gpu_hours": round(sum(m["gpu_hours"] or 0 for m in models.values()), 3),
            # the stages one after another; within a stage, its models side by side
            "wall_hours": round(sum(max((_replica_hours(config, m, tokens) for m, tokens in per.items()), default=0)
                                    for per in planner.stage_output.values()), 3),
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
             f"{plan['assumptions']['output_fill']:.0%} of max_tokens)", "", "per stage:"]
    lines += [f"  {s['name']:<18} {s['requests']:>10,} requests  {s.get('rows', 0):>10,} rows out"
              for s in plan["stages"]]
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
