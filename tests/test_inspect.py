"""qwythos inspect: summaries of converted fixtures, refusal of non-GGUF and truncated files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from gguf import GGUFReader, GGUFValueType

from qwythos.core.errors import QwythosError
from qwythos.core.gguf.file import KV, RawSource, TensorPlan, read_header, write_gguf
from qwythos.core.model.summary import summarize


def test_summary_of_mtp_gguf(tiny_mtp_dir: Path, tiny_mtp_gguf: Path) -> None:
    tc = json.loads((tiny_mtp_dir / "config.json").read_text())["text_config"]
    s = summarize(tiny_mtp_gguf)
    assert s.arch == "qwen35" and s.file_type == "BF16"
    assert s.context_length == tc["max_position_embeddings"]
    assert s.trunk_layers == tc["num_hidden_layers"] and s.block_count == tc["num_hidden_layers"] + 1
    assert s.linear_attention_layers == tc["layer_types"].count("linear_attention")
    assert s.full_attention_layers == tc["layer_types"].count("full_attention")
    assert s.mtp_present and s.nextn_predict_layers == 1
    assert s.vocab_size == tc["vocab_size"] and s.chat_template
    r = GGUFReader(tiny_mtp_gguf)
    assert s.n_tensors == len(r.tensors)
    assert sum(s.bytes_by_type.values()) == sum(int(t.n_bytes) for t in r.tensors)
    assert set(s.bytes_by_type) == {"BF16", "F32"}
    assert s.file_size == tiny_mtp_gguf.stat().st_size
    assert s.ok and s.issues == []


def test_summary_of_trunk(tiny_trunk_gguf: Path) -> None:
    s = summarize(tiny_trunk_gguf)
    assert not s.mtp_present and s.nextn_predict_layers == 0 and "restore" in s.mtp_note
    assert s.ok and s.issues == []


def test_refuses_non_gguf(tiny_mtp_dir: Path) -> None:
    with pytest.raises(QwythosError, match="not a GGUF file") as e:
        summarize(tiny_mtp_dir / "config.json")
    assert "config.json" in str(e.value)
    shard = sorted(tiny_mtp_dir.glob("*.safetensors"))[0]
    with pytest.raises(QwythosError, match="not a GGUF file"):
        summarize(shard)


def test_refuses_truncated(tiny_trunk_gguf: Path, tmp_path: Path) -> None:
    data = tiny_trunk_gguf.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(QwythosError, match="truncated"):
        summarize(cut)
    cut.write_bytes(data[:200])
    with pytest.raises(QwythosError, match="truncated"):
        summarize(cut)


def test_cli_inspect(tiny_mtp_gguf: Path, tmp_path: Path) -> None:
    run = [sys.executable, "-m", "qwythos.cli", "inspect"]
    env = {**os.environ, "COLUMNS": "400"}
    p = subprocess.run(
        [*run, str(tiny_mtp_gguf), "--json"], capture_output=True, text=True, timeout=60, env=env
    )
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["arch"] == "qwen35" and d["mtp_present"] is True
    p = subprocess.run([*run, str(tiny_mtp_gguf)], capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode == 0 and "qwen35" in p.stdout
    bad = tmp_path / "x.gguf"
    bad.write_text("hello")
    p = subprocess.run([*run, str(bad)], capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode == 1 and "not a GGUF file" in p.stderr and "Traceback" not in p.stderr


# ---------------------------------------------------------------- structural check (issue 15)


def rewrite(src: Path, dst: Path, *, kv=None, add=(), drop=(), shapes=None, types=None) -> Path:
    """A copy of GGUF `src` with metadata values replaced (`kv`), keys added (`add`: KVs), tensors
    dropped, or their recorded shape / type id changed (the bytes stay)."""
    hdr = read_header(src)
    kvs = []
    for k, v in hdr.kv.items():
        vt, sub = hdr.kv_types[k]
        kvs.append(
            KV(k, GGUFValueType(vt), (kv or {}).get(k, v), GGUFValueType(sub) if sub is not None else None)
        )
    plans = [
        TensorPlan(
            t.name,
            tuple((shapes or {}).get(t.name, t.shape)),
            (types or {}).get(t.name, t.ggml_type),
            t.nbytes,
            lambda: b"",
            raw=RawSource(hdr.path, t.offset, t.nbytes),
        )
        for t in hdr.tensors
        if t.name not in drop
    ]
    write_gguf(dst, "qwen35", kvs + list(add), plans, alignment=hdr.alignment)
    return dst


def _only_issue(path: Path, needle: str) -> str:
    s = summarize(path)
    assert not s.ok
    assert needle in s.issues[0], s.issues
    return s.issues[0]


def test_missing_trunk_tensor(tiny_trunk_gguf: Path, tmp_path: Path) -> None:
    bad = rewrite(tiny_trunk_gguf, tmp_path / "b.gguf", drop={"blk.1.ssm_out.weight"})
    assert _only_issue(bad, "blk.1.ssm_out.weight") == "blk.1.ssm_out.weight is missing"


def test_wrong_shape(tiny_trunk_gguf: Path, tmp_path: Path) -> None:
    t = next(t for t in read_header(tiny_trunk_gguf).tensors if t.name == "blk.3.ffn_up.weight")
    swapped = tuple(reversed(t.shape))
    bad = rewrite(tiny_trunk_gguf, tmp_path / "b.gguf", shapes={t.name: swapped})
    issue = _only_issue(bad, "blk.3.ffn_up.weight")
    assert f"has shape {list(swapped)}, expected {list(t.shape)}" in issue


def test_unknown_type_id(tiny_trunk_gguf: Path, tmp_path: Path) -> None:
    """llama.cpp's GGUF loader refuses an unknown type id: so does the header reader, before any
    summary (inspect and the exports never vouch for it)."""
    bad = rewrite(tiny_trunk_gguf, tmp_path / "b.gguf", types={"blk.2.ffn_down.weight": 99})
    with pytest.raises(QwythosError, match="tensor blk.2.ffn_down.weight has GGML type id 99") as e:
        summarize(bad)
    assert str(bad) in str(e.value) and e.value.hint


def test_wrong_embedding_length(tiny_trunk_gguf: Path, tmp_path: Path) -> None:
    n_embd = read_header(tiny_trunk_gguf).kv["qwen35.embedding_length"]
    bad = rewrite(tiny_trunk_gguf, tmp_path / "b.gguf", kv={"qwen35.embedding_length": n_embd // 2})
    issue = _only_issue(bad, "qwen35.embedding_length")
    assert f"is {n_embd // 2} but token_embd.weight has rows of {n_embd}" in issue


def test_declared_head_without_tensors(tiny_trunk_gguf: Path, tmp_path: Path) -> None:
    """What llama.cpp's converter writes for the Qwythos layout: llama.cpp refuses it."""
    hdr = read_header(tiny_trunk_gguf)
    n = hdr.kv["qwen35.block_count"]
    bad = rewrite(
        tiny_trunk_gguf,
        tmp_path / "b.gguf",
        kv={
            "qwen35.block_count": n + 1,
            "qwen35.attention.recurrent_layers": hdr.kv["qwen35.attention.recurrent_layers"] + [False],
        },
        add=[KV("qwen35.nextn_predict_layers", GGUFValueType.UINT32, 1)],
    )
    _only_issue(bad, f"qwen35.nextn_predict_layers is 1 but the file has no blk.{n}.nextn.* tensors")


def test_cli_inspect_exits_1_naming_the_problem(tiny_trunk_gguf: Path, tmp_path: Path) -> None:
    bad = rewrite(tiny_trunk_gguf, tmp_path / "b.gguf", drop={"blk.0.attn_qkv.weight", "output_norm.weight"})
    run = [sys.executable, "-m", "qwythos.cli", "inspect", str(bad)]
    env = {**os.environ, "COLUMNS": "400"}
    p = subprocess.run(run, capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert "output_norm.weight is missing (and 1 more)" in p.stderr and str(bad) in p.stderr
    assert "2 problem(s)" in p.stdout  # the summary is still shown
    p = subprocess.run([*run, "--json"], capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert sorted(json.loads(p.stdout)["issues"]) == [
        "blk.0.attn_qkv.weight is missing",
        "output_norm.weight is missing",
    ]


def test_llama_cpp_load_failure_names_the_reason(tiny_trunk_gguf: Path, tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    from qwythos.core.llamacpp.handles import load_model

    t = next(t for t in read_header(tiny_trunk_gguf).tensors if t.name == "blk.3.ffn_up.weight")
    bad = rewrite(tiny_trunk_gguf, tmp_path / "b.gguf", shapes={t.name: tuple(reversed(t.shape))})
    with pytest.raises(
        QwythosError, match="llama.cpp failed to load .*b.gguf: blk.3.ffn_up.weight has shape"
    ) as e:
        load_model(bad)
    assert "qwythos inspect" in e.value.hint


def test_exports_refuse_what_is_present_and_wrong(tiny_trunk_gguf: Path, tmp_path: Path) -> None:
    """The one gate (summary.exportable): a tensor of the wrong shape is refused before any export
    writes a file; a missing tensor stays an issue the summary reports."""
    from qwythos.core.model.summary import exportable

    t = next(t for t in read_header(tiny_trunk_gguf).tensors if t.name == "blk.3.ffn_up.weight")
    bad = rewrite(tiny_trunk_gguf, tmp_path / "b.gguf", shapes={t.name: tuple(reversed(t.shape))})
    with pytest.raises(QwythosError, match="is not a loadable qwen35 GGUF: blk.3.ffn_up.weight has shape"):
        exportable(bad)
    gap = rewrite(tiny_trunk_gguf, tmp_path / "g.gguf", drop={"blk.1.ssm_out.weight"})
    assert exportable(gap).issues == ["blk.1.ssm_out.weight is missing"]
