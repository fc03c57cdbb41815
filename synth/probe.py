"""A probe judge: a logistic regression over a model's own hidden states for the judge prompt.

A small model often knows more than it says: its generated verdict can be at chance while its
hidden states for the same (question, answer) separate 不安全 from 安全 (issue 28 measured it).
This is how guards are built from small models: read the prompt once (vLLM's pooling runner,
mean-pooled last hidden states; `task: embed` on the model), and score it with a classifier
trained on labelled pairs. One forward pass, no analysis.

    synth probe train GOLD.jsonl [GOLD2 ...] --config C --judge judge-probe --out probes/p.json

renders the judge prompt of that role for every gold pair, as the build does, reads the pooled
states through the build's engine, fits scikit-learn's `LogisticRegressionCV` on standardized
states, and writes the probe: its weights, the model and prompt it was trained with, the hash of
every training item (question + answer), and a hash of the whole record. A judge role with
`probe: FILE` then scores with it: `unsafe_score` = the probe's probability, its verdict the
side of 0.5, score_source `probe`. `synth eval-judges` refuses gold items the probe was trained
on (exit 2, naming them).

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


def judge_prompt_fingerprint(catalog, rubric_id: str | None) -> str:
    """The judge prompt a probe reads, as a hash of it rendered for one fixed pair in both styles
    (no judge fields, no examples): an edit of templates/shared/judge.yaml that leaves that prompt
    as it was (e.g. a block that renders only with examples) keeps a probe valid; any other does not."""
    rubric = catalog.rubric(rubric_id).model_dump()
    rendered = [catalog.render(catalog.judge, style, {"question": "〈问题〉", "response": "〈回答〉", "rubric": rubric,
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
