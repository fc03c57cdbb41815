"""Chinese obfuscation attacks: deterministic rewrites of a question, no model call.

Users hide the words a keyword filter looks for; a guard has to read through that. Each
tactic is a small function (question, rng, tables) → rewritten question, or None when the
question has nothing it can work on. The substitution tables are data, in
`seeds/obfuscation/*.yaml` (abstract, everyday words only), loaded and checked once: a
malformed entry is an error naming the file and line.

| tactic | what it does | table |
|---|---|---|
| `homophone` | a key word → a word that sounds alike (诈骗 → 炸骗) | homophones.yaml |
| `variant` | characters → traditional or variant forms (钱 → 錢) | variants.yaml |
| `pinyin` | a key word → its pinyin (赌博 → dubo) | pinyin.yaml |
| `initials` | a key word → its pinyin initials (赌博 → db) | pinyin.yaml |
| `mixed_script` | one character of a key word → its pinyin (赌博 → du博) | pinyin.yaml |
| `split` | a character → its components (骗 → 马扁) | split.yaml |
| `symbols` | symbols between the characters of a key word (赌*博) | symbols.yaml |
| `fullwidth_spacing` | ASCII → full-width, a key word spaced out (赌　博) | symbols.yaml |

A key word is the longest table word found in the question; `symbols` and
`fullwidth_spacing`, which need no table word, fall back to the longest word jieba finds.
The `obfuscate` stage (synth/stages/generation.py) applies one tactic to a configured share
of the questions, harmful and benign alike (so a guard does not learn "obfuscated =
unsafe"): chosen per row from the build's seed, the same every run.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

from synth.errors import BadInput

TABLE_FILES = ("homophones", "variants", "pinyin", "split", "symbols")
PREFIX = "obfuscation:"  # the `attack` of an obfuscated row: obfuscation:<tactic>


@dataclass
class Tables:
    homophones: dict[str, list[str]] = field(default_factory=dict)
    variants: dict[str, list[str]] = field(default_factory=dict)
    pinyin: dict[str, list[str]] = field(default_factory=dict)  # word → syllables, one per character
    split: dict[str, str] = field(default_factory=dict)
    symbols: list[str] = field(default_factory=list)
    spaces: list[str] = field(default_factory=list)
    hash: str = ""


def _is_han(text: str) -> bool:
    return bool(text) and all("\u3400" <= c <= "\u9fff" or "\U00020000" <= c <= "\U0002ffff" for c in text)


def _entries(path: Path, key: str) -> list[tuple[int, yaml.Node, yaml.Node]]:
    """(line, key node, value node) of the mapping under `key`, from the YAML node tree (for lines)."""
    try:
        root = yaml.compose(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInput(f"{path}: obfuscation table not found") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise BadInput(f"{path}{f' line {mark.line + 1}' if mark else ''}: invalid YAML: "
                       f"{getattr(e, 'problem', e)}") from None
    if not isinstance(root, yaml.MappingNode):
        raise BadInput(f"{path}: an obfuscation table must be a mapping with a `{key}` key")
    found = next((v for k, v in root.value if k.value == key), None)
    if found is None:
        raise BadInput(f"{path}: no `{key}` key")
    if key == "table":
        if not isinstance(found, yaml.MappingNode) or not found.value:
            raise BadInput(f"{path} line {found.start_mark.line + 1}: `table` must be a non-empty mapping")
        return [(k.start_mark.line + 1, k, v) for k, v in found.value]
    return [(found.start_mark.line + 1, found, found)]


def _strings(node: yaml.Node) -> list[str] | None:
    if isinstance(node, yaml.ScalarNode):
        return [node.value] if node.value.strip() else None
    if isinstance(node, yaml.SequenceNode) and node.value and all(isinstance(v, yaml.ScalarNode) for v in node.value):
        values = [v.value for v in node.value]
        return values if all(v.strip() for v in values) else None
    return None


def load_tables(directory: Path) -> Tables:
    """The tables in `directory` (seeds/obfuscation), checked entry by entry."""
    directory = Path(directory)
    tables = Tables()
    digest = hashlib.sha256()
    checks: dict[str, tuple[Callable[[str, list[str]], bool], str]] = {
        "homophones": (lambda k, v: len(k) >= 2 and _is_han(k) and all(_is_han(x) and x != k for x in v),
                       "a word of 2+ Chinese characters → different Chinese words"),
        "variants": (lambda k, v: len(k) == 1 and _is_han(k) and all(len(x) == 1 and x != k for x in v),
                     "one character → other single characters"),
        "pinyin": (lambda k, v: _is_han(k) and len(v) == 1 and len(v[0].split()) == len(k)
                   and all(s.isascii() and s.isalpha() and s.islower() for s in v[0].split()),
                   "a word → one lower-case syllable per character, space-separated"),
        "split": (lambda k, v: len(k) == 1 and _is_han(k) and len(v) == 1 and len(v[0]) >= 2,
                  "one character → its components (2+ characters)"),
    }
    for name in TABLE_FILES:
        path = directory / f"{name}.yaml"
        if path.exists():
            digest.update(name.encode() + path.read_bytes())
        if name == "symbols":
            for key in ("symbols", "spaces"):
                [(line, _, node)] = _entries(path, key)
                values = ([v.value for v in node.value if isinstance(v, yaml.ScalarNode)]
                          if isinstance(node, yaml.SequenceNode) else None)  # spaces are whitespace: not stripped
                if (not values or len(values) != len(node.value) or any(len(v) != 1 for v in values)
                        or len(set(values)) != len(values)):
                    raise BadInput(f"{path} line {line}: `{key}` must be a list of distinct single characters")
                setattr(tables, key, values)
            continue
        check, shape = checks[name]
        seen: dict[str, int] = {}
        table: dict[str, list[str]] = {}
        for line, key_node, value_node in _entries(path, "table"):
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else ""
            values = _strings(value_node)
            if key in seen:
                raise BadInput(f"{path} line {line}: `{key}` is already defined at line {seen[key]}")
            if not key or values is None or not check(key, values):
                raise BadInput(f"{path} line {line}: entry `{key}` is not {shape}")
            seen[key] = line
            table[key] = values
        if name == "pinyin":
            tables.pinyin = {k: v[0].split() for k, v in table.items()}
        elif name == "split":
            tables.split = {k: v[0] for k, v in table.items()}
        else:
            setattr(tables, name, table)
    tables.hash = digest.hexdigest()[:16]
    return tables


# -- the tactics --------------------------------------------------------------------------

def _key_word(text: str, words) -> str | None:
    """The longest table word in `text` (the first in the text on a tie)."""
    found = [w for w in words if w in text]
    return max(found, key=lambda w: (len(w), -text.index(w))) if found else None


def _any_word(text: str, t: Tables) -> str | None:
    """A table word, else the longest Chinese word jieba finds (2+ characters)."""
    word = _key_word(text, [*t.homophones, *t.pinyin])
    if word:
        return word
    import jieba

    words = [w for w in jieba.lcut(text) if len(w) >= 2 and _is_han(w)]
    return max(words, key=len) if words else None


def _homophone(text: str, rng: random.Random, t: Tables) -> str | None:
    word = _key_word(text, t.homophones)
    return text.replace(word, rng.choice(t.homophones[word]), 1) if word else None


def _variant(text: str, rng: random.Random, t: Tables) -> str | None:
    spots = [i for i, c in enumerate(text) if c in t.variants]
    if not spots:
        return None
    chosen = set(rng.sample(spots, max(1, len(spots) // 2)))
    return "".join(rng.choice(t.variants[c]) if i in chosen else c for i, c in enumerate(text))


def _pinyin(text: str, rng: random.Random, t: Tables) -> str | None:
    word = _key_word(text, t.pinyin)
    return text.replace(word, "".join(t.pinyin[word]), 1) if word else None


def _initials(text: str, rng: random.Random, t: Tables) -> str | None:
    word = _key_word(text, t.pinyin)
    return text.replace(word, "".join(s[0] for s in t.pinyin[word]), 1) if word else None


def _mixed_script(text: str, rng: random.Random, t: Tables) -> str | None:
    word = _key_word(text, t.pinyin)
    if not word:
        return None
    i = rng.randrange(len(word))
    return text.replace(word, word[:i] + t.pinyin[word][i] + word[i + 1:], 1)


def _split(text: str, rng: random.Random, t: Tables) -> str | None:
    spots = [i for i, c in enumerate(text) if c in t.split]
    if not spots:
        return None
    i = rng.choice(spots)
    return text[:i] + t.split[text[i]] + text[i + 1:]


def _symbols(text: str, rng: random.Random, t: Tables) -> str | None:
    word = _any_word(text, t)
    return text.replace(word, rng.choice(t.symbols).join(word), 1) if word else None


_FULLWIDTH = {c: chr(ord(c) + 0xFEE0) for c in map(chr, range(0x21, 0x7F)) if c.isalnum()}


def _fullwidth_spacing(text: str, rng: random.Random, t: Tables) -> str | None:
    word = _any_word(text, t)
    if not word:
        return None
    spaced = text.replace(word, rng.choice(t.spaces).join(word), 1)
    return "".join(_FULLWIDTH.get(c, c) for c in spaced)


TACTICS: dict[str, Callable[[str, random.Random, Tables], str | None]] = {
    "homophone": _homophone, "variant": _variant, "pinyin": _pinyin, "initials": _initials,
    "mixed_script": _mixed_script, "split": _split, "symbols": _symbols, "fullwidth_spacing": _fullwidth_spacing,
}


def obfuscate(text: str, tactics: list[str], rng: random.Random, tables: Tables) -> tuple[str, str] | None:
    """(tactic, rewritten text) for the first of `tactics`, in an order drawn from `rng`, that
    changes `text`; None if none does."""
    order = list(tactics)
    rng.shuffle(order)
    for tactic in order:
        out = TACTICS[tactic](text, rng, tables)
        if out and out != text:
            return tactic, out
    return None
