"""Model resolution (synth/models.py): embedded models, local paths, HF ids offline."""

from __future__ import annotations

import json
import threading

import pytest

from synth import models
from synth.errors import BadInput


def test_local_checkpoint_dir_resolves_to_absolute_path(tmp_path, monkeypatch):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    assert models.resolve_model("./ckpt") == str(tmp_path / "ckpt")


def test_dir_without_config_is_bad_input(tmp_path):
    with pytest.raises(BadInput, match="no config.json"):
        models.resolve_model(str(tmp_path))


def test_missing_path_is_bad_input(tmp_path):
    with pytest.raises(BadInput, match="no such directory"):
        models.resolve_model(str(tmp_path / "nope"))


def test_unknown_embedded_model_lists_known_ones():
    with pytest.raises(BadInput, match="embedded:gemma3-270m"):
        models.resolve_model("embedded:llama-9000")


def test_hf_id_not_in_cache_names_the_model(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(BadInput, match="Qwen/Qwen2.5-0.5B-Instruct.*never download"):
        models.resolve_model("Qwen/Qwen2.5-0.5B-Instruct")


def test_hf_id_found_in_local_cache(tmp_path, monkeypatch):
    snap = tmp_path / "models--org--tiny" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    (tmp_path / "models--org--tiny" / "refs").mkdir()
    (tmp_path / "models--org--tiny" / "refs" / "main").write_text("abc123")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path))
    try:
        path = models.resolve_model("org/tiny")
    except BadInput:
        pytest.skip("this huggingface_hub reads the cache location at import time only")
    assert path == str(snap)


def _fake(calls: list[int], fail: bool = False):
    def convert(out):
        calls.append(1)
        (out / "config.json").write_text("{}")
        (out / "model.safetensors").write_text("half")
        if fail:
            raise RuntimeError("disk full")
        return {"source": "test"}

    return convert


def test_embedded_conversion_is_atomic_and_runs_once(tmp_path, monkeypatch):
    calls: list[int] = []
    monkeypatch.setitem(models.EMBEDDED, "embedded:fake", models.EmbeddedModel("embedded:fake", "fake", _fake(calls)))
    threads = [threading.Thread(target=models.resolve_model, args=("embedded:fake", tmp_path)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    target = tmp_path / "fake"
    marker = json.loads((target / models.MARKER).read_text())
    assert marker["converter_version"] == models.CONVERTER_VERSION and marker["model"] == "embedded:fake"
    assert models.resolve_model("embedded:fake", tmp_path) == str(target)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".fake.tmp")] == []


def test_failed_conversion_leaves_nothing_usable(tmp_path, monkeypatch):
    calls: list[int] = []
    monkeypatch.setitem(models.EMBEDDED, "embedded:fake", models.EmbeddedModel("embedded:fake", "fake", _fake(calls, fail=True)))
    with pytest.raises(RuntimeError, match="disk full"):
        models.resolve_model("embedded:fake", tmp_path)
    assert not (tmp_path / "fake").exists()
    assert [p.name for p in tmp_path.iterdir() if "tmp" in p.name] == []


def test_half_written_target_without_marker_is_replaced(tmp_path, monkeypatch):
    calls: list[int] = []
    monkeypatch.setitem(models.EMBEDDED, "embedded:fake", models.EmbeddedModel("embedded:fake", "fake", _fake(calls)))
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "model.safetensors").write_text("truncated")
    models.resolve_model("embedded:fake", tmp_path)
    assert calls == [1] and (tmp_path / "fake" / models.MARKER).exists()
    assert (tmp_path / "fake" / "model.safetensors").read_text() == "half"


def test_cache_dir_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("SYNTH_CACHE_DIR", str(tmp_path))
    assert models.models_cache_dir() == tmp_path / "models"
    assert models.models_cache_dir(tmp_path / "x") == tmp_path / "x"


def test_prepare_cli_reports_bad_input(capsys):
    assert models.main(["prepare", "embedded:nope"]) == 2
    assert "unknown embedded model" in capsys.readouterr().err


def test_gguf_is_parsed_once_and_reads_the_same(tmp_path):
    """The conversion's GGUF reader: one parse per file, same fields and tensors as gguf's own."""
    gguf = pytest.importorskip("gguf")
    import numpy as np

    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "gemma3")
    writer.add_array("tokenizer.ggml.tokens", ["<pad>", "你好", "世界", "a"])
    writer.add_uint32("gemma3.context_length", 2048)
    writer.add_tensor("token_embd.weight", np.arange(12, dtype=np.float32).reshape(4, 3))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    original = gguf.GGUFReader
    plain = original(path)
    with models._gguf_parsed_once():
        first, again = gguf.GGUFReader(path), gguf.GGUFReader(str(path))
        assert first is again
        assert type(first.data) is np.ndarray  # not the np.memmap subclass the slow path slices
        for name in ("tokenizer.ggml.tokens", "gemma3.context_length"):
            assert first.fields[name].contents() == plain.fields[name].contents()
        assert first.tensors[0].name == "token_embd.weight"
        assert np.array_equal(first.tensors[0].data, plain.tensors[0].data)
    assert gguf.GGUFReader is original
