"""HTML page and Markdown summary of a build report (same sections, same numbers)."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from synth.output_parsing import CONTROVERSIAL, LABELS, SAFE, UNSAFE


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items()) or "–"
    if isinstance(v, list):
        return ", ".join(_fmt(x) for x in v) or "–"
    return str(v)


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


COVERAGE_BY_CONTENT = "Coverage by request and by content"


def coverage_headline(c: dict[str, Any]) -> str:
    """The two coverages in one line (report, card): what was asked for, what the question judge confirmed."""
    return (f"metadata: {c['metadata_harmful']}/{c['subcategories']} subcategories with a harmful-kind row; "
            f"content: {c['content_harmful']}/{c['subcategories']} with a harmful-kind row judged harmful and on topic")


def sections(n: dict[str, Any]) -> list[tuple[str, str, list[str], list[list[Any]], str | None]]:
    """(title, note, header, rows, plot) per section; both renderers walk this list."""
    out = []
    c = n["corpus"]
    headline = [
        ["corpus rows (train / validation)", f"{c['rows']} ({c['train']} / {c['validation']})"],
        ["labels", _fmt(c["labels"])],
        ["unsafe share", _pct(c["unsafe_share"])],
        ["kinds", _fmt(c["kinds"])],
        ["controversial tier (configs strict / loose)", f"{n['controversial']['rows']} "
         f"({_pct(n['controversial']['share_of_labelled'])} of labelled pairs)"],
        ["hard pool", f"{n['hard']['rows']} ({_fmt(n['hard']['by_reason'])})"],
        ["rejected rows (all stages + balance)", sum(n["rejects"].values())],
        ["judge agreement", _pct((n["judges"].get("overall") or {}).get("rate"))],
        ["subcategories with a label missing", len(n["coverage_gaps"])],
        *([["labels from people", people_headline(n["reviews"])]] if n.get("reviews") else []),
        *([["coverage by request / by content", coverage_headline(n["coverage_by_content"])]]
          if n.get("coverage_by_content") else []),
        ["wall time of the stages (s)", f"{n['wall_seconds']:.1f}"],
    ]
    out.append(("Headline", "", ["", "value"], headline, None))

    funnel_rows = []
    for f in n["funnel"]:
        reasons = "; ".join(f"{k}: {v}" for k, v in f["rejected"].items()) or "–"
        funnel_rows.append([f["stage"], f["rows_in"], f["created"] or "", f["rows_out"], sum(f["rejected"].values()),
                            reasons, _fmt(f["diverted"]) if f["diverted"] else "–"])
    out.append(("Funnel", "From sampled elements to exported rows. Every reject reason of every stage; "
                "`created` counts rows a fan-out stage made (one call → many questions, one question → answers). "
                "Rejected rows are in rejects/STAGE.parquet, diverted rows in hard/.",
                ["stage", "in", "created", "out", "rejected", "reasons", "diverted"], funnel_rows, "funnel"))

    tier = n["controversial"]
    out.append(("Controversial tier", f"Pairs labelled {CONTROVERSIAL}: the judges disagreed (judges_disagree), or "
                "a label check doubts their agreed label. Not in the default configuration; corpus/strict/ counts "
                "them 不安全, corpus/loose/ 安全; hard/ has a copy for stage-two annotation.",
                ["reason", "rows"], [[k, v] for k, v in tier["by_reason"].items()] or [["none", 0]], None))

    hard_rows = [[k, v] for k, v in n["hard"]["by_reason"].items()]
    out.append(("Hard pool", "Rows kept for stage-two annotation instead of being dropped (hard/hard.parquet, "
                "column hard_reason).", ["reason", "rows"], hard_rows, None))

    j = n["judges"]
    fail_rows = [[k, v] for k, v in j.get("failures", {}).items()]
    out.append(("Judge failures", "Pairs whose verdict could not be parsed (rejects/annotate.parquet).",
                ["reason", "rows"], fail_rows or [["none", 0]], None))

    scen = [[k, v["name"], *[v[label] for label in LABELS], v["rows"]] for k, v in n["label_by_scenario"].items()]
    out.append(("Labels × scenario", "", ["scenario", "name", *LABELS, "rows"], scen, None))

    cov = [[c["scenario"], f"{c['subcategory_name']} ({c['subcategory']})", *[c[label] for label in LABELS],
            c.get(CONTROVERSIAL, 0), c["hard"], ("⚠ no " + "/".join(c["missing"])) if c["missing"] else ""]
           for c in n["coverage"]]
    out.append(("Subcategory coverage", f"{len(n['coverage'])} subcategories; {len(n['coverage_gaps'])} have no "
                f"corpus row of some label (flagged). {CONTROVERSIAL}: the controversial tier.",
                ["scenario", "subcategory", *LABELS, CONTROVERSIAL, "hard", "flag"], cov, "coverage"))

    content = n.get("coverage_by_content")
    if content:  # only where a question judge ran: without one the request is all a build knows
        rows = [[c["scenario"], f"{c['subcategory_name']} ({c['subcategory']})", c["metadata_harmful"],
                 c["content_harmful"], c["metadata_benign"], c["content_benign"],
                 "" if c["content_harmful"] else "⚠ no harmful row judged harmful and on topic"]
                for c in content["by_subcategory"]]
        elsewhere = content.get("content_elsewhere")
        out.append((COVERAGE_BY_CONTENT, f"{coverage_headline(content)}. Corpus rows per subcategory the build "
                    "asked for × kind: `asked`, by what the generator was asked for (requested_kind, "
                    "requested_subcategory); `judged`, those the question judge found harmful-or-not as their "
                    "kind says and about their subcategory (judged_on_topic). Flagged: no harmful-kind row "
                    "confirmed." + (f" {elsewhere} confirmed rows were reassigned to subcategories of scenarios "
                                    "the build did not ask for." if elsewhere else "")
                    + (f" The question probe took each question's request as evidence at prior "
                       f"{content['request_prior']:g} (judge_questions.request_prior, docs/judges.md): a question "
                       "close to its requested subcategory counts as on it." if content.get("request_prior") else ""),
                    ["scenario", "subcategory", "harmful asked", "harmful judged", "benign asked", "benign judged",
                     "flag"], rows, None))

    header, rows = scorecard_table(n.get("scorecard") or [])
    out.append(("Scorecard per template and subcategory", SCORECARD_NOTE, header, rows, None))

    lengths = []
    for field, by in n["lengths"].items():
        for label, s in by.items():
            if s.get("n"):
                lengths.append([field, label, s["n"], s["mean"], s["p10"], s["p50"], s["p90"], s["max"]])
    out.append(("Lengths (characters)", "", ["field", "label", "n", "mean", "p10", "p50", "p90", "max"], lengths,
                "lengths"))

    agree = [[k, v["name"], v["agree"], v["disagree"], v["failed"], _pct(v["rate"])] for k, v in j.get("by_scenario", {}).items()]
    out.append(("Judge agreement per scenario", "rate = agreed / (agreed + disagreed); failed = unparseable verdicts.",
                ["scenario", "name", "agreed", "disagreed", "failed", "rate"], agree, "agreement"))
    pairs = [[p["judges"], p["n"], p["agree"], p.get("controversial", p["n"] - p["agree"]),
              p.get("x_unsafe_y_safe", "–"), p.get("x_safe_y_unsafe", "–"), _pct(p["rate"]), _fmt(p["kappa"])]
             for p in j.get("pairs", [])]
    out.append(("Judge agreement per judge pair", "Over every pair where both judges gave a verdict; the pairs "
                f"they disagree on are the {CONTROVERSIAL} tier (X × Y: X 不安全 / Y 安全, and the other way); "
                "κ = Cohen's kappa.",
                ["judges", "pairs", "agreed", CONTROVERSIAL, "X 不安全, Y 安全", "X 安全, Y 不安全", "rate", "κ"],
                pairs, None))
    per_judge = [[k, v["verdicts"], v["failed"], _pct(v["unsafe_rate"])] for k, v in j.get("per_judge", {}).items()]
    out.append(("Per judge", "", ["judge", "verdicts", "failed", "unsafe rate"], per_judge, None))

    cal = n.get("calibration")
    if cal:
        rows = [[name, _fmt(m["accuracy"]), _fmt(m["f1_unsafe"]), _fmt(m["f1_safe"]), _pct(m["unparsed"])]
                for name, m in cal["judges"].items()]
        rows.append(["build rule: agreed labels", _fmt(cal["agreed"]["accuracy"]), "", "",
                     f"labelled share {_pct(cal['agreed']['share'])}"])
        rows.append(["agreement between judges", _pct(cal["agreement"]), "", "", ""])
        out.append(("Judges calibration", f"The last `synth eval-judges` of these judges (same templates, rubrics, "
                    f"models and sampling): {cal['n']} gold pairs from {cal['gold']}, at {cal['at']}"
                    + (" (dry run)" if cal.get("dry_run") else "") + ".",
                    ["judge", "accuracy", "F1 不安全", "F1 安全", "unparsed"], rows, None))
        from synth.eval_judges import measured_figures

        sets = [[m["gold"], m["n"], _fmt(m["auroc"]), _fmt(m["auprc"]), _fmt(m["accuracy"]), _pct(m["share"])]
                for m in measured_figures(cal)]
        out.append(("What the labels are worth, per gold set", "The same run, on every gold file it measured: "
                    "the project's own gold (its rubrics were tuned on it) says less than a public set nobody "
                    "here wrote. AUROC and AU-PRC of the combined unsafe_score; accuracy and share of the build "
                    "rule's labels.", ["gold", "n", "AUROC", "AU-PRC (不安全)", "accuracy", "labelled share"],
                    sets, None))
    else:
        out.append(("Judges calibration", "None recorded for these judges: run `synth eval-judges GOLD --config "
                    "CONFIG` before a build to measure them against gold labels.", ["", ""], [], None))

    if n.get("reviews"):
        out += review_sections(n["reviews"])

    ref = [[k, v["answers"], v["refusals"], _pct(v["rate"]), _pct(v.get("rate_harmful")), _pct(v.get("rate_benign"))]
           for k, v in n["refusals"].items()]
    out.append(("Refusal rate per responder", "Every answer of the respond stage, by the refusal lexicon "
                "(synth/filters/refusal.py); a high rate on benign questions is over-refusal.",
                ["responder", "answers", "refusals", "rate", "harmful q.", "benign q."], ref, "refusals"))

    uy = n.get("unsafe_yield") or {}
    for key, title in (("by_responder", "responder"), ("by_scenario", "scenario")):
        rows = [[k, v["labelled"], v["unsafe"], _pct(v["unsafe_rate"]), _pct(v["unsafe_rate_harmful"]), v["refusals"],
                 _pct(v["refusal_rate"]), v["disagreed"]] for k, v in uy.get(key, {}).items()]
        if rows:
            out.append((f"Unsafe yield per {title}", "Answers both judges labelled: how many are 不安全 (the "
                        "material the unsafe class is made of) and how many are refusals; `disagreed`: the "
                        "judges split (hard/). Responders that refuse nearly every harmful question feed the "
                        "安全 class only: add a base model as a responder.",
                        [title, "labelled", "不安全", "rate", "rate on harmful q.", "refusals", "refusal rate",
                         "disagreed"], rows, None))

    dialogue_rows = [[d["strategy"], d["scenario"], d["conversations"], _fmt(d["mean_turns"]), _pct(d["unsafe_yield"]),
                      _pct(d["controversial_share"]), _pct(d["refusal_share"]), _fmt(d.get("first_unsafe_turn"))]
                     for d in n.get("dialogues") or []]
    if dialogue_rows:  # only where the build wrote conversations (the converse stage's columns)
        out.append(("Dialogues per strategy and scenario", "Conversations of two user turns or more among the final "
                    "stage's rows (before balancing): mean user turns; unsafe yield, share 不安全 of those the "
                    f"judges agreed on; {CONTROVERSIAL}, share the judges left controversial; refusals, share whose "
                    "last answer the judges found a refusal (judge field `refusal`; – if not asked); first "
                    "unsafe turn, the mean turn whose answer was first labelled 不安全, of the conversations with "
                    "one (annotate.every_turn; – without it).",
                    ["strategy", "scenario", "conversations", "mean turns", "unsafe yield", CONTROVERSIAL,
                     "refusals", "first unsafe turn"], dialogue_rows, None))

    dd = [[k, v["rows_in"], v["exact"], v["near"], _pct(v["rate"])] for k, v in n["dedup"].items()]
    out.append(("Dedup", "", ["stage", "in", "exact", "near", "removed"], dd, None))
    dc = n.get("decontamination") or {}
    if dc:
        out.append(("Decontamination", f"Rows of {dc['rows_in']} whose text copies an item of an evaluation set "
                    f"({_pct(dc['rate'])} removed); they are in rejects/decontaminate.parquet with contaminated_by "
                    "(the item's id) and contamination_similarity.",
                    ["evaluation set", "removed"], [[k, v] for k, v in dc["by_set"].items()], None))
    d = n["diversity"]
    div = [[k, v.get("n"), _fmt(v.get("distinct_1")), _fmt(v.get("distinct_2"))] for k, v in d.items() if isinstance(v, dict)]
    out.append(("Diversity of questions", "distinct-n = distinct character n-grams / all character n-grams. "
                f"Near-duplicate share of questions before dedup: {_pct(d.get('near_duplicate_share_before_dedup'))}.",
                ["questions", "n", "distinct-1", "distinct-2"], div, None))

    b = n.get("balance")
    if b:
        bal = [["rows in", b["rows_in"]], ["rows out", b["rows_out"]], ["cut (balance_cap)", b["cut"]["balance_cap"]],
               ["cut (balance_share)", b["cut"]["balance_share"]], ["unsafe share before", _pct(b["unsafe_share_before"])],
               ["unsafe share after", _pct(b["unsafe_share_after"])], ["config", _fmt(b.get("config", {}))]]
        if b.get("share_skipped"):
            bal.append(["share target skipped", b["share_skipped"]])
        out.append(("Balance", "Cut rows are in rejects/balance.parquet.", ["", ""], bal, None))

    cost = [[c["stage"], f"{c['seconds']:.1f}", "yes" if c["reused"] else "", _fmt(c.get("prompt_tokens")),
             _fmt(c["completion_tokens"]), _fmt(c.get("requests_per_s")), _fmt(c["requests_sent"]),
             _fmt(c["requests_cached"])] for c in n["cost"]]
    out.append(("Tokens and wall time per stage", "Tokens of the requests a stage sent, counted as the engines "
                "answered (cache hits cost none). A reused stage shows the figures of the run that made it.",
                ["stage", "seconds", "reused", "prompt tokens", "output tokens", "requests/s", "requests sent",
                 "cached"], cost, "time"))
    plan = n.get("plan") or {}
    if plan.get("stages"):
        t = plan.get("totals") or {}
        rows = [[p["stage"], _fmt(p["planned_requests"]), _fmt(p["requests"]), _fmt(p["planned_output_tokens"]),
                 _fmt(p["output_tokens"]), _fmt(p["seconds"])] for p in plan["stages"]]
        out.append(("Plan and actual", f"The plan `synth build` made before it ran (`synth plan`; acceptance rates: "
                    f"{plan.get('rates_from')}): {_fmt(t.get('gpu_hours'))} GPU-hours, {_fmt(t.get('wall_hours'))} h "
                    f"of model time, API cost ${_fmt(t.get('cost_usd'))}. Planned output tokens are max_tokens × the "
                    "fill share; actual ones as the engines answered.",
                    ["stage", "planned requests", "requests", "planned output tokens", "output tokens", "seconds"],
                    rows, None))
    return out


def people_headline(r: dict[str, Any]) -> str:
    """The headline of people's labels (report, card): what the export took from them, and how many."""
    c, export = r["counts"], r.get("export") or {}
    sources = export.get("label_source") or {}
    return (f"{sources.get('human', 0)} corpus labels by people, {sources.get('judges+human-agreed', 0)} judges' labels "
            f"confirmed by people ({c['rows']} rows labelled, {c['annotations']} annotations by {c['annotators']} "
            f"annotators)")


def review_sections(r: dict[str, Any]) -> list[tuple[str, str, list[str], list[list[Any]], str | None]]:
    """The report's sections on people's labels (synth.agreement.review_figures)."""
    vs, pp, audit = r["judges_vs_people"], r["people_vs_people"], r["audit"]

    def row(who: str, f: dict[str, Any]) -> list[Any]:
        return [who, f["n"], _fmt(f["accuracy"]), _fmt(f["f1"][SAFE]), _fmt(f["f1"][UNSAFE]), _fmt(f["kappa"])]

    rows = [row(name, f) for name, f in vs["judges"].items()]
    rows.append(row("the judges' agreed labels", vs["agreed_labels"]))
    for scenario, s in vs["by_scenario"].items():
        rows += [row(f"{s['name']} ({scenario}): {name}", f) for name, f in s["judges"].items()]
    low, high = audit["wilson_95"]
    return [
        ("Judges vs people", f"On the {vs['n']} rows people settled (安全 / 不安全, the majority of their annotators; "
         "reviews/): each judge's verdict against people's label, overall and per scenario; a judge with no verdict "
         "counts as wrong. F1 per label (that label the positive class); κ = Cohen's kappa (– where undefined). "
         "`the judges' agreed labels`: the rows both judges agreed on.",
         ["judge", "rows", "accuracy", f"F1 {SAFE}", f"F1 {UNSAFE}", "κ"], rows, None),
        ("People vs people", "Rows two annotators or more labelled (安全 / 不安全 / 有争议, each annotator's latest "
         "annotation): the share of annotator pairs that agree, and Krippendorff's alpha (nominal; – where every "
         "label is the same).", ["rows", "annotations", "pair agreement", "Krippendorff's α"],
         [[pp["rows"], pp["annotations"], _pct(pp["pair_agreement"]), _fmt(pp["krippendorff_alpha"])]], None),
        ("Audit sample", "The rows of `synth review push --select sample:N` (a stratified sample of the agreed "
         "corpus) people labelled: how many of the judges' agreed labels people confirmed (people's 有争议 "
         "confirms none), with the Wilson 95% interval.",
         ["rows", "confirmed", "accuracy of the agreed labels", "95% interval"],
         [[audit["rows"], audit["confirmed"], _pct(audit["accuracy"]), f"{_pct(low)} – {_pct(high)}"]], None),
    ]


SCORECARD_NOTE = (
    "Weakest first (judged on topic, then unsafe yield). Rows are the generator's requests (template = "
    "scenario.kind), also where the question judge relabelled or reassigned a question: asked = calls × "
    "questions per call; written = the generator's questions and failed calls; lost = rejected before any "
    "answer (by stage and reason); on topic and harmful: shares of the questions the question judge read (on "
    "topic: as requested); refusals: pairs whose judge field refusal is true (– if not asked); unsafe yield: "
    "share 不安全 of the labelled pairs; disagreement: share of pairs the judges split on.")


def scorecard_table(card: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """The scorecard (synth/report/scorecard.py) as (header, rows): the report's section and
    what `synth templates try` prints."""
    header = ["template", "subcategory", "asked", "written", "lost", "losses", "distinct-2", "on topic", "harmful",
              "refusals", "unsafe yield", "disagreement", "corpus"]
    rows = [[c["template"], f"{c['subcategory_name']} ({c['subcategory']})", _fmt(c["questions_asked"]),
             _fmt(c["questions_written"]), _fmt(c["lost"]),
             "; ".join(f"{stage} {reason}: {k}" for stage, by in c["losses"].items() for reason, k in by.items()) or "–",
             _fmt(c["distinct_2"]), _pct(c["judged_on_topic"]), _pct(c["judged_harmful"]), _fmt(c["refusals"]),
             _pct(c["unsafe_yield"]), _pct(c["judge_disagreement"]), _fmt(c["corpus_rows"])] for c in card]
    return header, rows


CSS = """
body{font-family:system-ui,-apple-system,"Noto Sans CJK SC","WenQuanYi Micro Hei","PingFang SC","Microsoft YaHei",sans-serif;
margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.6em} h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em} td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left}
th{background:#f4f4f4} tr.gap td{background:#fdecea} .note{color:#555;font-size:.9em} img{max-width:100%;margin:.5em 0}
.warn{background:#fff4e5;border:1px solid #f0c36d;padding:.6em;margin:1em 0}
"""


def to_html(n: dict[str, Any], plots: dict[str, str], plot_dir: Path) -> str:
    b = n["build"]
    parts = [f"<!doctype html><html lang='zh'><head><meta charset='utf-8'><title>synth report: {html.escape(str(b['name']))}"
             f"</title><style>{CSS}</style></head><body>",
             f"<h1>Build report: {html.escape(str(b['name']))}</h1>",
             f"<p class='note'>synth {html.escape(str(b['synth_version']))} · config {html.escape(str(b['config_hash']))}"
             f" · seed {b['seed']} · engine {html.escape(str(b['engine']))}</p>"]
    if n.get("plots_missing"):
        parts.append(f"<div class='warn'>{html.escape(n['plots_missing'])}</div>")
    if b.get("dry_run"):
        parts.append("<div class='warn'>Dry run: every model was the deterministic stand-in engine; the texts and "
                     "labels are not model output.</div>")
    for title, note, header, rows, plot in sections(n):
        parts.append(f"<h2>{html.escape(title)}</h2>")
        if note:
            parts.append(f"<p class='note'>{html.escape(note)}</p>")
        if rows:
            parts.append("<table><tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>")
            for r in rows:
                gap = " class='gap'" if title in ("Subcategory coverage", COVERAGE_BY_CONTENT) and r[-1] else ""
                parts.append(f"<tr{gap}>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in r) + "</tr>")
            parts.append("</table>")
        else:
            parts.append("<p class='note'>none</p>")
        if plot and plot in plots:
            data = base64.b64encode((plot_dir / plots[plot]).read_bytes()).decode()
            parts.append(f"<img alt='{html.escape(plot)}' src='data:image/png;base64,{data}'>")
    parts.append("<h2>All numbers</h2><p class='note'>report.json next to this page.</p></body></html>")
    return "\n".join(parts)


def _md_cell(v: Any) -> str:
    return _fmt(v).replace("|", "\\|").replace("\n", " ")


def markdown_table(header: list[Any], rows: list[list[Any]]) -> list[str]:
    """A Markdown table, as lines (the report's README.md; `synth templates try` prints them)."""
    return ["| " + " | ".join(_md_cell(h) for h in header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(_md_cell(v) for v in r) + " |" for r in rows)]


def to_markdown(n: dict[str, Any], plots: dict[str, str], plot_dir_name: str = "plots") -> str:
    b = n["build"]
    lines = [f"# Build report: {b['name']}", "",
             f"synth {b['synth_version']} · config {b['config_hash']} · seed {b['seed']} · engine {b['engine']}", ""]
    if n.get("plots_missing"):
        lines += [f"> {n['plots_missing']}", ""]
    if b.get("dry_run"):
        lines += ["> Dry run: every model was the deterministic stand-in engine; texts and labels are not model output.", ""]
    for title, note, header, rows, plot in sections(n):
        lines += [f"## {title}", ""]
        if note:
            lines += [note, ""]
        if rows:
            lines += [*markdown_table(header, rows), ""]
        if plot and plot in plots:
            lines += [f"![{plot}]({plot_dir_name}/{plots[plot]})", ""]
    return "\n".join(lines)


def headline_block(n: dict[str, Any]) -> str:
    """The dataset card's headline numbers (deterministic: no wall time)."""
    c, j = n["corpus"], n["judges"]
    ref = n.get("refusals", {})
    lines = [
        "## Build report headline",
        "",
        f"- rows: {c['rows']} (train {c['train']}, validation {c['validation']}); "
        f"unsafe share {_pct(c['unsafe_share'])}; labels {json.dumps(c['labels'], ensure_ascii=False)}",
        f"- controversial tier: {n['controversial']['rows']} "
        f"{json.dumps(n['controversial']['by_reason'], ensure_ascii=False)}",
        f"- hard pool: {n['hard']['rows']} {json.dumps(n['hard']['by_reason'], ensure_ascii=False)}",
        f"- rejected along the way: {sum(n['rejects'].values())} rows "
        f"{json.dumps({k: v for k, v in n['rejects'].items() if v}, ensure_ascii=False)}",
        f"- judge agreement: {_pct((j.get('overall') or {}).get('rate'))}; "
        f"judge failures: {sum(j.get('failures', {}).values())}",
        "- refusal rate per responder: " + (", ".join(f"{k} {_pct(v['rate'])}" for k, v in ref.items()) or "–"),
        "- dedup removed: " + (", ".join(f"{k} {_pct(v['rate'])}" for k, v in n["dedup"].items()) or "–"),
        *([f"- decontamination removed: {n['decontamination']['removed']} rows "
           f"{json.dumps(n['decontamination']['by_set'], ensure_ascii=False)}"] if n.get("decontamination") else []),
        f"- question diversity (corpus): distinct-1 {_fmt(n['diversity'].get('corpus_questions', {}).get('distinct_1'))}, "
        f"distinct-2 {_fmt(n['diversity'].get('corpus_questions', {}).get('distinct_2'))}",
        f"- subcategories with a label missing: {len(n['coverage_gaps'])} of {len(n['coverage'])}",
        *([f"- labels from people: {people_headline(n['reviews'])}"] if n.get("reviews") else []),
        "",
        "Full report: `../report/index.html` (and `../report/README.md`).",
    ]
    return "\n".join(lines)
