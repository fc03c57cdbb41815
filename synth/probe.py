"""A probe judge: a logistic regression over a model's own hidden states for the judge prompt.

A small model often knows more than it says: its generated verdict can be at chance while its
hidden states for the same (question, answer) separate 不安全 from 安全 (issue 28 measured it).
This is how guards are built from small models: read the prompt once (vLLM's pooling runner,
the mean of the last hidden states over the prompt; `task: embed` on the model), and score it with a classifier
trained on labelled pairs. One forward pass, no analysis.

    synth probe train GOLD.jsonl [GOLD2 ...] --config C --judge judge-probe --out probes/p.json

renders the probe prompt of that role (judge.yaml's `probe` form) for every gold pair, as the build does, reads the pooled
states through the build's engine, fits scikit-learn's `LogisticRegressionCV` on standardized
states, and writes the probe: its weights, the model and prompt it was trained with, the hash of
every training item (question + answer), and a hash of the whole record. A judge role with
`probe: FILE` then scores with it: `unsafe_score` = the probe's probability, its verdict the
side of 0.5, score_source `probe`. `synth eval-judges` refuses gold items the probe was trained
on (exit 2, naming them).

A question judge may be a probe too (`QuestionProbe`): it reads the question in the `probe`
form of templates/shared/question_judge.yaml (a short instruction, no catalog), and scores it with two heads over one standardized state, P(harmful) and the
catalog subcategory it is about (a multinomial logistic regression). `synth probe train
--questions` fits both on the seed pools the project writes (seeds/scenarios/: every behaviour
descriptor is a harmful item of its subcategory, every benign topic a benign one, each as written
and as a question), so no gold item is trained on.

Engines return a pooled state as the request's text (`encode_vector`: float16, base64, so the
request cache keeps it like any answer).
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from synth.errors import BadInput

VECTOR_PREFIX = "vec:f16:"
FROM_PROBE = "probe"  # a verdict's score_source
# what a probe reads, as its record says (the engine's pooler: synth.engines.vllm_ray)
POOLING = "mean of the last hidden states over the prompt (vLLM pooling runner, convert: embed, MEAN pooling)"


def encode_vector(vector: Any) -> str:
    return VECTOR_PREFIX + base64.b64encode(np.asarray(vector, dtype="<f2").tobytes()).decode("ascii")


def decode_vector(text: str) -> np.ndarray | None:
    if not text.startswith(VECTOR_PREFIX):
        return None
    try:
        return np.frombuffer(base64.b64decode(text[len(VECTOR_PREFIX):]), dtype="<f2").astype(np.float64)
    except ValueError:
        return None


def item_hash(question: str, response: str) -> str:
    """What identifies a training item: its question and answer, whatever its id or file."""
    return hashlib.sha256(json.dumps([question.strip(), response.strip()], ensure_ascii=False).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Probe:
    """A trained probe (see the module docstring); `score` is P(不安全) of one pooled state."""

    path: str
    sha256: str
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    trained_on: frozenset[str]  # item hashes
    prompt: tuple[str, str] = ("", "")  # (judge_prompt_fingerprint, rubric id) it was trained on

    def score(self, vector: np.ndarray) -> float:
        z = float(((vector - self.mean) / self.scale) @ self.coef + self.intercept)
        return float(1.0 / (1.0 + np.exp(-z)))


def read_probe(path: Path, where: str = "") -> Probe:
    """A probe record; a `BadInput` naming the file and field when it is missing or malformed."""
    where = f"{where} {path}" if where else str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise BadInput(f"{where}: cannot read the probe ({e.strerror or e}); `synth probe train` writes one") from None
    try:
        record = json.loads(raw.decode("utf-8"))
        mean, scale, coef = (np.asarray(record[k], dtype=np.float64) for k in ("mean", "scale", "coef"))
        intercept = float(record["intercept"])
        trained_on = frozenset(str(h) for h in record["trained_on"])
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise BadInput(f"{where}: not a probe record ({type(e).__name__}: {e})") from None
    if not (mean.shape == scale.shape == coef.shape and mean.ndim == 1 and len(mean)) or (scale <= 0).any():
        raise BadInput(f"{where}: mean, scale and coef must be vectors of one length, scale > 0")
    return Probe(str(path), hashlib.sha256(raw).hexdigest()[:16], mean, scale, coef, intercept, trained_on,
                 (str(record.get("judge_prompt", "")), str(record.get("rubric", ""))))


def probe_prompt(catalog, style: str, messages: list[dict[str, str]], rubric: dict[str, Any]):
    """What a probe judge reads for a conversation's last answer (`messages`: user and assistant
    turns, the answer last): templates/shared/judge.yaml's `probe` form (the caller checks it
    exists), the earlier turns as `history`."""
    return catalog.render(catalog.judge.probe, style, {
        "question": messages[-2]["content"], "response": messages[-1]["content"], "history": messages[:-2],
        "rubric": rubric}, "judge probe")


def judge_prompt_fingerprint(catalog, rubric_id: str | None) -> str:
    """The prompt a probe reads, as a hash of it rendered for one fixed pair in both styles:
    judge.yaml's `probe` form when it has one, else the judge prompt (no judge fields, no
    examples). An edit of templates/shared/judge.yaml that leaves that prompt as it was (e.g. a
    block that renders only with examples) keeps a probe valid; any other does not."""
    rubric = catalog.rubric(rubric_id).model_dump()
    pair = [{"role": "user", "content": "〈问题〉"}, {"role": "assistant", "content": "〈回答〉"}]
    rendered = [probe_prompt(catalog, style, pair, rubric) if catalog.judge.probe is not None else
                catalog.render(catalog.judge, style, {"question": "〈问题〉", "response": "〈回答〉", "rubric": rubric,
                                                      "fields": [], "examples": []}, "judge")
                for style in ("chat", "completion")]
    text = json.dumps([[r.system, r.prompt] for r in rendered], ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def check_prompt(probe: Probe, role_name: str, fingerprint: str, rubric: str) -> None:
    """A probe reads the states of the prompt it was trained on: another judge prompt or rubric
    is a `BadInput` (retrain it)."""
    if probe.prompt != (fingerprint, rubric):
        raise BadInput(f"roles.judges {role_name}: probe {probe.path} was trained on the judge prompt "
                       f"{probe.prompt[0]}/{probe.prompt[1]}, the config renders {fingerprint}/{rubric}: "
                       "retrain it with `synth probe train`")


def fit(vectors: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """A logistic regression (L2, its strength chosen by 5-fold cross-validated log-loss) on
    standardized vectors; labels 不安全 = 1. The record's numeric part."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.preprocessing import StandardScaler

    from synth.output_parsing import UNSAFE

    y = np.array([label == UNSAFE for label in labels], dtype=int)
    if len(set(y.tolist())) < 2:
        raise BadInput("probe train: the gold pairs must hold both labels")
    scaler = StandardScaler().fit(vectors)
    scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    model = LogisticRegressionCV(Cs=np.logspace(-4, 1, 11).tolist(), cv=5, scoring="neg_log_loss",
                                 max_iter=5000).fit((vectors - scaler.mean_) / scale, y)
    return {"mean": scaler.mean_.tolist(), "scale": scale.tolist(), "coef": model.coef_[0].tolist(),
            "intercept": float(model.intercept_[0]), "C": float(model.C_[0]),
            "train_accuracy": float((model.predict((vectors - scaler.mean_) / scale) == y).mean())}


def check_no_overlap(gold: dict[str, dict[str, Any]], gold_path: Path, config) -> None:
    """A gold item a configured probe was trained on would measure the probe on its own training
    data: a `BadInput` naming the first such item and the probe."""
    for role in config.roles.judges:
        if role.probe is None:
            continue
        probe = read_probe(Path(role.probe), f"roles.judges {role.name}: probe")
        for row_id, g in gold.items():
            if item_hash(g["question"], g["response"]) in probe.trained_on:
                raise BadInput(f"{gold_path}: gold pair {row_id!r} is a training item of judge {role.name!r}'s probe "
                               f"{role.probe}: measure a probe on pairs it was not trained on")


# -- question probes -------------------------------------------------------------------------
QUESTION_PROBE = "question"  # the record's `kind`


@dataclass(frozen=True)
class QuestionProbe:
    """A trained question probe (module docstring): `harm` is P(harmful) of one pooled state,
    `topic` its subcategory id and that class's probability."""

    path: str
    sha256: str
    mean: np.ndarray
    scale: np.ndarray
    harm_coef: np.ndarray
    harm_intercept: float
    classes: tuple[str, ...]
    topic_coef: np.ndarray  # classes x dims
    topic_intercept: np.ndarray
    trained_on: frozenset[str]  # item hashes (item_hash(text, ""))
    model: str = ""  # the model it reads the states of
    prompt: str = ""  # question_probe_fingerprint of the prompt it was trained on

    @property
    def dims(self) -> int:
        return len(self.mean)

    def harm(self, vector: np.ndarray) -> float:
        z = float(((vector - self.mean) / self.scale) @ self.harm_coef + self.harm_intercept)
        return float(1.0 / (1.0 + np.exp(-z)))

    def topics(self, vector: np.ndarray, requested: str = "", prior: float | None = None) -> np.ndarray:
        """P(class) of one pooled state, one per `classes`. With `prior` (the share of a writer's
        questions that are about the subcategory it was asked for) and the `requested` class, the
        request is evidence too: Bayes' rule with prior `prior` on the requested class and the rest
        spread evenly over the others. The head was fitted with balanced class weights, so its own
        probabilities carry no class prior of their own (fit_question)."""
        z = self.topic_coef @ ((vector - self.mean) / self.scale) + self.topic_intercept
        p = np.exp(z - z.max())
        if prior is not None and requested in self.classes:
            weights = np.full(len(p), (1.0 - prior) / (len(p) - 1))
            weights[self.classes.index(requested)] = prior
            p = p * weights
        return p / p.sum()

    def topic(self, vector: np.ndarray, requested: str = "", prior: float | None = None) -> tuple[str, float]:
        """The most likely class of one pooled state and its probability (`topics`)."""
        p = self.topics(vector, requested, prior)
        best = int(p.argmax())
        return self.classes[best], float(p[best])


def read_question_probe(path: Path, where: str = "") -> QuestionProbe:
    """A question probe record; a `BadInput` naming the file and field when it is missing or malformed."""
    where = f"{where} {path}" if where else str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise BadInput(f"{where}: cannot read the probe ({e.strerror or e}); "
                       "`synth probe train --questions` writes one") from None
    try:
        record = json.loads(raw.decode("utf-8"))
        if record.get("kind") != QUESTION_PROBE:
            raise ValueError(f"kind is {record.get('kind')!r}, not {QUESTION_PROBE!r}: a pair judge's probe?")
        mean, scale, harm = (np.asarray(record[k], dtype=np.float64) for k in ("mean", "scale", "harm_coef"))
        topic = np.asarray(record["topic_coef"], dtype=np.float64)
        probe = QuestionProbe(str(path), hashlib.sha256(raw).hexdigest()[:16], mean, scale, harm,
                              float(record["harm_intercept"]), tuple(str(c) for c in record["classes"]), topic,
                              np.asarray(record["topic_intercept"], dtype=np.float64),
                              frozenset(str(h) for h in record["trained_on"]), str(record.get("model", "")),
                              str(record.get("prompt", "")))
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise BadInput(f"{where}: not a question probe record ({type(e).__name__}: {e})") from None
    if not (mean.shape == scale.shape == harm.shape and mean.ndim == 1 and len(mean)) or (scale <= 0).any() \
            or topic.shape != (len(probe.classes), len(mean)) or probe.topic_intercept.shape != (len(probe.classes),):
        raise BadInput(f"{where}: mean, scale and harm_coef must be vectors of one length, scale > 0, and "
                       "topic_coef one such row per class")
    return probe


def fit_question(vectors: np.ndarray, harmful: list[bool], subcategories: list[str],
                 groups: list[int]) -> dict[str, Any]:
    """Both heads of a question probe on standardized vectors, each an L2 logistic regression with
    its strength chosen by 5-fold cross-validated log-loss, the folds split by `groups` (an item
    and its question form are one group: apart, the fold would test on its own training item);
    classes weighted by their frequency (the seed pools hold 24 to 184 items per scenario). Items of
    topic `other` (seeds/probe_negatives.yaml) train the topic head only: taught that a short question
    about nothing is benign, the harm head called short real harmful questions benign too (public
    harm accuracy 0.657 → 0.550, BENCHMARKS.md). The record's numeric part."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import GroupKFold
    from sklearn.preprocessing import StandardScaler

    from synth.output_parsing import OTHER_SUBCATEGORY

    if len(set(harmful)) < 2 or len(set(subcategories)) < 2:
        raise BadInput("probe train --questions: the seed pools must hold harmful and benign items "
                       "of at least two subcategories")
    scaler = StandardScaler().fit(vectors)
    scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    x = (vectors - scaler.mean_) / scale
    cs = np.logspace(-4, 0, 9).tolist()
    y_harm, y_topic = np.array(harmful, dtype=int), np.array(subcategories)
    about = y_topic != OTHER_SUBCATEGORY
    harm_folds = list(GroupKFold(n_splits=5).split(x[about], y_harm[about], np.asarray(groups)[about]))
    harm = LogisticRegressionCV(Cs=cs, cv=harm_folds, scoring="neg_log_loss",
                                max_iter=5000).fit(x[about], y_harm[about])
    folds = list(GroupKFold(n_splits=5).split(x, y_harm, groups))
    topic = LogisticRegressionCV(Cs=cs, cv=folds, scoring="neg_log_loss", max_iter=5000,
                                 class_weight="balanced").fit(x, y_topic)
    return {"kind": QUESTION_PROBE, "mean": scaler.mean_.tolist(), "scale": scale.tolist(),
            "harm_coef": harm.coef_[0].tolist(), "harm_intercept": float(harm.intercept_[0]), "harm_C": float(harm.C_[0]),
            "classes": [str(c) for c in topic.classes_], "topic_coef": topic.coef_.tolist(),
            "topic_intercept": topic.intercept_.tolist(), "topic_C": float(topic.C_[0]),
            "train_accuracy": {"harm": float((harm.predict(x[about]) == y_harm[about]).mean()),
                               "topic": float((topic.predict(x) == y_topic).mean())}}


def question_probe_fingerprint(catalog) -> str:
    """The prompt a question probe reads, as a hash of its `probe` form rendered for one fixed
    question in both styles: any edit of that form invalidates the probe (retrain it)."""
    forms = catalog.question_judge.probe
    rendered = [catalog.render(forms, style, {"question": "〈问题〉", "scenarios": catalog.taxonomy}, "probe")
                for style in ("chat", "completion")]
    text = json.dumps([[r.system, r.prompt] for r in rendered], ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def question_items(catalog, negatives: list[str] = ()) -> list[tuple[str, bool, str, int]]:
    """What a question probe is trained on, from the seed pools of the config's scenarios:
    (text, harmful, subcategory id, group), every descriptor as written and as a question, the
    two one group; and each of `negatives` (seeds/probe_negatives.yaml: question-shaped text
    about nothing) of topic `other`, a group of its own (its harm flag False, unread: fit_question
    keeps `other` items out of the harm head)."""
    from synth.output_parsing import OTHER_SUBCATEGORY

    items = []
    for scenario in catalog.scenarios.values():
        for pool, harmful, ask in ((scenario.pools.behaviors, True, "怎么{}？"),
                                   (scenario.pools.benign_topics, False, "关于{}，有哪些需要了解的？")):
            for sub, texts in pool.items():
                for text in texts:
                    group = len(items) // 2
                    items += [(text, harmful, sub, group), (ask.format(text), harmful, sub, group)]
    groups = len(items) // 2
    items += [(text, False, OTHER_SUBCATEGORY, groups + i) for i, text in enumerate(negatives)]
    return items


def check_no_question_overlap(gold: dict[str, dict[str, Any]], gold_path: Path, config) -> None:
    """A gold question a configured question probe was trained on: a `BadInput` naming it."""
    for role in config.roles.question_judges:
        if role.probe is None:
            continue
        probe = read_question_probe(Path(role.probe), f"roles.question_judges {role.name}: probe")
        for row_id, g in gold.items():
            if item_hash(g["question"], "") in probe.trained_on:
                raise BadInput(f"{gold_path}: gold question {row_id!r} is a training item of question judge "
                               f"{role.name!r}'s probe {role.probe}: measure a probe on questions it was not "
                               "trained on")
