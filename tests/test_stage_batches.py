"""Queries', Augment's and Respond's batch functions, called without Ray on the demo's real
catalog, with the stand-in engine's batch function playing the model: elements → question
requests → questions → rewrites of harmful questions → one responder's answer per question."""

from __future__ import annotations

import random
from pathlib import Path

import pandas as pd
import pytest

from synth.build import prepare
from synth.engines import REQUEST_COLUMNS, request_seed
from synth.engines.base import PENDING, transient
from synth.engines.standin import _standin_batch
from synth.rows import REJECT_COLUMN, stable_id
from synth.stages.generation import (
    _QUESTION_COLUMNS, augment_requests, augmented_rows, chosen_tactic, gets_tactic, question_requests,
    questions_from_results,
)
from synth.stages.labelling import PAIR_COLUMNS, pairs_from_results, picked_responders, respond_requests

ROOT = Path(__file__).resolve().parent.parent
ELEMENT_COLUMNS = ["id", "scenario", "scenario_name", "subcategory", "subcategory_name", "kind", "elements",
                   "template_id", "template_hash", REJECT_COLUMN]


@pytest.fixture(scope="module")
def demo():
    return prepare(ROOT / "pipelines" / "demo.yaml")


def element_rows(config, catalog, calls: int = 2) -> pd.DataFrame:
    """What Elements.run emits, for the first two subcategories of every scenario."""
    rows = []
    for scenario in sorted(catalog.scenarios.values(), key=lambda s: s.id):
        for sub in scenario.template.subcategories[:2]:
            for kind in ("harmful", "benign"):
                for index in range(calls):
                    rng = random.Random(stable_id(config.seed, scenario.id, sub.id, kind, index))
                    elements = {"behavior": rng.choice(scenario.pools.behaviors[sub.id]),
                                "benign_topic": rng.choice(scenario.pools.benign_topics[sub.id]),
                                "task_type": rng.choice(catalog.task_types), "region": rng.choice(catalog.regions),
                                "event": rng.choice(catalog.events)}
                    rows.append(dict(zip(ELEMENT_COLUMNS, [
                        stable_id("elements", config.seed, scenario.id, sub.id, kind, index, elements), scenario.id,
                        scenario.template.name_zh, sub.id, sub.name_zh, kind, elements, f"{scenario.id}.{kind}",
                        scenario.hash, ""])))
    return pd.DataFrame(rows)


def generator(config):
    role = config.roles.generator
    return role, config.models[role.model].prompt_style


def questions(config, catalog) -> pd.DataFrame:
    role, style = generator(config)
    requests = question_requests(element_rows(config, catalog), catalog, role, style, config.seed, config.generation)
    out = questions_from_results(_standin_batch(requests), role, style, config.generation.max_questions_per_call)
    return out[out[REJECT_COLUMN] == ""].reset_index(drop=True)


def test_queries_requests_then_questions(demo):
    config, catalog = demo
    role, style = generator(config)
    elements = element_rows(config, catalog)
    requests = question_requests(elements, catalog, role, style, config.seed, config.generation)
    assert list(requests.columns) == ELEMENT_COLUMNS + list(REQUEST_COLUMNS)
    assert list(requests["request_id"]) == list(elements["id"])
    assert set(requests["task"]) == {"questions"} and set(requests["role"]) == {"generator"}
    assert requests["seed"][0] == request_seed(elements["id"][0], "generator", config.seed)
    # a completion prompt opens item 3 of a list (two examples first): the role's stop, then
    # the stops after max_questions_per_call (3) more items
    assert all(p.endswith("\n3.") for p in requests["prompt"])
    assert requests["stop"][0] == ["\n\n", "\n6.", "\n6．", "\n6、"]

    answered = _standin_batch(requests)
    answered.loc[0, "text"] = "好的。"  # no list at all
    answered.loc[1, "error"] = "HTTP 400 from http://x: context too long"
    out = questions_from_results(answered, role, style, limit=2)
    assert list(out.columns) == list(_QUESTION_COLUMNS)
    assert out["id"].is_unique
    assert set(out["parent_id"]) == set(elements["id"])  # every call gives rows (questions or a reject)
    first, second = out[out["parent_id"] == elements["id"][0]], out[out["parent_id"] == elements["id"][1]]
    assert list(first[REJECT_COLUMN]) == ["no_list_items"] and list(first["raw"]) == ["好的。"]
    assert list(first["id"]) == [elements["id"][0]]  # a failed call keeps the call's id
    assert list(second[REJECT_COLUMN]) == ["llm_error: HTTP 400 from http://x: context too long"]
    kept = out[out[REJECT_COLUMN] == ""]
    assert len(kept) > len(elements)  # the stand-in writes 2-6 items; up to 2 are kept per call
    assert kept.groupby("parent_id").size().max() == 2
    row = kept.iloc[0]
    index = list(kept[kept["parent_id"] == row["parent_id"]]["id"]).index(row["id"])
    assert row["id"] == stable_id(row["parent_id"], index, row["question"])
    assert row["attack"] == "none" and row["generator"] == "generator" and row["raw"] == ""
    call = answered[answered["id"] == row["parent_id"]].iloc[0]
    assert row["seed"] == call["seed"] and row["elements"] == call["elements"]
    assert row["gen_completion_tokens"] == len(call["text"]) and row["gen_finish_reason"] == "stop"


def test_augment_rewrites_only_harmful_questions_given_a_tactic(demo):
    config, catalog = demo
    role, style = generator(config)
    rows = questions(config, catalog)
    tactics, share, seed = [t.id for t in catalog.augment.tactics], 0.5, config.seed
    chosen = [chosen_tactic(i, tactics, share, seed) for i in rows["id"]]
    # a benign question a tactic would be drawn for is still left alone
    assert any(t is not None and k == "benign" for t, k in zip(chosen, rows["kind"]))
    wanted = [t is not None and k == "harmful" for t, k in zip(chosen, rows["kind"])]
    assert [gets_tactic(r, tactics, share, seed) for r in rows.to_dict("records")] == wanted
    assert 0 < sum(wanted) < (rows["kind"] == "harmful").sum()

    requests = augment_requests(rows, catalog, role, style, seed, tactics, share)
    # the filter before it changes nothing: the request function drops the same rows itself
    filtered = rows[wanted].reset_index(drop=True)
    pd.testing.assert_frame_equal(requests, augment_requests(filtered, catalog, role, style, seed, tactics, share))
    assert list(requests.columns) == list(_QUESTION_COLUMNS) + [c for c in REQUEST_COLUMNS if c != "seed"]
    assert list(requests["parent_id"]) == list(filtered["id"])
    assert set(requests["kind"]) == {"harmful"} and set(requests["task"]) == {"augment"}
    assert list(requests["attack"]) == [t for t, w in zip(chosen, wanted) if w]
    assert list(requests["request_id"]) == [stable_id(i, "augment", t) for i, t in zip(filtered["id"],
                                                                                      requests["attack"])]
    assert list(requests["question"]) == list(filtered["question"])  # the original, to be rewritten

    answered = _standin_batch(requests)
    answered.loc[0, "error"] = transient("HTTP 503 from http://x after 2 attempts")
    answered.loc[1, "text"] = "  "
    out = augmented_rows(answered)
    assert list(out.columns) == list(_QUESTION_COLUMNS)
    assert list(out["id"]) == list(requests["request_id"]) and list(out["parent_id"]) == list(filtered["id"])
    assert out[REJECT_COLUMN][0] == f"{PENDING}: HTTP 503 from http://x after 2 attempts"
    assert out[REJECT_COLUMN][1] == "empty_output" and out["raw"][1] == "  "
    assert (out[REJECT_COLUMN][2:] == "").all()
    assert out["question"][2] == answered["text"][2] and out["question"][2] != filtered["question"][2]
    assert list(out["seed"]) == list(requests["seed"]) and out["gen_completion_tokens"][2] == len(answered["text"][2])


def test_respond_one_responder_per_question_then_pairs(demo):
    config, catalog = demo
    rows = questions(config, catalog)
    responders = config.roles.responders
    names, per_question = [r.name for r in responders], config.respond.responders_per_question
    assert per_question == 1 and names == ["responder-base", "responder-instruct"]
    parts = []
    for index, role in enumerate(responders):
        persona = catalog.persona(role.persona, index)
        part = respond_requests(rows, catalog, role, config.models[role.model].prompt_style, persona, config.seed,
                                names, per_question)
        # the question's own seed travels as pair_seed (synth.stages.labelling.carry), the request's is `seed`
        assert list(part.columns) == [*("pair_seed" if c == "seed" else c for c in _QUESTION_COLUMNS),
                                      *REQUEST_COLUMNS, "question_id", "persona"]
        assert set(part["persona"]) == {persona.id} and set(part["role"]) == {role.name}
        assert list(part["request_id"]) == [stable_id(q, "respond", role.name) for q in part["question_id"]]
        parts.append(part)
    helpful, cautious = parts
    # each question goes to exactly one of the two, as picked_responders says, and both get some
    assert sorted([*helpful["question_id"], *cautious["question_id"]]) == sorted(rows["id"])
    assert (len(rows), len(helpful)) == (148, 64)  # pinned: the demo's seed picks 64 of 148 for the base responder
    other_seed = [picked_responders(q, names, 1, config.seed + 1) == {"responder-base"} for q in rows["id"]]
    assert sum(other_seed) != len(helpful)  # the pick depends on the build seed
    assert all(picked_responders(q, names, 1, config.seed) == {"responder-base"} for q in helpful["question_id"])
    assert picked_responders("q", names, None, config.seed) == set(names)
    everyone = respond_requests(rows, catalog, responders[0], "completion", catalog.persona("helpful", 0),
                                config.seed, names, None)
    assert list(everyone["question_id"]) == list(rows["id"])

    answered = _standin_batch(pd.concat(parts, ignore_index=True))
    answered.loc[0, "error"] = "HTTP 400 from http://x: bad request"
    answered.loc[1, "text"] = " \n "
    answered.loc[2, "text"] = "  一个回答。\n"
    out = pairs_from_results(answered)
    assert list(out.columns) == list(PAIR_COLUMNS)
    assert list(out["id"]) == list(answered["request_id"]) and out["id"].is_unique
    assert list(out["question_id"]) == list(answered["question_id"])
    assert list(out[REJECT_COLUMN][:3]) == ["llm_error: HTTP 400 from http://x: bad request", "empty_response", ""]
    assert out["response"][2] == "一个回答。" and out["response_tokens"][2] == answered["completion_tokens"][2]
    assert (out[REJECT_COLUMN][3:] == "").all()
    assert list(out["responder"]) == list(answered["role"]) and list(out["seed"]) == list(answered["seed"])
