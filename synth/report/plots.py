"""PNG plots of a build report (matplotlib, Agg backend: no display needed).

Plot labels use stage, scenario and subcategory ids (ASCII) unless a CJK font is
installed, so the plots render the same on any machine; the Chinese names are in
the HTML and Markdown tables.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import font_manager  # noqa: E402

LABEL_COLORS = {"安全": "#4c9f70", "不安全": "#d1495b"}
LABEL_EN = {"安全": "safe (安全)", "不安全": "unsafe (不安全)"}
CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans CJK JP", "WenQuanYi Micro Hei", "WenQuanYi Zen Hei", "Source Han Sans SC",
             "SimHei", "Microsoft YaHei", "AR PL UMing CN", "Droid Sans Fallback")


def cjk_font() -> str | None:
    names = {f.name for f in font_manager.fontManager.ttflist}
    return next((f for f in CJK_FONTS if f in names), None)


def _label(label: str, cjk: bool) -> str:
    return LABEL_EN.get(label, label) if cjk else {"安全": "safe", "不安全": "unsafe"}.get(label, label)


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def render_plots(numbers: dict[str, Any], out: Path) -> dict[str, str]:
    """Write the plots into `out` (a directory); return {plot name: file name}."""
    out.mkdir(parents=True, exist_ok=True)
    font = cjk_font()
    cjk = font is not None
    plt.rcParams["font.family"] = [font, "DejaVu Sans"] if font else ["DejaVu Sans"]
    plt.rcParams["axes.unicode_minus"] = False
    files: dict[str, str] = {}

    # Funnel: rows out of every stage, with what each stage rejected and diverted.
    funnel = numbers["funnel"]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(funnel) + 1.2))
    names = [f["stage"] for f in funnel][::-1]
    kept = [f["rows_out"] for f in funnel][::-1]
    rejected = [sum(f["rejected"].values()) for f in funnel][::-1]
    diverted = [sum(f["diverted"].values()) for f in funnel][::-1]
    ax.barh(names, kept, color="#3a6ea5", label="rows out")
    ax.barh(names, rejected, left=kept, color="#d1495b", label="rejected")
    ax.barh(names, diverted, left=[k + r for k, r in zip(kept, rejected)], color="#edae49", label="to hard pool")
    for y, (k, r, d) in enumerate(zip(kept, rejected, diverted)):
        ax.text(k + r + d, y, f" {k}" + (f" (-{r})" if r else "") + (f" (hard {d})" if d else ""), va="center", fontsize=8)
    ax.set_xlabel("rows")
    ax.set_title("Funnel: rows out of each stage")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_xlim(0, max([k + r + d for k, r, d in zip(kept, rejected, diverted)] + [1]) * 1.25)
    files["funnel"] = _save(fig, out / "funnel.png")

    # Coverage: subcategory × label heat map.
    cov = numbers["coverage"]
    if cov:
        import numpy as np

        labels = ["安全", "不安全", "hard"]
        data = np.array([[c[label] for label in labels] for c in cov], dtype=float)
        fig, ax = plt.subplots(figsize=(6, 0.22 * len(cov) + 1.5))
        ax.imshow(data, aspect="auto", cmap="Greens")
        ax.set_xticks(range(len(labels)), [_label(x, cjk) for x in labels])
        ax.set_yticks(range(len(cov)), [(c["subcategory_name"] if cjk else c["subcategory"]) for c in cov], fontsize=7)
        for i, c in enumerate(cov):
            for j, label in enumerate(labels):
                v = int(data[i, j])
                ax.text(j, i, str(v), ha="center", va="center", fontsize=7,
                        color="#d1495b" if v == 0 and label != "hard" else "black")
        ax.set_title("Coverage: corpus rows per subcategory × label (0 in red)")
        files["coverage"] = _save(fig, out / "coverage.png")

    # Lengths: question and answer length (characters) by label.
    corpus_lengths = numbers.get("_lengths_raw")
    if corpus_lengths:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
        for ax, field in zip(axes, ("question", "response")):
            for label in ("安全", "不安全"):
                values = corpus_lengths.get(field, {}).get(label, [])
                if values:
                    ax.hist(values, bins=20, alpha=0.6, color=LABEL_COLORS[label], label=_label(label, cjk))
            ax.set_title(f"{field} length (characters)")
            ax.set_xlabel("characters")
            ax.legend(fontsize=8)
        files["lengths"] = _save(fig, out / "lengths.png")

    # Judge agreement per scenario.
    by_scenario = numbers["judges"].get("by_scenario", {})
    if by_scenario:
        fig, ax = plt.subplots(figsize=(7, 3.2))
        keys = list(by_scenario)
        rates = [by_scenario[k]["rate"] or 0 for k in keys]
        ax.bar(range(len(keys)), rates, color="#3a6ea5")
        ax.set_xticks(range(len(keys)), [by_scenario[k]["name"] if cjk else k for k in keys], rotation=30,
                      ha="right", fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_ylabel("agreement rate")
        for i, r in enumerate(rates):
            ax.text(i, r + 0.02, f"{r:.2f}", ha="center", fontsize=8)
        ax.set_title("Judge agreement per scenario (agreed / (agreed + disagreed))")
        files["agreement"] = _save(fig, out / "agreement.png")

    # Refusal rate per responder.
    refusals = numbers.get("refusals", {})
    if refusals:
        fig, ax = plt.subplots(figsize=(6, 2.8))
        keys = list(refusals)
        rates = [refusals[k]["rate"] or 0 for k in keys]
        ax.bar(keys, rates, color="#edae49")
        ax.set_ylim(0, 1)
        ax.set_ylabel("refusal rate")
        for i, r in enumerate(rates):
            ax.text(i, r + 0.02, f"{r:.2f}", ha="center", fontsize=8)
        ax.set_title("Refusal rate per responder (refusal lexicon)")
        files["refusals"] = _save(fig, out / "refusals.png")

    # Wall time per stage.
    cost = numbers.get("cost", [])
    if cost:
        fig, ax = plt.subplots(figsize=(7, 3))
        ax.bar([c["stage"] for c in cost], [c["seconds"] for c in cost], color="#6c757d")
        ax.set_ylabel("seconds")
        ax.tick_params(axis="x", rotation=30, labelsize=8)
        ax.set_title("Wall time per stage (as recorded when the stage last ran)")
        files["time"] = _save(fig, out / "time.png")
    return files
