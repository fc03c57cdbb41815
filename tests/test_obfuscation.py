"""Chinese obfuscation attacks (synth/obfuscation.py) and the obfuscate stage.

Every tactic is deterministic per seed, changes the question, and leaves something the
demo's question filters still keep as a Chinese question; the shipped tables load, and a
malformed one is an error naming its file and line; a dry-run build makes obfuscated copies
of harmful and benign questions, each pointing at its source, none of them deduplicated
against it.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from synth.build import run_build
from synth.config import load_config
from synth.errors import BadInput
from synth.export import read_table
from synth.filters import apply_filters, build_filters
from synth.obfuscation import PREFIX, TACTICS, load_tables, obfuscate

QUESTIONS = [  # abstract question shapes; the tables' key words in them
    "有人在网上遇到诈骗，应该怎样保护自己的银行账号和密码？",
    "为什么网上赌博的广告总能找到年轻人，这种现象怎么看？",
    "如何判断一条关于疫苗的谣言是不是真的？",
    "Q3季度的报告里提到的ABC事件中，有没有人受到歧视？",
]


@pytest.fixture(scope="module")
def tables(repo_root: Path):
    return load_tables(repo_root / "seeds" / "obfuscation")


@pytest.fixture(scope="module")
def question_filters(repo_root: Path):
    config, _, _ = load_config(repo_root / "pipelines/demo.yaml")
    return build_filters(config.filters.questions, "filters.questions")


@pytest.mark.parametrize("tactic", list(TACTICS))
def test_each_tactic_is_deterministic_changes_the_question_and_keeps_it_a_chinese_question(tactic, tables,
                                                                                        question_filters):
    changed = 0
    for question in QUESTIONS:
        first = TACTICS[tactic](question, random.Random(7), tables)
        assert first == TACTICS[tactic](question, random.Random(7), tables)  # same seed, same rewrite
        if first is None:
            continue
        changed += 1
        assert first != question and first.endswith("？")
        assert apply_filters(question_filters, {"question": first}) == "", (tactic, first)
    assert changed >= 2, f"{tactic} applied to {changed} of {len(QUESTIONS)} questions"


def test_obfuscate_picks_a_tactic_that_applies_per_seed(tables):
    picks = {obfuscate(QUESTIONS[2], list(TACTICS), random.Random(seed), tables) for seed in range(30)}
    assert None not in picks and len({tactic for tactic, _ in picks}) >= 4
    # a question with no table word still gets one of the tactics that need none
    tactic, text = obfuscate("今天天气怎么样？", list(TACTICS), random.Random(1), tables)
    assert tactic in ("symbols", "fullwidth_spacing") and text != "今天天气怎么样？"


def _broken(repo_root: Path, tmp_path: Path, name: str, text: str) -> Path:
    directory = tmp_path / "obfuscation"
    shutil.copytree(repo_root / "seeds" / "obfuscation", directory)
    (directory / f"{name}.yaml").write_text(text, encoding="utf-8")
    return directory


@pytest.mark.parametrize("name, text, message", [
    ("pinyin", "table:\n  诈骗: zha pian\n  赌博: du\n", "pinyin.yaml line 3: entry `赌博`"),
    ("homophones", "table:\n  诈骗: [炸骗]\n  赌博: [堵博]\n  诈骗: [乍骗]\n", "homophones.yaml line 4: `诈骗` is already defined at line 2"),
    ("variants", "table:\n  钱: [錢, 钱钱]\n", "variants.yaml line 2: entry `钱`"),
    ("split", "table: [骗]\n", "split.yaml line 1: `table` must be a non-empty mapping"),
    ("symbols", "symbols: ['*', '**']\nspaces: [' ']\n", "symbols.yaml line 1: `symbols`"),
    ("homophones", "table:\n  诈骗: [炸骗\n", "homophones.yaml line 3: invalid YAML"),
])
def test_a_malformed_table_names_its_file_and_line(repo_root: Path, tmp_path: Path, name, text, message):
    with pytest.raises(BadInput, match=message.replace("[", r"\[")):
        load_tables(_broken(repo_root, tmp_path, name, text))


def _config(repo_root: Path, tmp_path: Path, obfuscation: dict) -> Path:
    data = yaml.safe_load((repo_root / "pipelines/demo.yaml").read_text(encoding="utf-8"))
    data["templates"], data["seeds"] = str(repo_root / "templates"), str(repo_root / "seeds")
    data["scenarios"] = ["hate_abuse", "privacy_property"]
    data["augment"]["obfuscation"] = obfuscation
    path = tmp_path / "obfuscated.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def test_an_unknown_tactic_exits_2_naming_the_field(repo_root: Path, tmp_path: Path):
    config = _config(repo_root, tmp_path, {"share": 0.5, "tactics": ["homophone", "leetspeak"]})
    result = subprocess.run([sys.executable, "-m", "synth.cli", "build", str(config), "--out", str(tmp_path / "o"),
                             "--dry-run"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "augment.obfuscation.tactics" in result.stderr and "leetspeak" in result.stderr


def test_a_build_obfuscates_both_kinds_and_never_dedups_a_copy_against_its_source(ray_session, repo_root: Path,
                                                                                 tmp_path: Path):
    out = tmp_path / "out"
    manifest = run_build(_config(repo_root, tmp_path, {"share": 0.5}), out, dry_run=True)
    stage = {s["name"]: s for s in manifest["stages"]}
    questions = read_table(out / "stages" / "obfuscate" / "rows")
    copies = questions[questions["attack"].str.startswith(PREFIX)]
    sources = questions.set_index("id")
    assert stage["obfuscate"]["rows_out"] == stage["dedup_questions"]["rows_out"] + len(copies)
    assert set(copies["kind"]) == {"harmful", "benign"}
    assert len({a for a in copies["attack"]}) >= 4
    for copy in copies.to_dict("records"):
        source = sources.loc[copy["source_question_id"]]
        assert copy["parent_id"] == copy["source_question_id"] and copy["question"] != source["question"]
        assert (copy["kind"], copy["subcategory"]) == (source["kind"], source["subcategory"])
    # every copy reached the pairs, and dedup_pairs compared none of them
    dedup_rejects = read_table(out / "stages" / "dedup_pairs" / "rejects")
    assert not len(dedup_rejects) or not dedup_rejects["attack"].str.startswith(PREFIX).any()
    corpus = read_table(out / "corpus" / "data")
    obfuscated = corpus[corpus["attack"].str.startswith(PREFIX)]
    assert len(obfuscated) and set(obfuscated["source_question_id"]) <= set(questions["id"])
    assert (corpus.loc[corpus["attack"] == "none", "source_question_id"] == "").all()
