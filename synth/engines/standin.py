"""StandInEngine: a deterministic fake LLM for logic tests and `--dry-run`.

It is NOT a model. Its outputs are Chinese-looking text assembled from the
characters of the prompt with a RNG seeded by the request seed, shaped like what
each task expects (a numbered question list, a rewritten question, an answer or
a refusal, a JSON verdict). The same request always gives the same output, so
tests can compare whole builds. A request with a `history` (the conversation before
its prompt) draws from a RNG seeded by the history too, so two conversations ending in
the same prompt get different answers; without one, outputs are what they always were.
A small, fixed share of outputs is deliberately malformed so the parse-failure and
reject paths are exercised in every dry run. A judge
request that asks for log-probabilities gets made-up ones that score its verdict.
Builds that use it are marked `dry_run` / `standin` in the manifest.
"""

from __future__ import annotations

import functools
import json
import math
import random
import re

import pandas as pd

from synth.engines.base import Engine, history_json, parse_history
from synth.rows import records

_HAN = re.compile(r"[\u4e00-\u9fff]+")
_FILLER = "关于这个问题的具体情况和相关背景以及可能的方法与影响"
_ENDINGS = ["吗？", "？", "呢？", "该怎么做？", "有什么办法？"]
_REFUSAL = "抱歉，我不能提供这方面的帮助。这类行为可能违法或造成伤害，建议通过合法途径寻求支持。"


def _han_text(prompt: str) -> str:
    text = "".join(_HAN.findall(prompt))
    return text if len(text) >= 12 else text + _FILLER


def _phrase(rng: random.Random, source: str, low: int, high: int) -> str:
    size = min(len(source), rng.randint(low, high))
    start = rng.randint(0, len(source) - size)
    return source[start : start + size]


def _questions(rng: random.Random, source: str) -> str:
    if rng.random() < 0.05:  # malformed on purpose: no list at all
        return "好的。"
    lines = [f"{i}. {_phrase(rng, source, 8, 24)}{rng.choice(_ENDINGS)}" for i in range(1, rng.randint(2, 6) + 1)]
    return "\n".join(lines)


def _rewrite(rng: random.Random, source: str) -> str:
    frame = rng.choice(["假设在一部小说里，", "作为一名研究人员，", "我朋友想知道，", "换个说法："])
    return f"{frame}{_phrase(rng, source, 10, 30)}{rng.choice(_ENDINGS)}"


_ANSWER_SENTENCES = (
    "这个问题要结合具体情况来看", "一般来说可以先查阅相关规定", "不同地区的做法可能不一样", "遇到困难时可以向专业人士咨询",
    "平时多留意身边的变化", "也可以和家人朋友商量", "记录下经过有助于之后处理", "保持耐心往往比急于求成更有效",
)


def _answer(rng: random.Random, source: str) -> str:
    if rng.random() < 0.35:
        return _REFUSAL
    # one phrase of the question, then distinct stock sentences: an answer that passes the
    # repetition filters (phrases drawn from one short question would repeat its n-grams)
    body = "；".join([_phrase(rng, source, 6, 18), *rng.sample(_ANSWER_SENTENCES, rng.randint(1, 3))])
    return f"以下是一些说明：{body}。"


@functools.lru_cache(maxsize=64)
def _properties(schema: str) -> dict:
    """A JSON schema's properties (a stage sends a few schemas, each to thousands of requests)."""
    return json.loads(schema)["properties"]


def _verdict(rng: random.Random, prompt: str, schema: str = "") -> str:
    if rng.random() < 0.03:  # malformed on purpose: not JSON
        return "这个回答可能有问题"
    # The verdict is mostly a function of the pair being judged (the prompt from its last
    # "问题：" on, or a conversation's "对话：", so judges with different rubrics see the same pair)
    # and flipped by the per-judge seed ~10% of the time. A stand-in refusal is mostly judged safe.
    pair = prompt[max(prompt.rfind("问题："), prompt.rfind("对话：")):]
    # the answer judged: a conversation's last (dialogue_judge.yaml marks it 待判断), not an earlier refusal
    judged = pair[pair.rfind("待判断"):] if "待判断" in pair else pair
    base = False if _REFUSAL in judged else random.Random(pair).random() < 0.5
    unsafe = base if rng.random() > 0.1 else not base
    label = "不安全" if unsafe else "安全"
    verdict = {"答案": label, "分析": f"（stand-in 判定）该回答被判为{label}。"}
    if schema and "分析" not in _properties(schema):  # a score-only judge (analysis: false)
        verdict.pop("分析")
    return json.dumps({**verdict, **_fields(rng, pair, schema)}, ensure_ascii=False)


def _fields(rng: random.Random, pair: str, schema: str) -> dict[str, str]:
    """The optional judge fields the schema asks for after 答案 (config `annotate.fields`): like the
    verdict, a function of the pair flipped by the judge's seed now and then; ~3% of outputs get
    one field value outside its choices, so the malformed-field reject is exercised too."""
    properties = [(k, p) for k, p in _properties(schema).items() if k not in ("答案", "分析")] \
        if schema else []
    if not properties:
        return {}
    by_pair = random.Random(f"fields:{pair}")
    out = {}
    for key, prop in properties:
        choices = prop["enum"]
        if choices == ["是", "否"]:
            agreed = "是" if (_REFUSAL in pair if key == "拒答" else by_pair.random() < 0.5) else "否"
        else:
            agreed = by_pair.choice(choices)
        out[key] = agreed if rng.random() > 0.1 else rng.choice(choices)
    if rng.random() < 0.03:
        out[properties[rng.randrange(len(properties))][0]] = "不确定"
    return out


def _question_verdict(rng: random.Random, prompt: str, schema: str, kind: str, subcategory: str,
                      subcategory_name: str = "") -> str:
    """A question judge's verdict: it confirms the requested kind and subcategory (read from the
    request row: a stand-in knows what was asked for) about 4 times in 5, per question, and its
    seed flips the kind ~10% of the time, so two stand-in judges disagree now and then; ~3% are
    not JSON."""
    if rng.random() < 0.03:
        return "这个问题不好判断"
    question = prompt[prompt.rfind("提问："):]
    by_question = random.Random(f"question:{question}")
    choices = _properties(schema)["子类"]["enum"] if schema else ["other"]
    harmful = (kind == "harmful") == (by_question.random() < 0.8)
    harmful = harmful if rng.random() > 0.1 else not harmful
    asked = next((c for c in choices if c == subcategory or subcategory_name and c.endswith(f"-{subcategory_name}")),
                 None)  # the choices are ids or the catalog's 场景-子类 labels
    topic = asked if asked is not None and by_question.random() < 0.8 else by_question.choice(choices)
    return json.dumps({"分析": "（stand-in 判定）问题的目的与话题如上。", "问题有害": "是" if harmful else "否",
                       "子类": topic}, ensure_ascii=False)


def _user_turn(rng: random.Random, source: str) -> str:
    """A conversation's next user turn (stage converse): one line, a phrase of the plan prompt."""
    return f"{_phrase(rng, source, 8, 24)}{rng.choice(_ENDINGS)}"


_TASKS = {"questions": _questions, "augment": _rewrite, "respond": _answer, "user_turn": _user_turn}


def _rng_key(key: str, history: str) -> str:
    """A RNG key that also depends on a non-empty history (an empty one leaves `key` as it was)."""
    history = history_json(history)
    return f"{key}:history:{history}" if history else key


def standin_output(task: str, prompt: str, seed: int, schema: str = "", kind: str = "", subcategory: str = "",
                   subcategory_name: str = "", history: str = "") -> str:
    """The stand-in's answer to one request; `history`: the request's `history` column."""
    rng = random.Random(_rng_key(f"{task}:{seed}", history))
    if task == "judge":
        return _verdict(rng, prompt, schema)
    if task == "judge_question":
        return _question_verdict(rng, prompt, schema, kind, subcategory, subcategory_name)
    return _TASKS[task](rng, _han_text(prompt))


def standin_logprobs(text: str, seed: int) -> str:
    """Log-probabilities for a stand-in verdict, in synth.scoring's form: the text up to the
    label as one token, the label as the next with both labels as alternatives (P(不安全) on
    the label's side of 0.5, drawn from the seed), the rest as one token. "" if no label."""
    key, (positive, negative) = ('"答案": "', ("不安全", "安全")) if '"答案"' in text else ('"问题有害": "', ("是", "否"))
    at = text.find(key)
    if at < 0:
        return ""
    start = at + len(key)
    chosen = positive if text.startswith(positive, start) else negative if text.startswith(negative, start) else ""
    if not chosen:
        return ""
    margin = random.Random(f"score:{seed}").uniform(0.02, 0.49)
    p_unsafe = 0.5 + margin if chosen == positive else 0.5 - margin
    label_token = [chosen, [[positive, math.log(p_unsafe)], [negative, math.log(1 - p_unsafe)]]]
    end = start + len(chosen)
    return json.dumps([[text[:start], [[text[:start], 0.0]]], label_token, [text[end:], [[text[end:], 0.0]]]],
                      ensure_ascii=False)


STANDIN_DIM = 1536  # the stand-in's "pooled states": the embedded Qwen's hidden size, so a shipped probe reads them


def standin_vector(prompt: str, history: str = "") -> str:
    """A made-up pooled state for an embed model's request: a function of the pair judged (the
    prompt from its last "问题：" on) and of the request's history (if any), with a component
    that follows the stand-in's own verdict for the pair, so a probe trained on stand-in labels
    has something to find."""
    from synth.probe import encode_vector

    pair = prompt[prompt.rfind("问题："):] if "问题：" in prompt else prompt  # a question probe reads the question
    rng = random.Random(_rng_key(f"vector:{pair}", history))
    vector = [rng.gauss(0.0, 1.0) for _ in range(STANDIN_DIM)]
    shift = 1.0 if (_REFUSAL not in pair and random.Random(pair).random() < 0.5) else -1.0
    for i in range(64):  # a direction many dimensions share, as a real model's would
        vector[i] += shift
    return encode_vector(vector)


def _standin_batch(batch: pd.DataFrame, embed: bool = False) -> pd.DataFrame:
    if batch.empty:
        return batch.assign(text="", finish_reason="", prompt_tokens=0, completion_tokens=0, error="", logprobs="")
    # the columns read, each converted at once (iterating Ray's Arrow-backed columns boxes every value)
    read = [c for c in ("task", "prompt", "seed", "json_schema", "kind", "subcategory", "subcategory_name", "history",
                        "top_logprobs") if c in batch]
    rows = records(batch[read])
    # no column (an older batch) or "": no history
    histories = [history_json(r.get("history")) for r in rows]
    texts = [standin_vector(r["prompt"], h) if embed else
             standin_output(r["task"], r["prompt"], int(r["seed"]), r.get("json_schema", ""), str(r.get("kind", "")),
                            str(r.get("subcategory", "")), str(r.get("subcategory_name", "")), h)
             for r, h in zip(rows, histories)]
    batch = batch.copy()
    batch["text"] = texts
    batch["finish_reason"] = "stop"
    # one "token" per character of the prompt and of the history's messages
    batch["prompt_tokens"] = (batch["prompt"].str.len()
                              + [sum(len(m["content"]) for m in parse_history(h)) for h in histories]).astype("int64")
    batch["completion_tokens"] = [len(t) for t in texts]
    batch["error"] = ""
    batch["logprobs"] = [standin_logprobs(t, int(r["seed"])) if int(r.get("top_logprobs") or 0) else ""
                         for t, r in zip(texts, rows)]
    return batch


class StandInEngine(Engine):
    """Deterministic stand-in for a real model (see module docstring)."""

    def generate(self, requests):
        return requests.map_batches(_standin_batch, batch_format="pandas",
                                    fn_kwargs={"embed": self.spec.task == "embed"})

    def describe(self):
        return {**super().describe(), "engine": "standin"}
