"""Typed pipeline configuration (`pipelines/*.yaml`), validated at load time.

Every model forbids unknown keys, so a typo in a config is an error naming the
file and the field instead of a silently ignored setting.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, PrivateAttr, StringConstraints, ValidationError, field_validator,
                      model_validator)

from synth.dedup import DecontaminateConfig, DedupConfig
from synth.errors import BadInput
from synth.output_parsing import JUDGE_FIELDS


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# A model's key in `models` names its directories (`cache/requests/<model>/`, `cache/sent/<model>/`):
# one path component, never `.`, `..`, absolute, or holding `/`, NUL or a newline.
ModelName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]


class Sampling(Strict):
    temperature: float = Field(0.8, ge=0.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    # 0 = off. On CPU prefer top_k to top_p: vLLM's top-p sorts the whole vocabulary
    # (262k for Gemma 3) every step; top-k alone does not (BENCHMARKS.md, generation).
    top_k: int = Field(0, ge=0, description="sample among the k likeliest tokens (0 = off)")
    max_tokens: int = Field(256, ge=1)
    stop: list[str] = Field(default_factory=list)


class VLLMOptions(Strict):
    """How a model is served by vLLM (in Ray actors, see synth/engines/vllm_ray.py)."""

    accelerator: Literal["cpu", "gpu"] = "gpu"
    concurrency: int = Field(1, ge=1, description="engine replicas")
    batch_size: int = Field(64, ge=1, description="rows per batch sent to a replica")
    max_model_len: int = Field(4096, ge=128)
    max_concurrent_batches: int = Field(8, ge=1, description="batches in flight per replica (keeps it saturated)")
    cpu_kvcache_gib: int = Field(1, ge=1, description="accelerator cpu: KV cache size in whole GiB "
                                 "(VLLM_CPU_KVCACHE_SPACE, which vLLM reads as an integer)")
    cpus_per_replica: float = Field(1.0, gt=0, description="accelerator cpu: Ray CPUs reserved per replica")
    accelerator_type: str | None = Field(None, description="accelerator gpu: Ray accelerator type, e.g. A100, L4")
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="passed to vLLM as is (tensor_parallel_size, dtype, ...)"
    )
    env_vars: dict[str, str] = Field(
        default_factory=dict,
        description="environment of each replica's engine, for vLLM's VLLM_* settings "
        "(e.g. VLLM_CPU_NUM_OF_RESERVED_CPU); set after cpu_kvcache_gib's variable, so they win",
    )


class OpenAIOptions(Strict):
    """An OpenAI-compatible server (vllm serve, SGLang, hosted APIs)."""

    base_url: str
    api_key_env: str | None = Field(None, description="name of the env var holding the key; never the key")
    max_concurrency: int = Field(8, ge=1)
    timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(5, ge=0)
    backoff_s: float = Field(1.0, ge=0, description="first retry waits ~this long, doubling each retry (with jitter)")
    backoff_max_s: float = Field(30.0, ge=0, description="cap on one retry wait (also caps Retry-After)")
    response_format: Literal["structured_outputs", "regex", "json_schema", "json_object", "none"] = Field(
        "json_schema",
        description="how judges ask for JSON: structured_outputs (vLLM's server: the in-process engine's "
        "constraint), regex (SGLang), json_schema (OpenAI and hosted APIs), json_object (e.g. DeepSeek), none",
    )
    extra_body: dict[str, Any] = Field(default_factory=dict, description="extra JSON fields sent with every request")
    # Pushback (synth/engines/pushback.py): how the engine paces itself when the server is busy or down.
    min_concurrency: int = Field(1, ge=1, description="adaptive concurrency never goes below this")
    latency_backoff: float | None = Field(
        3.0, gt=1, description="halve concurrency when an answer takes this many times the recent median "
        "seconds per output token; null: latency never cuts it")
    requests_per_minute: int | None = Field(None, ge=1, description="at most this many requests a minute")
    tokens_per_minute: int | None = Field(
        None, ge=1, description="at most this many tokens a minute (prompt characters + max_tokens before "
        "sending, corrected with the server's usage)")
    rate_window_s: float = Field(60.0, gt=0, description="the window the per-minute limits hold in (scaled "
                                 "to it): 60; 1 for a server that enforces per second")
    breaker_failures: int = Field(5, ge=1, description="failed requests in a row (no connection, timeout, 5xx) "
                                  "that open the circuit breaker")
    breaker_cooldown_s: float = Field(10.0, gt=0, description="wait before the breaker's first probe; doubles "
                                      "after each failed probe")
    breaker_cooldown_max_s: float = Field(120.0, gt=0, description="cap on the wait between probes")
    give_up_s: float = Field(
        600.0, ge=0, description="after the breaker has been open this long (or a request throttled this long), "
        "requests fail at once as transient: the next run sends them again")

    @model_validator(mode="after")
    def _concurrency_range(self) -> "OpenAIOptions":
        if self.min_concurrency > self.max_concurrency:
            raise ValueError(f"min_concurrency ({self.min_concurrency}) is above max_concurrency ({self.max_concurrency})")
        return self


class ModelSpec(Strict):
    """A model and how to reach it. Roles refer to models by their key in `models`."""

    engine: Literal["standin", "vllm", "openai"]
    model: str = Field(description="Hugging Face id, local path, or embedded name (embedded:gemma3-270m)")
    prompt_style: Literal["chat", "completion"] = "chat"
    task: Literal["generate", "embed"] = Field(
        "generate", description="embed: the model's pooled hidden state (vLLM's pooling runner: the mean over the prompt's tokens) instead "
        "of text, for a probe judge (roles.judges[].probe)")
    vllm: VLLMOptions | None = None
    openai: OpenAIOptions | None = None

    @model_validator(mode="after")
    def _engine_options_match(self) -> "ModelSpec":
        if self.task == "embed" and self.engine == "openai":
            raise ValueError("task 'embed' needs engine 'vllm' (or 'standin'): the pooled hidden states")
        if self.engine == "openai" and self.openai is None:
            raise ValueError("engine 'openai' needs an 'openai' section (base_url, ...)")
        if self.engine != "openai" and self.openai is not None:
            raise ValueError(f"'openai' section given but engine is '{self.engine}'")
        if self.engine != "vllm" and self.vllm is not None:
            raise ValueError(f"'vllm' section given but engine is '{self.engine}'")
        return self


class Role(Strict):
    """One use of a model: the generator, one responder, or one judge."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    model: str = Field(description="a key of `models`")
    sampling: Sampling = Field(default_factory=Sampling)
    persona: str | None = Field(None, description="responders: a persona id from templates/shared/respond.yaml")
    rubric: str | None = Field(
        None, description="judges: a rubric id from templates/shared/judge.yaml (default: its first rubric)"
    )
    probe: Path | None = Field(
        None, description="judges: a probe (`synth probe train`, relative to the config file) that scores the "
        "judge prompt's pooled hidden states from a `task: embed` model; no analysis, one forward pass. "
        "question_judges: a question probe (`synth probe train --questions`), the question's pooled states")
    analysis: bool = Field(
        True, description="judges: false = a score-only judge: the verdict at once, no 分析 (one pass over the "
        "prompt and a few verdict tokens); the label's analysis is then the other judge's")


class Roles(Strict):
    generator: Role
    user_turn_writer: Role | None = Field(
        None, description="converse: writes the user turns of conversations (templates/shared/dialogue.yaml); "
        "none = the generator role")
    responders: list[Role] = Field(min_length=1)
    judges: list[Role] = Field(min_length=2, max_length=2)
    question_judges: list[Role] = Field(
        default_factory=list, max_length=2,
        description="judge_questions: one or two judges of each question before it is answered (harmful 是/否, "
        "its subcategory, a reason; templates/shared/question_judge.yaml); they may share the pair judges' "
        "models (and then their running engines); none = the stage passes the questions through unjudged")


class Generation(Strict):
    harmful_calls_per_subcategory: int = Field(2, ge=0, description="element combos sampled per subcategory")
    benign_calls_per_subcategory: int = Field(1, ge=0)
    questions_per_call: int = Field(10, ge=1, description="n in the prompt")
    max_questions_per_call: int = Field(10, ge=1, description="parsed questions kept per output")


class Obfuscation(Strict):
    """Deterministic Chinese obfuscation attacks (synth/obfuscation.py), no model call."""

    share: float = Field(0.0, ge=0.0, le=1.0, description="share of the questions (harmful and benign) that get "
                         "one obfuscated copy; 0: off")
    tactics: list[str] = Field(default_factory=list, description="tactic ids; empty = all (synth/obfuscation.py)")

    @field_validator("tactics")
    @classmethod
    def _known_tactics(cls, tactics: list[str]) -> list[str]:
        from synth.obfuscation import TACTICS

        unknown = [t for t in tactics if t not in TACTICS]
        if unknown:
            raise ValueError(f"unknown obfuscation tactic {unknown[0]!r} (known: {', '.join(TACTICS)})")
        return tactics


class Augment(Strict):
    share: float = Field(0.3, ge=0.0, le=1.0, description="share of harmful questions that get one tactic rewrite")
    tactics: list[str] = Field(default_factory=list, description="tactic ids; empty = all in augment.yaml")
    obfuscation: Obfuscation = Field(default_factory=Obfuscation)


class Dialogues(Strict):
    """Multi-turn conversations (stage converse, synth/stages/dialogue.py; strategies in
    templates/shared/dialogue.yaml)."""

    share: float = Field(0.0, ge=0.0, le=1.0, description="share of the plain questions that also seed one "
                         "conversation, in each scenario × kind (at least `min_per_group` each); 0: off")
    min_per_group: int = Field(1, ge=1, description="conversations at least in each scenario × kind (all its plain "
                               "questions when it has fewer), so a small scenario keeps some past the filters")
    turns: tuple[int, int] = Field((2, 5), description="[min, max] user turns of a conversation (within 1–8), "
                                   "intersected with each strategy's own range")
    strategies: list[str] = Field(default_factory=list, description="strategy ids to use; empty = all")

    @field_validator("turns")
    @classmethod
    def _turn_range(cls, turns: tuple[int, int]) -> tuple[int, int]:
        low, high = turns
        if not (1 <= low <= high <= 8):
            raise ValueError(f"[{low}, {high}] must be a range within 1–8, min first")
        return turns


class Respond(Strict):
    responders_per_question: int | None = Field(
        None, ge=1, description="None = every responder answers every question"
    )


class LabelRule(Strict):
    """How the judges' unsafe scores become a label (synth.scoring.label): each judge's side
    (不安全 above t_unsafe, 安全 below t_safe), judges on opposite sides or further apart than
    `margin` → the controversial tier, else the combined score against the same thresholds.
    0.5/0.5 and no margin: the Libra rule (both agree → that label, else 有争议)."""

    combine: Literal["mean", "min", "max"] = "mean"
    t_safe: float = Field(0.5, ge=0.0, le=1.0, description="a combined score below this is 安全")
    t_unsafe: float = Field(0.5, ge=0.0, le=1.0, description="a combined score above this is 不安全")
    margin: float | None = Field(None, ge=0.0, le=1.0, description="judges further apart than this disagree")
    judges_agree: bool = Field(
        True, description="the Libra rule: judges on opposite sides of the thresholds put a pair in the "
        "controversial tier; false: the combined score alone decides (with `margin`, if set)")
    weights: dict[str, float] | None = Field(
        None, description="per judge role name, its weight in the combined score (default: equal); a judge "
        "of weight 0 is kept for its analysis and takes no part in the label")
    calibration: Path | None = Field(
        None, description="a calibration record written by `synth eval-judges --calibrate --save FILE` "
        "(relative to this config file): its thresholds replace the four above")

    @field_validator("weights")
    @classmethod
    def _weights(cls, weights: dict[str, float] | None) -> dict[str, float] | None:
        if weights is not None and (any(w < 0 for w in weights.values()) or not any(weights.values())):
            raise ValueError("weights must be >= 0 and not all 0")
        return weights

    @model_validator(mode="after")
    def _ordered(self) -> "LabelRule":
        if self.t_safe > self.t_unsafe:
            raise ValueError(f"t_safe ({self.t_safe:g}) is above t_unsafe ({self.t_unsafe:g})")
        return self


class JudgeExamples(Strict):
    """In-context examples for the generative judges (synth/judge_examples.py)."""

    path: Path = Field(description="a gold-format JSONL (id, question, response, label, category_name, "
                       "sub_category_name), relative to the config file")
    k: int = Field(2, ge=1, le=8, description="examples per judge request: the pair's scenario first, "
                   "both labels when k >= 2")
    max_chars: int = Field(200, ge=20, description="an example's question and answer are each cut to this many characters")


class JudgeQuestions(Strict):
    """What judge_questions does with a question whose judged content differs from what was asked
    for (synth/stages/question_judge.py; defaults measured in docs/filters.md)."""

    on_kind_mismatch: Literal["relabel", "reject", "keep"] = Field(
        "relabel", description="a harmful-kind question judged not harmful, or a benign one judged harmful: "
        "relabel (its kind becomes the judged one; requested_kind keeps the request), reject, or keep as asked")
    threshold: float = Field(
        0.5, gt=0.0, lt=1.0, description="a question is judged harmful when the judges' combined P(是) is above "
        "this (each judge's own side decides agreement, as the pair judges' rule: synth.scoring.label); choose it "
        "with `synth eval-judges QUESTION_GOLD` on one set and report it on another")
    on_off_topic: Literal["reassign", "reject", "keep"] = Field(
        "keep", description="a question judged to be about another subcategory (or none: other): reassign "
        "to the judged one (requested_subcategory keeps the request; a question about none, `other`, is "
        "rejected: it has nowhere to go), reject, or keep")
    request_prior: float | None = Field(
        None, gt=0.0, lt=1.0, description="for question judges that are probes: the share of the writer's questions "
        "that are about the subcategory they were asked for; the probe's topic head then takes the request as "
        "evidence too (Bayes' rule, synth.probe.QuestionProbe.topics) instead of its own most likely class alone. "
        "None = the head alone. Measure it on a build's own questions: bench/question_request_prior.py")


class Annotate(Strict):
    scores: Literal["logprobs", "required", "off"] = Field(
        "logprobs", description="judges' unsafe_score: read from token log-probabilities where the engine "
        "gives them (else the label, marked score_source: label); required = a judge without them stops "
        "the build; off = never asked, the label")
    rule: LabelRule = Field(default_factory=LabelRule)
    examples: JudgeExamples | None = Field(None, description="k labelled examples shown to each generative judge request")
    fields: list[str] = Field(
        default_factory=list,
        description="optional judge fields after 答案: question_harmful, refusal, subcategory (columns "
        "question_harmful, refusal, judged_subcategory); empty = the Libra verdict only",
    )
    every_turn: bool = Field(
        False, description="conversations: the judges also label every earlier answer, each reading the "
        "conversation up to it (columns turn_labels, first_unsafe_turn); off = the last answer only")

    @field_validator("fields")
    @classmethod
    def _known_fields(cls, fields: list[str]) -> list[str]:
        unknown = [f for f in fields if f not in JUDGE_FIELDS]
        if unknown:
            raise ValueError(f"unknown judge field(s) {', '.join(unknown)} (known: {', '.join(JUDGE_FIELDS)})")
        if len(set(fields)) != len(fields):
            raise ValueError("a judge field is listed twice")
        return fields


class FilterSpec(Strict):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class Filters(Strict):
    questions: list[FilterSpec] = Field(default_factory=list)
    pairs: list[FilterSpec] = Field(default_factory=list)


class Dedup(Strict):
    questions: DedupConfig = Field(default_factory=DedupConfig)
    pairs: DedupConfig = Field(default_factory=DedupConfig)


class Export(Strict):
    validation_share: float = Field(0.1, ge=0.0, lt=1.0)
    label_position: Literal["before", "after"] = Field(
        "before", description='sft/: the verdict JSON puts 答案 before 分析 ("before") or after it ("after")'
    )
    sft_target: Literal["libra", "extended"] = Field(
        "libra", description="sft/: the assistant turn is Libra's {答案, 分析} (libra) or also carries the judge "
        "fields of annotate.fields (extended), the user turn then asking for them",
    )


class Balance(Strict):
    """Applied to the final rows before the export's split (synth/balance.py); cut rows go to rejects/."""

    max_per_subcategory_label: int | None = Field(
        None, ge=1, description="cap on rows per (scenario, subcategory, label); None = no cap"
    )
    unsafe_share: float | None = Field(
        None, gt=0.0, lt=1.0, description="target share of 不安全 rows in the export; None = as built"
    )
    tolerance: float = Field(0.02, ge=0.0, lt=0.5, description="no cut while the share is within target ± this")


class Throughput(Strict):
    output_tokens_per_s: float = Field(gt=0, description="output tokens a second one replica sustains")
    gpus_per_replica: int = Field(1, ge=1)


class Price(Strict):
    input_per_mtok: float = Field(ge=0, description="price of a million prompt tokens")
    output_per_mtok: float = Field(ge=0, description="price of a million output tokens")


class Plan(Strict):
    """What `synth plan` assumes (synth/plan.py)."""

    throughput: dict[str, Throughput] = Field(default_factory=dict, description="per vllm model key")
    default_throughput: Throughput = Field(
        default_factory=lambda: Throughput(output_tokens_per_s=2500.0, gpus_per_replica=1),
        description="an assumption, not a measurement: a model batched by vLLM on a data-centre GPU "
        "(GPUs per replica then come from the model's tensor_parallel_size); measure yours and set "
        "plan.throughput",
    )
    prices: dict[str, Price] = Field(default_factory=dict, description="per openai model key")
    chars_per_token: float = Field(1.3, gt=0, description="Chinese text: ~1.3 characters a token (Qwen2.5)")
    output_fill: float = Field(0.7, gt=0, le=1, description="answers use this share of max_tokens")


class PipelineConfig(Strict):
    name: str
    seed: int = 0
    templates: Path = Field(Path("../templates"), description="relative to this config file")
    seeds: Path = Field(Path("../seeds"), description="relative to this config file")
    scenarios: list[str] = Field(default_factory=list, description="scenario ids to build; empty = all")
    models: dict[ModelName, ModelSpec]
    roles: Roles
    generation: Generation = Field(default_factory=Generation)
    augment: Augment = Field(default_factory=Augment)
    respond: Respond = Field(default_factory=Respond)
    dialogues: Dialogues = Field(default_factory=Dialogues)
    judge_questions: JudgeQuestions = Field(default_factory=JudgeQuestions)
    annotate: Annotate = Field(default_factory=Annotate)
    filters: Filters = Field(default_factory=Filters)
    dedup: Dedup = Field(default_factory=Dedup)
    plan: Plan = Field(default_factory=Plan)
    decontaminate: DecontaminateConfig = Field(
        default_factory=DecontaminateConfig,
        description="evaluation files whose copies are removed (after dedup_pairs); paths relative to this config file",
    )
    export: Export = Field(default_factory=Export)
    balance: Balance = Field(default_factory=Balance)
    # Where load_config found this config and its templates/seeds (not part of the content).
    _source: Path | None = PrivateAttr(None)
    _templates_dir: Path | None = PrivateAttr(None)
    _seeds_dir: Path | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _roles_name_defined_models(self) -> "PipelineConfig":
        all_roles = [("roles.generator", self.roles.generator)]
        if self.roles.user_turn_writer is not None:
            all_roles.append(("roles.user_turn_writer", self.roles.user_turn_writer))
        all_roles += [(f"roles.responders[{i}]", r) for i, r in enumerate(self.roles.responders)]
        all_roles += [(f"roles.question_judges[{i}]", r) for i, r in enumerate(self.roles.question_judges)]
        all_roles += [(f"roles.judges[{i}]", r) for i, r in enumerate(self.roles.judges)]
        seen: set[str] = set()
        for where, role in all_roles:
            if role.model not in self.models:
                raise ValueError(
                    f"{where}.model: model '{role.model}' is not defined in `models` "
                    f"(defined: {', '.join(sorted(self.models)) or 'none'})"
                )
            if role.name in seen:
                raise ValueError(f"{where}.name: role name '{role.name}' is used twice")
            seen.add(role.name)
        for i, role in enumerate(self.roles.judges):
            task = self.models[role.model].task
            if role.probe is not None and task != "embed":
                raise ValueError(f"roles.judges[{i}].probe: a probe reads hidden states: model '{role.model}' "
                                 "needs task: embed")
            if role.probe is None and task == "embed":
                raise ValueError(f"roles.judges[{i}].model: '{role.model}' has task: embed (no text): give the "
                                 "judge a probe, or use a generating model")
        for i, role in enumerate(self.roles.question_judges):
            task = self.models[role.model].task
            if role.rubric is not None:
                raise ValueError(f"roles.question_judges[{i}]: a question judge takes no rubric (its one "
                                 "template is templates/shared/question_judge.yaml)")
            if (role.probe is not None) != (task == "embed"):
                raise ValueError(f"roles.question_judges[{i}]: a question probe (probe:) reads hidden states and a "
                                 f"task: embed model writes no text: model '{role.model}' has task: {task}, "
                                 f"probe: {role.probe or 'none'}")
        if not any(role.analysis and role.probe is None for role in self.roles.judges):
            raise ValueError("roles.judges: no judge writes an analysis (every one is a probe or has analysis: "
                             "false): the corpus's `analyze` needs one")
        writers = all_roles[:len(all_roles) - len(self.roles.judges) - len(self.roles.question_judges)]
        for where, role in writers:  # the judges were checked above
            if self.models[role.model].task == "embed":
                raise ValueError(f"{where}.model: '{role.model}' has task: embed and writes no text")
        weights = self.annotate.rule.weights or {}
        unknown = sorted(set(weights) - {role.name for role in self.roles.judges})
        if unknown:
            raise ValueError(f"annotate.rule.weights: {', '.join(unknown)} is not a judge role "
                             f"({', '.join(role.name for role in self.roles.judges)})")
        for table, engine in (("throughput", "vllm"), ("prices", "openai")):
            for key in getattr(self.plan, table):
                if key not in self.models:
                    raise ValueError(f"plan.{table}.{key}: model '{key}' is not defined in `models`")
                if self.models[key].engine != engine:
                    raise ValueError(f"plan.{table}.{key}: model '{key}' has engine '{self.models[key].engine}', "
                                     f"plan.{table} is for engine '{engine}' models")
        return self

    @model_validator(mode="after")
    def _extended_target_needs_fields(self) -> "PipelineConfig":
        if self.export.sft_target == "extended" and not self.annotate.fields:
            raise ValueError("export.sft_target: extended needs judge fields (annotate.fields)")
        return self

    def all_roles(self) -> list[Role]:
        return [self.roles.generator, *self.roles.responders, *self.roles.question_judges, *self.roles.judges]

    @property
    def source(self) -> Path | None:
        """The config file this was loaded from (None when built in code)."""
        return self._source

    @property
    def templates_dir(self) -> Path | None:
        """The resolved templates directory (None when built in code)."""
        return self._templates_dir

    @property
    def seeds_dir(self) -> Path | None:
        """The resolved seeds directory (None when built in code)."""
        return self._seeds_dir

    def fingerprint(self) -> str:
        """Hash of the config's content (paths excluded), recorded in the manifest."""
        # export.label_position and sft_target only shape sft/ and balance only the export: changing them
        # must not rerun the LLM stages.
        # The evaluation files count by content (the decontaminate stage's signature), not by path;
        # a config without any is hashed as before the section existed.
        exclude: dict[str, Any] = {"templates": True, "seeds": True, "balance": True,
                                   "export": {"label_position", "sft_target"},
                                   "decontaminate": {"against": {"__all__": {"path"}}} if self.decontaminate.against
                                   else True}
        if self.annotate == Annotate():  # a config with the default annotate is hashed as before it existed
            exclude["annotate"] = True
        data = self.model_dump(mode="json", exclude=exclude)
        return hashlib.sha256(json.dumps(data, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def load_config(path: Path) -> tuple[PipelineConfig, Path, Path]:
    """Load and validate a pipeline config; return it with resolved templates and seeds dirs."""
    path = Path(path)
    raw = _extended(path, _read_mapping(path, f"{path}: config file not found"), seen=[path.resolve()])
    try:
        config = PipelineConfig.model_validate(raw)
    except ValidationError as e:
        raise BadInput(f"{path}: invalid pipeline config:\n{format_validation_error(e)}") from None
    base = path.resolve().parent
    config._source = path.resolve()
    config._templates_dir = (base / config.templates).resolve()
    config._seeds_dir = (base / config.seeds).resolve()
    for spec in config.decontaminate.against:  # like templates and seeds: relative to the config file
        spec.path = (base / spec.path).resolve()
    for role in (*config.roles.judges, *config.roles.question_judges):  # a probe is read when the judges run
        if role.probe is not None:
            role.probe = (base / role.probe).resolve()
    examples = config.annotate.examples
    if examples is not None:  # read now: a missing or malformed file stops the build before it starts
        from synth.judge_examples import read_examples

        examples.path = (base / examples.path).resolve()
        read_examples(examples.path, f"{path}: annotate.examples.path")
    rule = config.annotate.rule
    if rule.calibration is not None:  # its thresholds, checked now: a bad record stops the build before it starts
        from synth.calibration import read_calibration

        rule.calibration = (base / rule.calibration).resolve()
        read_calibration(rule.calibration, f"{path}: annotate.rule.calibration")
    return config, config._templates_dir, config._seeds_dir


def _extended(path: Path, raw: dict[str, Any], seen: list[Path]) -> dict[str, Any]:
    """`extends: OTHER.yaml` (relative to this file): OTHER's settings with this file's over them,
    mappings merged key by key, anything else (lists included) replaced."""
    base_name = raw.pop("extends", None)
    if base_name is None:
        return raw
    base_path = (path.resolve().parent / str(base_name)).resolve()
    if base_path in seen:
        raise BadInput(f"{path}: extends: {base_name} extends itself ({' → '.join(p.name for p in seen)})")
    base = _read_mapping(base_path, f"{path}: extends: cannot read {base_path}")
    base = _extended(base_path, base, [*seen, base_path])
    if base_path.parent != path.resolve().parent:  # the base's paths stay relative to the base file
        base = _rebased(base, base_path.parent)
    return _merged(base, raw)


def _rebased(raw: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """`raw` with its relative file paths (templates, seeds, probes, the calibration record, the
    examples file, decontamination sets) made absolute against `base_dir`, the directory of the
    file that wrote them: a config in another directory can extend it."""
    import copy

    raw = copy.deepcopy(raw)

    def fix(mapping: Any, key: str) -> None:
        if isinstance(mapping, dict) and isinstance(mapping.get(key), str) and "://" not in mapping[key]:
            mapping[key] = str((base_dir / mapping[key]).resolve())

    for key in ("templates", "seeds"):
        fix(raw, key)
    for role in [*((raw.get("roles") or {}).get("judges") or []), *((raw.get("roles") or {}).get("question_judges") or [])]:
        fix(role, "probe")
    annotate = raw.get("annotate") or {}
    fix(annotate.get("rule"), "calibration")
    fix(annotate.get("examples"), "path")
    for spec in (raw.get("decontaminate") or {}).get("against") or []:
        fix(spec, "path")
    return raw


def _read_mapping(path: Path, unreadable: str) -> dict[str, Any]:
    """A config file's YAML mapping; a `BadInput` (`unreadable`, or naming the file) otherwise."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise BadInput(unreadable if isinstance(e, FileNotFoundError) else f"{unreadable} ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        raise BadInput(f"{path}: invalid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise BadInput(f"{path}: a pipeline config must be a mapping, got {type(raw).__name__}")
    return raw


def _merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def format_validation_error(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        # repr() for a part a terminal would not show as is (a key holding a newline or NUL)
        where = ".".join(str(p) if str(p).isprintable() else repr(p) for p in item["loc"]) or "(top level)"
        lines.append(f"  {where}: {item['msg']}")
    return "\n".join(lines)
