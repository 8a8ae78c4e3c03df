"""qwythos inspect: summaries of converted fixtures, refusal of non-GGUF and truncated files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from gguf import GGUFReader

from qwythos.core.errors import QwythosError
from qwythos.core.inspect import inspect_gguf


def test_summary_of_mtp_gguf(tiny_mtp_dir: Path, tiny_mtp_gguf: Path) -> None:
    tc = json.loads((tiny_mtp_dir / "config.json").read_text())["text_config"]
    s = inspect_gguf(tiny_mtp_gguf)
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


def test_summary_of_trunk(tiny_trunk_gguf: Path) -> None:
    s = inspect_gguf(tiny_trunk_gguf)
    assert not s.mtp_present and s.nextn_predict_layers == 0 and "restore" in s.mtp_note


def test_refuses_non_gguf(tiny_mtp_dir: Path) -> None:
    with pytest.raises(QwythosError, match="not a GGUF file") as e:
        inspect_gguf(tiny_mtp_dir / "config.json")
    assert "config.json" in str(e.value)
    shard = sorted(tiny_mtp_dir.glob("*.safetensors"))[0]
    with pytest.raises(QwythosError, match="not a GGUF file"):
        inspect_gguf(shard)


def test_refuses_truncated(tiny_trunk_gguf: Path, tmp_path: Path) -> None:
    data = tiny_trunk_gguf.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(QwythosError, match="truncated"):
        inspect_gguf(cut)
    cut.write_bytes(data[:200])
    with pytest.raises(QwythosError, match="truncated"):
        inspect_gguf(cut)


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
