"""A request can carry the conversation so far: the `history` request column (issue 31).

Every engine honours it in one place: chat style sends system + history + the user turn,
completion style a 用户：/助手： transcript (`completion_text`), the stand-in's output depends
on it, and the request cache keys on it. A request without a history is what it always was
(same engine prompt, same stand-in output, same cache key). Fast: tokenizers only, no vLLM.
"""

from __future__ import annotations

import hashlib
import json

import pandas as pd
import pytest

from synth.config import ModelSpec, Role, Sampling
from synth.engines import make_engine, request_row
from synth.engines.base import (
    REQUEST_COLUMNS, chat_messages, completion_text, history_json, parse_history, request_chars,
)
from synth.engines.standin import _standin_batch, standin_output, standin_vector
from synth.request_cache import KEY_COLUMN, add_keys
from openai_stub_server import StubServer

SYSTEM = "你是一个乐于助人的助手。"
PROMPT = "那第二步呢？"
HISTORY = [{"role": "user", "content": "怎样设置一个安全的密码？"},
           {"role": "assistant", "content": "第一步，使用至少十二个字符。"}]
OTHER_HISTORY = [{"role": "user", "content": "怎样备份手机里的照片？"},
                 {"role": "assistant", "content": "第一步，打开云端同步。"}]
ROLE = Role(name="resp", model="m", sampling=Sampling(max_tokens=32, temperature=0.7))


def _row(history=(), **kw) -> dict:
    return request_row(request_id="r1", task="respond", prompt=PROMPT, role=ROLE, base_seed=7, system=SYSTEM,
                       history=history, **kw)


# -- the column ---------------------------------------------------------------------------


def test_request_row_stores_the_history_as_json_and_empty_as_empty_string():
    assert "history" in REQUEST_COLUMNS and list(_row()) == list(REQUEST_COLUMNS)
    assert _row()["history"] == ""
    stored = _row(HISTORY)["history"]
    assert stored == json.dumps(HISTORY, ensure_ascii=False) and "密码" in stored  # Chinese kept as is
    assert parse_history(stored) == HISTORY
    for empty in ("", None, float("nan"), [], ()):
        assert parse_history(empty) == [] and history_json(empty) == ""
    # only role and content are kept; anything else is refused
    assert parse_history([{"role": "user", "content": "x", "name": "n"}]) == [{"role": "user", "content": "x"}]
    for bad in ([{"role": "system", "content": "x"}], [{"role": "user"}], [{"role": "user", "content": 3}],
                ["x"], {"role": "user", "content": "x"}, "not json", '"a string"'):
        with pytest.raises(ValueError):
            _row(bad) if not isinstance(bad, str) else parse_history(bad)


def test_request_chars_counts_system_history_and_prompt():
    assert request_chars(_row()) == len(SYSTEM) + len(PROMPT)
    assert request_chars(_row(HISTORY)) == len(SYSTEM) + len(PROMPT) + sum(len(m["content"]) for m in HISTORY)
    assert request_chars({"system": "", "prompt": "abc"}) == 3  # an older row without the column


# -- completion style: one transcript function ----------------------------------------------


def test_completion_text_without_history_is_what_completion_style_always_sent():
    for system, prompt in ((SYSTEM, PROMPT), ("", PROMPT), ("S", ""), ("", "")):
        old = f"{system}\n\n{prompt}" if system else prompt
        assert completion_text(system, prompt) == old
        assert completion_text(system, prompt, "") == old
        assert completion_text(system, prompt, None) == old
        assert completion_text(system, prompt, []) == old


def test_completion_text_lays_out_the_earlier_turns_as_a_transcript():
    prompt = "用户：那第二步呢？\n助手："
    assert completion_text("S", prompt, HISTORY) == (
        "S\n\n用户：怎样设置一个安全的密码？\n\n助手：第一步，使用至少十二个字符。\n\n用户：那第二步呢？\n助手：")
    assert completion_text("", prompt, json.dumps(HISTORY, ensure_ascii=False)) == (
        "用户：怎样设置一个安全的密码？\n\n助手：第一步，使用至少十二个字符。\n\n用户：那第二步呢？\n助手：")
    multi = [{"role": "user", "content": "第一行\n第二行"}]
    assert completion_text("", "p", multi) == "用户：第一行\n第二行\n\np"


def test_chat_messages_are_system_history_then_the_user_turn():
    assert chat_messages(SYSTEM, PROMPT, HISTORY) == [
        {"role": "system", "content": SYSTEM}, *HISTORY, {"role": "user", "content": PROMPT}]
    assert chat_messages("", PROMPT, "") == [{"role": "user", "content": PROMPT}]


def test_vllm_completion_batches_send_the_transcript():
    from synth.engines.vllm_ray import request_batch

    rows = [_row(HISTORY), _row()]
    prompts, _ = request_batch(pd.DataFrame(rows))
    assert prompts == [completion_text(SYSTEM, PROMPT, HISTORY), f"{SYSTEM}\n\n{PROMPT}"]
    older = pd.DataFrame([_row()]).drop(columns=["history"])  # a batch from before the column
    assert request_batch(older)[0] == [f"{SYSTEM}\n\n{PROMPT}"]


# -- chat style with the embedded models' real tokenizers (no vLLM) ----------------------------


def _model_path(name: str) -> str:
    from synth.models import EMBEDDED, models_cache_dir

    if not EMBEDDED[name].is_ready(models_cache_dir()):
        pytest.skip(f"{name} not prepared (python -m synth.models prepare)")
    return str(EMBEDDED[name].target(models_cache_dir()))


def _in_order(text: str, parts: list[str]) -> None:
    at = 0
    for part in parts:
        found = text.find(part, at)
        assert found >= 0, f"{part!r} not found after position {at} in {text!r}"
        at = found + len(part)


def test_qwen_chat_template_renders_system_history_and_prompt_in_order():
    from synth.engines.vllm_ray import ENGINE_PROMPT, ChatPromptRenderer

    renderer = ChatPromptRenderer(_model_path("embedded:qwen2.5-coder-1.5b-instruct"))
    assert not renderer.fold_system
    text = renderer.render(SYSTEM, PROMPT, HISTORY)
    _in_order(text, [SYSTEM, HISTORY[0]["content"], HISTORY[1]["content"], PROMPT])
    assert text == (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n"
                    f"<|im_start|>user\n{HISTORY[0]['content']}<|im_end|>\n"
                    f"<|im_start|>assistant\n{HISTORY[1]['content']}<|im_end|>\n"
                    f"<|im_start|>user\n{PROMPT}<|im_end|>\n<|im_start|>assistant\n")
    assert text.endswith("<|im_start|>assistant\n")
    # the Ray Data callable reads the column; a row without history (or a batch without the column)
    # renders as before
    batch = pd.DataFrame([_row(HISTORY), _row()])
    rendered = renderer(batch)[ENGINE_PROMPT].tolist()
    assert rendered == [text, renderer.render(SYSTEM, PROMPT)]
    assert renderer(batch.drop(columns=["history"]))[ENGINE_PROMPT].tolist() == [rendered[1]] * 2
    assert renderer.render(SYSTEM, PROMPT, "") == (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n"
                                                   f"<|im_start|>user\n{PROMPT}<|im_end|>\n<|im_start|>assistant\n")


def test_gemma_chat_template_puts_the_system_text_in_the_first_user_turn():
    from synth.engines.vllm_ray import ChatPromptRenderer

    renderer = ChatPromptRenderer(_model_path("embedded:gemma3-270m"))
    text = renderer.render(SYSTEM, PROMPT, HISTORY)
    _in_order(text, [SYSTEM, HISTORY[0]["content"], HISTORY[1]["content"], PROMPT])
    # Gemma 3's template takes a system turn and opens the first user turn with it itself
    assert not renderer.fold_system
    assert text == (f"<start_of_turn>user\n{SYSTEM}\n\n{HISTORY[0]['content']}<end_of_turn>\n"
                    f"<start_of_turn>model\n{HISTORY[1]['content']}<end_of_turn>\n"
                    f"<start_of_turn>user\n{PROMPT}<end_of_turn>\n<start_of_turn>model\n")


def test_a_template_without_system_turns_folds_the_system_text_into_the_first_history_turn(tmp_path):
    import shutil

    from synth.engines.vllm_ray import ChatPromptRenderer

    source = _model_path("embedded:gemma3-270m")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(f"{source}/{name}", tmp_path / name)
    (tmp_path / "chat_template.jinja").write_text(  # like Gemma 2's: no system turn
        "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n"
        "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
    renderer = ChatPromptRenderer(str(tmp_path))
    assert renderer.fold_system
    assert renderer.render(SYSTEM, PROMPT, HISTORY) == (
        f"<start_of_turn>user\n{SYSTEM}\n\n{HISTORY[0]['content']}<end_of_turn>\n"
        f"<start_of_turn>assistant\n{HISTORY[1]['content']}<end_of_turn>\n"
        f"<start_of_turn>user\n{PROMPT}<end_of_turn>\n<start_of_turn>model\n")
    # no history: the prompt opens with it, as before
    assert renderer.render(SYSTEM, PROMPT) == (
        f"<start_of_turn>user\n{SYSTEM}\n\n{PROMPT}<end_of_turn>\n<start_of_turn>model\n")


# -- the OpenAI-compatible engine against the stub server ------------------------------------


def _spec(url: str, style: str) -> ModelSpec:
    return ModelSpec(engine="openai", model="stub-model", prompt_style=style,
                     openai={"base_url": url, "max_concurrency": 2, "timeout_s": 2.0, "max_retries": 1,
                             "backoff_s": 0.01, "backoff_max_s": 0.05})


def _send(url: str, style: str, rows: list[dict]) -> list[dict]:
    from synth.engines.openai_compat import OpenAIRequester

    requester = OpenAIRequester(**make_engine("m", _spec(url, style)).requester_kwargs())
    out = requester(pd.DataFrame(rows)).to_dict("records")
    assert all(r["error"] == "" and r["text"] for r in out)
    return out


def test_openai_chat_sends_system_history_and_prompt_as_messages():
    with StubServer() as server:
        _send(server.url, "chat", [_row(HISTORY)])
        _send(server.url, "chat", [_row()])
        _send(server.url, "chat", [{k: v for k, v in _row().items() if k != "history"}])  # an older row
    sent = [r["body"]["messages"] for r in server.requests]
    assert [m["role"] for m in sent[0]] == ["system", "user", "assistant", "user"]
    assert sent[0] == [{"role": "system", "content": SYSTEM}, *HISTORY, {"role": "user", "content": PROMPT}]
    assert sent[1] == sent[2] == [{"role": "system", "content": SYSTEM}, {"role": "user", "content": PROMPT}]


def test_openai_completion_sends_the_transcript():
    with StubServer() as server:
        _send(server.url, "completion", [_row(HISTORY)])
        _send(server.url, "completion", [_row()])
    sent = [r["body"]["prompt"] for r in server.requests]
    assert sent[0] == (f"{SYSTEM}\n\n用户：{HISTORY[0]['content']}\n\n助手：{HISTORY[1]['content']}\n\n{PROMPT}")
    assert sent[1] == f"{SYSTEM}\n\n{PROMPT}"
    assert all(r["path"] == "/v1/completions" for r in server.requests)


def test_openai_a_malformed_history_fails_its_row_only():
    from synth.engines.openai_compat import OpenAIRequester

    with StubServer() as server:
        requester = OpenAIRequester(**make_engine("m", _spec(server.url, "chat")).requester_kwargs())
        out = requester(pd.DataFrame([dict(_row(), history='[{"role": "system", "content": "x"}]'), _row()]))
    assert out["error"][0].startswith("bad request row") and out["error"][1] == ""
    assert len(server.requests) == 1


# -- the request cache -------------------------------------------------------------------------


def _keyable(**columns) -> pd.DataFrame:
    return pd.DataFrame({"system": [""], "prompt": ["p"], "seed": [1], "json_schema": [""], "temperature": [0.0],
                         "top_p": [1.0], "top_k": [0], "max_tokens": [8], "stop": [[]], **columns})


def test_cache_keys_are_unchanged_without_history_and_differ_by_history():
    plain = add_keys(_keyable(), "m")[KEY_COLUMN][0]
    # the key as computed before histories existed
    legacy = json.dumps(["m", "", "p", 1, "", 0.0, 1.0, 0, 8, []], ensure_ascii=False, default=str)
    assert plain == hashlib.sha256(legacy.encode("utf-8")).hexdigest()[:32]
    assert add_keys(_keyable(history=[""]), "m")[KEY_COLUMN][0] == plain
    assert add_keys(_keyable(history=[None]), "m")[KEY_COLUMN][0] == plain  # a null from a unified older batch
    one = add_keys(_keyable(history=[history_json(HISTORY)]), "m")[KEY_COLUMN][0]
    other = add_keys(_keyable(history=[history_json(OTHER_HISTORY)]), "m")[KEY_COLUMN][0]
    assert len({plain, one, other}) == 3
    assert add_keys(_keyable(history=[history_json(HISTORY)]), "m")[KEY_COLUMN][0] == one  # stable
    # history and top_logprobs each add to the key, independently
    both = add_keys(_keyable(history=[history_json(HISTORY)], top_logprobs=[5]), "m")[KEY_COLUMN][0]
    assert both not in {plain, one, add_keys(_keyable(top_logprobs=[5]), "m")[KEY_COLUMN][0]}


# -- the stand-in ------------------------------------------------------------------------------


def _standin(rows: list[dict]) -> list[str]:
    return _standin_batch(pd.DataFrame(rows))["text"].tolist()


@pytest.mark.parametrize("task", ["questions", "augment", "respond", "judge"])
def test_standin_output_depends_on_the_history_and_is_unchanged_without_one(task):
    """A verdict is mostly a function of the pair judged (the history flips it as the judge's
    seed does, now and then): 40 requests, so some differ."""
    rows = [dict(request_row(request_id=f"r{i}", task=task, prompt=f"问题：如何保护第{i}个账户的隐私？回答：请设置密码。",
                             role=ROLE, base_seed=7, system=SYSTEM), history="") for i in range(40)]
    without_column = _standin([{k: v for k, v in r.items() if k != "history"} for r in rows])
    assert _standin(rows) == without_column
    assert without_column == [standin_output(task, r["prompt"], r["seed"]) for r in rows]
    one = _standin([dict(r, history=history_json(HISTORY)) for r in rows])
    other = _standin([dict(r, history=history_json(OTHER_HISTORY)) for r in rows])
    assert one == _standin([dict(r, history=history_json(HISTORY)) for r in rows])  # deterministic
    assert one != without_column and one != other


def test_standin_respond_with_two_histories_gives_two_answers():
    row = _row()
    texts = {standin_output("respond", row["prompt"], row["seed"], history=history_json(h))
             for h in (HISTORY, OTHER_HISTORY)}
    assert len(texts) == 2
    assert standin_vector("问题：x") == standin_vector("问题：x", "")
    assert standin_vector("问题：x", history_json(HISTORY)) != standin_vector("问题：x")


def test_standin_prompt_tokens_count_the_history():
    plain, with_history = _standin_batch(pd.DataFrame([_row(), _row(HISTORY)]))["prompt_tokens"].tolist()
    assert plain == len(PROMPT)
    assert with_history == len(PROMPT) + sum(len(m["content"]) for m in HISTORY)
