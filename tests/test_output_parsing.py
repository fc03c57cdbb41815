"""Question-list parsing and the stop strings that end a list at the items kept."""

from __future__ import annotations

from pathlib import Path

from synth.output_parsing import list_item_stops, parse_question_list
from synth.templates import load_catalog


def _cut_at_stop(text: str, stops: list[str]) -> str:
    """What vLLM returns with these stop strings: the text up to the first stop, excluded."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
    return text[:cut]


def test_completion_list_stops_after_the_kept_items(repo_root: Path):
    catalog = load_catalog(repo_root / "templates", repo_root / "seeds")
    scenario = catalog.scenarios["hate_abuse"]
    prompt = scenario.template.harmful.completion
    assert prompt.rstrip().endswith("3.")  # the shipped few-shot list continues at item 3
    stops = list_item_stops(prompt, 2, continues_list=True)
    assert "\n5." in stops and "\n4." not in stops

    written = "示例问题甲是什么？\n4. 示例问题乙是什么？\n5. 多写的问题丙？\n6. 还有"
    kept = _cut_at_stop(written, stops)
    assert parse_question_list(kept, 2, continues_list_at=1).items == [
        "示例问题甲是什么？", "示例问题乙是什么？"]


def test_chat_list_numbers_from_one():
    stops = list_item_stops("请写3个问题", 2, continues_list=False)
    assert stops == ["\n3.", "\n3．", "\n3、"]
    written = "1. 第一个问题是什么？\n2、第二个问题是什么？\n3、不要的问题？"
    assert parse_question_list(_cut_at_stop(written, stops), 2).items == ["第一个问题是什么？", "第二个问题是什么？"]


def test_no_open_item_means_no_stop():
    # a completion prompt that does not end inside a numbered list gets no list stop
    assert list_item_stops("以下是一些问题：", 2, continues_list=True) == []
