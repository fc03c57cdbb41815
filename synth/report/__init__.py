"""The build report: `<build>/report/{index.html, README.md, report.json, plots/*.png}`.

Written at the end of every build and by `synth report BUILD_DIR`. It reads only
the build directory (manifest, stage outputs, exports), so it can be regenerated
at any time. Sections: the funnel from elements to exported rows with every
reject reason, the hard pool by reason, judge failures, label × scenario and
subcategory coverage (gaps flagged), where a question judge ran coverage by request and
by content side by side, the scorecard per template and subcategory
(synth/report/scorecard.py), length distributions, judge agreement per
scenario and per judge pair, refusal rate per responder, dialogues per strategy and scenario
(where the build wrote conversations), dedup rates, rows removed
per evaluation set (decontamination), question diversity, balance, tokens and wall
time per stage. The dataset card (`corpus/README.md`) gets the headline numbers in a
marked block.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from synth.errors import BadInput

CARD_BEGIN = "<!-- synth-report:begin -->"
CARD_END = "<!-- synth-report:end -->"


def write_report(build: Path, out: Path | None = None) -> Path:
    """Write the report of the build in `build` into `out` (default `<build>/report/`); return its index.html."""
    from synth.report.collect import collect, corpus_lengths
    from synth.report.render import headline_block, to_html, to_markdown

    build = Path(build)
    if not (build / "manifest.json").is_file():
        raise BadInput(f"{build}: not a finished build (no manifest.json)")
    out = Path(out) if out else build / "report"
    numbers = collect(build)

    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "plots").mkdir(parents=True)
    lengths = corpus_lengths(build)
    raw = {field: {label: lengths.loc[lengths["label"] == label, field].tolist()
                   for label in ("安全", "不安全")} for field in ("question", "response")} if len(lengths) else {}
    try:
        from synth.report.plots import render_plots
    except ImportError:  # matplotlib missing: the report without its plots, and say so
        numbers["plots_missing"] = "matplotlib is not installed (pip install matplotlib): no plots"
        plots = {}
    else:
        plots = render_plots({**numbers, "_lengths_raw": raw}, tmp / "plots")
    (tmp / "report.json").write_text(json.dumps(numbers, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    (tmp / "index.html").write_text(to_html(numbers, plots, tmp / "plots"), encoding="utf-8")
    (tmp / "README.md").write_text(to_markdown(numbers, plots), encoding="utf-8")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)

    card = build / "corpus" / "README.md"
    if card.is_file():
        update_card(card, headline_block(numbers))
    return out / "index.html"


def update_card(card: Path, block: str) -> None:
    """Put `block` between the report markers of the dataset card (replacing an earlier one)."""
    text = card.read_text(encoding="utf-8")
    marked = f"{CARD_BEGIN}\n{block}\n{CARD_END}"
    pattern = re.compile(re.escape(CARD_BEGIN) + r".*?" + re.escape(CARD_END), re.DOTALL)
    text = pattern.sub(lambda _: marked, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + marked + "\n"
    tmp = card.with_name(f".{card.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, card)


def report_numbers(build: Path) -> dict[str, Any]:
    from synth.report.collect import collect

    return collect(Path(build))


__all__ = ["write_report", "report_numbers", "update_card"]
