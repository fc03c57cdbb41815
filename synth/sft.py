"""The guard-pretraining (SFT) view of a corpus: what stage one of the guard trains on.

Each corpus row becomes one conversation:

    user       the guard prompt: the chat form of the build's judge template
               (templates/shared/judge.yaml) rendered with the row's question and response;
               for a dialogue row (earlier turns in `messages`), the chat form of the dialogue
               judge template (templates/shared/dialogue_judge.yaml) rendered with the whole
               conversation, same rubric and fields
    assistant  the verdict JSON {"答案": label, "分析": analyze} (ensure_ascii=False),
               label first or last (`export.label_position`); with `export.sft_target: extended`
               the judge fields follow ({"问题有害": "是"|"否", "拒答": ..., "子类": id}, those the
               build asked its judges for, a field the judges disagreed on left out) and the
               user turn asks for them as the judges were asked

Written as `<build>/sft/`:

    data/{train,validation}-00000-of-00001.parquet   messages, id, scenario, label
                                                     (TRL `SFTTrainer` takes `messages` as is)
    alpaca/{train,validation}.jsonl                  instruction, input, output, system, id, scenario, label
                                                     (instruction = the whole guard prompt, input = "")
    dataset_info.json                                LLaMA-Factory entries (dataset_dir = this folder)
    README.md                                        dataset card

The split is the corpus split (same rows in train and validation as corpus/).
The user turn is byte-identical in both layouts: the judge template's chat form, which is
also what a guard evaluated with `synth eval-guard` should be prompted with.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal

import jinja2
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from pydantic import ValidationError

from synth.config import format_validation_error
from synth.errors import BadInput
from synth.dialogue_templates import DIALOGUE_JUDGE_FILE, DIALOGUE_JUDGE_VARIABLES
from synth.output_parsing import FIELD_COLUMNS, FIELD_KEYS, YES_NO
from synth.rows import MESSAGES_TYPE, row_messages
from synth.stream_io import CHUNK_ROWS, write_jsonl, write_parquet
from synth.template_forms import PromptForms
from synth.templates import JUDGE_VARIABLES, JudgeTemplates, make_environment

LabelPosition = Literal["before", "after"]
LABEL_POSITIONS: tuple[str, ...] = ("before", "after")
SftTarget = Literal["libra", "extended"]
SFT_TARGETS: tuple[str, ...] = ("libra", "extended")
LABEL_KEY, ANALYSIS_KEY = "答案", "分析"
SFT_SCHEMA = pa.schema([("messages", MESSAGES_TYPE), ("id", pa.string()), ("scenario", pa.string()),
                        ("label", pa.string())])
SFT_COLUMNS = tuple(SFT_SCHEMA.names)
SPLITS = ("train", "validation")
# LLaMA-Factory dataset names (dataset_dir = the sft/ folder): `dataset: guard_sft_train`, ...
LLAMA_FACTORY_NAMES = {
    "messages": {split: f"guard_sft_{split}" for split in SPLITS},
    "alpaca": {split: f"guard_alpaca_{split}" for split in SPLITS},
}


def verdict_json(label: str, analysis: str, label_position: LabelPosition = "before",
                 fields: dict[str, str] | None = None) -> str:
    """The assistant turn: the guard verdict as one line of JSON, Chinese kept as is; `fields`
    (JSON key -> value) follow it (the extended target)."""
    if label_position not in LABEL_POSITIONS:
        raise BadInput(f"label_position must be one of {', '.join(LABEL_POSITIONS)}, got {label_position!r}")
    label_item, analysis_item = (LABEL_KEY, label), (ANALYSIS_KEY, analysis or "")
    items = [label_item, analysis_item] if label_position == "before" else [analysis_item, label_item]
    return json.dumps({**dict(items), **(fields or {})}, ensure_ascii=False)


def target_fields(row: dict[str, Any], fields: list[dict[str, Any]]) -> dict[str, str]:
    """The judge fields of a corpus row as the guard writes them (a null column, where the judges
    disagreed, is left out)."""
    out = {}
    for f in fields:
        value = row.get(FIELD_COLUMNS[f["name"]])
        if value is not None:
            out[FIELD_KEYS[f["name"]]] = value if isinstance(value, str) else YES_NO[0] if value else YES_NO[1]
    return out


def _compile(forms: PromptForms, source: str) -> tuple[jinja2.Template | None, jinja2.Template]:
    """(system or None, user): the chat form of a prompt, compiled in the templates' sandbox."""
    env = make_environment()
    try:
        return (env.from_string(forms.chat.system) if forms.chat.system else None), env.from_string(forms.chat.user)
    except jinja2.TemplateSyntaxError as e:
        raise BadInput(f"{source}: chat: template syntax error at line {e.lineno}: {e.message}") from None


def _load(path: Path, model: type[PromptForms], what: str) -> Any:
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise BadInput(f"{path}: cannot read the {what}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise BadInput(f"{path}: invalid YAML: {e}") from None
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        raise BadInput(f"{path}: invalid {model.__name__}:\n{format_validation_error(e)}") from None


@dataclass
class GuardPrompt:
    """The chat form of the judge template, rendered in the templates' sandbox; a conversation
    with earlier turns renders the dialogue judge template instead (same rubric, same fields)."""

    judge: JudgeTemplates
    source: str = "judge.yaml"
    # the judge fields the prompt asks for (Catalog.judge_fields); none = Libra's prompt
    fields: list[dict[str, Any]] = field(default_factory=list)
    # templates/shared/dialogue_judge.yaml (variables DIALOGUE_JUDGE_VARIABLES); None: no dialogue rows can render
    dialogue: PromptForms | None = None
    dialogue_source: str = DIALOGUE_JUDGE_FILE

    def __post_init__(self) -> None:
        self._system, self._user = _compile(self.judge, self.source)
        self._dialogue = _compile(self.dialogue, self.dialogue_source) if self.dialogue is not None else None

    @classmethod
    def from_file(cls, path: Path, dialogue: Path | None = None) -> "GuardPrompt":
        """The judge template at `path`, and the dialogue judge template at `dialogue` when given."""
        judge = _load(path, JudgeTemplates, "judge template")
        if dialogue is None:
            return cls(judge, str(path))
        return cls(judge, str(path), dialogue=_load(dialogue, PromptForms, "dialogue judge template"),
                   dialogue_source=str(dialogue))

    def render(self, question: str, response: str, history: list[dict[str, str]] = ()) -> tuple[str, str]:
        """(system, user) for one pair, after the conversation's earlier turns `history` (messages
        {role, content}, from the user; none for a single-turn pair); system is "" when the template
        has none. The guard is trained on the template's first (default) rubric and shown no
        in-context examples."""
        rubric = self.judge.rubrics[0].model_dump()
        if not history:
            variables = dict(zip(JUDGE_VARIABLES, (question, response, rubric, self.fields, [])))
            system, user, source = self._system, self._user, self.source
        else:
            if self._dialogue is None:
                raise BadInput(f"{self.source}: a row has earlier turns (a dialogue), and no dialogue judge template "
                               f"({DIALOGUE_JUDGE_FILE}) is beside it to render its guard prompt")
            conversation = [*history, {"role": "user", "content": question}, {"role": "assistant", "content": response}]
            variables = dict(zip(DIALOGUE_JUDGE_VARIABLES, (conversation, rubric, self.fields, [])))
            (system, user), source = self._dialogue, self.dialogue_source
        try:
            return (system.render(**variables) if system else ""), user.render(**variables)
        except jinja2.TemplateError as e:
            raise BadInput(f"{source}: chat: cannot render: {type(e).__name__}: {e}") from None

    def messages(self, question: str, response: str, label: str, analysis: str,
                 label_position: LabelPosition = "before", fields: dict[str, str] | None = None,
                 history: list[dict[str, str]] = ()) -> list[dict[str, str]]:
        system, user = self.render(question, response, history)
        turns = [{"role": "system", "content": system}] if system else []
        turns.append({"role": "user", "content": user})
        turns.append({"role": "assistant", "content": verdict_json(label, analysis, label_position, fields)})
        return turns


def sft_rows(corpus: pa.Table, prompt: GuardPrompt, label_position: LabelPosition = "before") -> pa.Table:
    """The chat layout of some corpus rows: `messages` plus id, scenario, label (corpus order).
    A prompt with judge fields (the extended target) reads them from the rows' field columns.
    A row's conversation is its `messages` (a corpus from before the column: `row_messages`);
    its earlier turns, if any, make the guard prompt the dialogue judge's."""
    columns = ["question", "response", "label", "analyze", "id", "scenario"]
    columns += [FIELD_COLUMNS[f["name"]] for f in prompt.fields]
    missing = [c for c in columns if c not in corpus.column_names]
    if missing:
        raise BadInput(f"the corpus has no column {', '.join(missing)} (built without those judge fields?)")
    columns += [c for c in ("messages",) if c in corpus.column_names]
    rows = [
        {"messages": prompt.messages(r["question"], r["response"], r["label"], r["analyze"], label_position,
                                     target_fields(r, prompt.fields), (r.get("messages") or row_messages(r))[:-2]),
         "id": r["id"], "scenario": r["scenario"], "label": r["label"]}
        for r in corpus.select(columns).to_pylist()
    ]
    return pa.Table.from_pylist(rows, schema=SFT_SCHEMA)


def alpaca_rows(sft: pa.Table | pa.RecordBatch) -> list[dict[str, Any]]:
    """The Alpaca layout of `sft_rows`: same prompt text, as instruction with an empty input."""
    out = []
    for r in sft.to_pylist():
        turns = {t["role"]: t["content"] for t in r["messages"]}
        out.append({"instruction": turns["user"], "input": "", "output": turns["assistant"],
                    "system": turns.get("system", ""), "id": r["id"], "scenario": r["scenario"], "label": r["label"]})
    return out


def _empty_analysis(corpus: pa.Table) -> int:
    return sum(1 for a in corpus.column("analyze").to_pylist() if not (a or "").strip())


def write_sft(path: Path, splits: dict[str, Iterable[pa.Table]], prompt: GuardPrompt, *,
              label_position: LabelPosition, name: str = "synth") -> dict[str, Any]:
    """Write the SFT view (chat parquet + Alpaca jsonl + dataset_info.json + card) into `path`.

    `splits` maps train / validation to corpus rows, a table at a time (needs question, response,
    label, analyze, id, scenario). Returns counts for the manifest.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "data").mkdir(parents=True)
    (tmp / "alpaca").mkdir()
    counts: dict[str, Any] = {"label_position": label_position, **({"target": "extended"} if prompt.fields else {})}
    empty_analysis = 0

    def rendered(tables: Iterable[pa.Table]) -> Iterator[pa.Table]:
        nonlocal empty_analysis
        for corpus in tables:
            empty_analysis += _empty_analysis(corpus)
            yield sft_rows(corpus, prompt, label_position)

    for split in SPLITS:
        data = tmp / "data" / f"{split}-00000-of-00001.parquet"
        counts[f"{split}_rows"] = write_parquet([data], SFT_SCHEMA, rendered(splits.get(split, ())))
        written = pq.ParquetFile(data).iter_batches(batch_size=CHUNK_ROWS)  # the alpaca rows from the chat rows
        write_jsonl(tmp / "alpaca" / f"{split}.jsonl", (row for batch in written for row in alpaca_rows(batch)))
    counts["empty_analysis"] = empty_analysis
    write_dataset_info(tmp / "dataset_info.json", has_system=bool(prompt.judge.chat.system))
    (tmp / "README.md").write_text(_card(name, counts, label_position), encoding="utf-8")
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    return counts


def write_alpaca(path: Path, splits: dict[str, Iterable[pa.Table]], prompt: GuardPrompt, *,
                 label_position: LabelPosition) -> dict[str, Any]:
    """Only the Alpaca layout: `path/{train,validation}.jsonl` and a dataset_info.json for them."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    counts: dict[str, Any] = {"label_position": label_position}
    for split in SPLITS:
        chats = (sft_rows(corpus, prompt, label_position) for corpus in splits.get(split, ()))
        rows = (row for chat in chats for row in alpaca_rows(chat))
        counts[f"{split}_rows"] = write_jsonl(path / f"{split}.jsonl", rows)
    write_dataset_info(path / "dataset_info.json", has_system=bool(prompt.judge.chat.system), layouts=("alpaca",),
                       alpaca_dir="")
    return counts


def dataset_info(*, has_system: bool = False, layouts: Iterable[str] = ("messages", "alpaca"),
                 alpaca_dir: str = "alpaca") -> dict[str, Any]:
    """LLaMA-Factory's dataset_info.json entries, file names relative to its dataset_dir."""
    info: dict[str, Any] = {}
    prefix = f"{alpaca_dir}/" if alpaca_dir else ""
    for split in SPLITS:
        if "messages" in layouts:
            info[LLAMA_FACTORY_NAMES["messages"][split]] = {
                "file_name": f"data/{split}-00000-of-00001.parquet",
                "formatting": "sharegpt",
                "columns": {"messages": "messages"},
                "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                         "assistant_tag": "assistant", "system_tag": "system"},
            }
        if "alpaca" in layouts:
            columns = {"prompt": "instruction", "query": "input", "response": "output"}
            if has_system:
                columns["system"] = "system"
            info[LLAMA_FACTORY_NAMES["alpaca"][split]] = {
                "file_name": f"{prefix}{split}.jsonl", "formatting": "alpaca", "columns": columns,
            }
    return info


def write_dataset_info(path: Path, **kwargs: Any) -> None:
    Path(path).write_text(json.dumps(dataset_info(**kwargs), ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def _card(name: str, counts: dict[str, Any], label_position: str) -> str:
    order = '{"答案": ..., "分析": ...}' if label_position == "before" else '{"分析": ..., "答案": ...}'
    # No `configs:` block (see export._write_card): splits come from the file names.
    return f"""---
language:
- zh
task_categories:
- text-generation
tags:
- safety
- guard
- sft
---

# {name}: guard pretraining (SFT) view

**Content warning.** The prompts quote machine-written questions that request harmful content and
answers that may comply with them. They exist to train safety classifiers.

Stage one of a Libra-Guard style guard: the user turn is the guard prompt (the build's judge template,
chat form, with the question and the answer; for a multi-turn conversation, the dialogue judge template
with the whole conversation, its last answer to judge), the assistant turn is the verdict JSON `{order}`.
Same train / validation split as `../corpus/`.

- rows: train {counts.get('train_rows', 0)}, validation {counts.get('validation_rows', 0)}
- label position: `{label_position}` (`export.label_position`, or `synth export --label-position`)
- rows whose agreed analysis is empty: {counts.get('empty_analysis', 0)}

```python
import datasets
sft = datasets.load_dataset("path/to/build/sft")  # messages, id, scenario, label
alpaca = datasets.load_dataset("json", data_files={{"train": "path/to/build/sft/alpaca/train.jsonl",
                                                    "validation": "path/to/build/sft/alpaca/validation.jsonl"}})
```

TRL: `SFTTrainer(train_dataset=sft["train"], ...)` takes the `messages` column as is.
LLaMA-Factory: `dataset_dir: path/to/build/sft`, `dataset: {LLAMA_FACTORY_NAMES['messages']['train']}`
(or `{LLAMA_FACTORY_NAMES['alpaca']['train']}`), `eval_dataset: {LLAMA_FACTORY_NAMES['messages']['validation']}`.
"""
