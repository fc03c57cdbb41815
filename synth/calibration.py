"""Calibration records: the thresholds a build labels with, and where they came from.

`synth eval-judges GOLD --config C --calibrate --target T --save FILE` picks the thresholds
of the labelling rule (synth.scoring.label) that meet target T on the gold pairs, and
writes them to FILE with what they were measured on. A config points at it with
`annotate.rule.calibration: FILE`; the build then labels with its thresholds and its
manifest records them, the record's hash, its gold files and its judges' signature.

A record is JSON:
    {"thresholds": {"t_safe": .., "t_unsafe": .., "margin": null | .., "combine": "mean"},
     "target": "precision_unsafe=0.9", "met": true, "gold": [...], "judges_signature": "..",
     "figures": {...}, "at": "..."}
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from synth.errors import BadInput
from synth.scoring import COMBINE


def _check_thresholds(thresholds: Any, where: str) -> dict[str, Any]:
    if not isinstance(thresholds, dict):
        raise BadInput(f"{where}: 'thresholds' must be an object with t_safe, t_unsafe, margin, combine")
    out: dict[str, Any] = {}
    for key in ("t_safe", "t_unsafe"):
        value = thresholds.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise BadInput(f"{where}: thresholds.{key} must be a number in [0, 1], got {value!r}")
        out[key] = float(value)
    if out["t_safe"] > out["t_unsafe"]:
        raise BadInput(f"{where}: thresholds.t_safe ({out['t_safe']:g}) is above t_unsafe ({out['t_unsafe']:g})")
    margin = thresholds.get("margin")
    if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float))
                               or not 0.0 <= margin <= 1.0):
        raise BadInput(f"{where}: thresholds.margin must be null or a number in [0, 1], got {margin!r}")
    out["margin"] = None if margin is None else float(margin)
    combine = thresholds.get("combine", "mean")
    if combine not in COMBINE:
        raise BadInput(f"{where}: thresholds.combine must be one of {', '.join(COMBINE)}, got {combine!r}")
    out["combine"] = combine
    return out


def read_calibration(path: Path, where: str = "") -> dict[str, Any]:
    """A calibration record, its thresholds checked; a `BadInput` naming the file and field."""
    where = f"{where} {path}" if where else str(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise BadInput(f"{where}: cannot read the calibration record: {e.strerror or e}") from None
    try:
        record = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise BadInput(f"{where}: not a JSON calibration record: {e}") from None
    if not isinstance(record, dict):
        raise BadInput(f"{where}: a calibration record is a JSON object")
    record["thresholds"] = _check_thresholds(record.get("thresholds"), where)
    record["sha256"] = hashlib.sha256(raw).hexdigest()[:16]
    return record


def write_calibration(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def effective_rule(config) -> dict[str, Any]:
    """The rule a build labels with: the config's thresholds, or its calibration record's
    (with where they came from), and each judge's weight in the order of roles.judges (a judge
    missing from `weights` weighs 0). What the annotate stage's signature and the manifest hold."""
    rule = config.annotate.rule
    weights = [float((rule.weights or {}).get(role.name, 1.0 if rule.weights is None else 0.0))
               for role in config.roles.judges]
    if rule.calibration is None:
        return {"combine": rule.combine, "t_safe": rule.t_safe, "t_unsafe": rule.t_unsafe, "margin": rule.margin,
                "judges_agree": rule.judges_agree, "weights": weights, "calibration": None}
    record = read_calibration(Path(rule.calibration), "annotate.rule.calibration")
    return {**record["thresholds"], "judges_agree": rule.judges_agree, "weights": weights, "calibration": {
        "path": str(rule.calibration), "sha256": record["sha256"], "target": record.get("target"),
        "met": record.get("met"), "gold": record.get("gold"), "judges_signature": record.get("judges_signature")}}


def is_libra_rule(rule: dict[str, Any]) -> bool:
    """0.5/0.5, no margin: the Libra rule (agree → label, disagree → 有争议), whatever the combine."""
    return rule["t_safe"] == rule["t_unsafe"] == 0.5 and rule["margin"] is None
