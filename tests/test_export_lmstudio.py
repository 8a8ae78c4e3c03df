"""LM Studio export: `lms import` placement, never overwriting, and model.yaml against its schema."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import gguf  # noqa: F401
import pytest
import yaml
from typer.testing import CliRunner

from qwythos.cli import app
from qwythos.core import header, release  # noqa: F401
from qwythos.core.errors import QwythosError
from qwythos.export.lmstudio import export_lmstudio
from qwythos.testing import stubs  # noqa: F401

# model.yaml rules from lmstudio-js (VirtualModelDefinition, KV config schematics).
MODEL_RE = re.compile(r"^[^/]+/[^/]+$")
KNOWN_FIELDS = {
    # key -> check of the value
    "llm.prediction.temperature": lambda v: isinstance(v, float) and 0 <= v <= 2,
    "llm.prediction.topKSampling": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "llm.prediction.topPSampling": lambda v: v.keys() == {"checked", "value"} and 0 < v["value"] <= 1,
    "llm.prediction.repeatPenalty": lambda v: v.keys() == {"checked", "value"} and v["value"] >= 1,
    "llm.load.contextLength": lambda v: isinstance(v, int) and v >= 1,
    "llm.load.llama.speculativeDecoding.draftMtp": lambda v: isinstance(v, bool),
    "llm.load.llama.speculativeDecoding.draftMaxTokens": lambda v: isinstance(v, int) and v >= 1,
}
TRI_STATE = (True, False, "mixed")


def check_model_yaml(doc: dict) -> None:
    assert MODEL_RE.match(doc["model"])
    assert isinstance(doc["base"], list) and doc["base"]
    for b in doc["base"]:
        assert isinstance(b["key"], str) and b["sources"]
        for s in b["sources"]:
            assert s["type"] == "huggingface" and s["user"] and s["repo"]
    meta = doc["metadataOverrides"]
    assert meta["domain"] == "llm"
    for k in ("reasoning", "trainedForToolUse", "vision"):
        assert meta[k] in TRI_STATE
    assert all(isinstance(n, int) for n in meta["contextLengths"])
    assert isinstance(meta["minMemoryUsageBytes"], int)
    for section in ("operation", "load"):
        for f in doc["config"][section]["fields"]:
            assert f["key"] in KNOWN_FIELDS, f["key"]
            assert KNOWN_FIELDS[f["key"]](f["value"]), f
            assert f["key"].startswith("llm.load." if section == "load" else "llm.prediction.")


@pytest.fixture
def mtp_gguf(tmp_path: Path) -> Path:
    d = tmp_path / "src"
    d.mkdir()
    return stubs.write_stub_gguf(d / release.gguf_file_name("Q4_K_M", mtp=True))


@pytest.fixture
def trunk_gguf(tmp_path: Path) -> Path:
    d = tmp_path / "src"
    d.mkdir(exist_ok=True)
    return stubs.write_stub_gguf(d / release.gguf_file_name("Q4_K_M"), nextn_layers=0)


def fields(doc: dict, section: str) -> dict:
    return {f["key"]: f["value"] for f in doc["config"][section]["fields"]}


def test_copy_places_like_lms_import_and_writes_model_yaml(mtp_gguf: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    r = export_lmstudio(mtp_gguf, models_dir=models)
    expected = models / "empero-ai" / "Qwythos-9B-Claude-Mythos-5-1M-MTP-GGUF" / mtp_gguf.name
    assert r.dest == expected and r.action == "copied"
    assert expected.read_bytes() == mtp_gguf.read_bytes() and mtp_gguf.exists()
    assert r.lms_command == (
        f"lms import {mtp_gguf} --user-repo empero-ai/Qwythos-9B-Claude-Mythos-5-1M-MTP-GGUF -y -c"
    )
    doc = yaml.safe_load(r.model_yaml.read_text())
    check_model_yaml(doc)
    op = fields(doc, "operation")
    assert op["llm.prediction.temperature"] == 0.6
    assert op["llm.prediction.topKSampling"] == 20
    assert op["llm.prediction.topPSampling"] == {"checked": True, "value": 0.95}
    assert op["llm.prediction.repeatPenalty"] == {"checked": True, "value": 1.05}
    load = fields(doc, "load")
    assert load["llm.load.llama.speculativeDecoding.draftMtp"] is True
    assert load["llm.load.llama.speculativeDecoding.draftMaxTokens"] == 3
    assert load["llm.load.contextLength"] == 32768
    meta = doc["metadataOverrides"]
    assert meta["reasoning"] is True and meta["trainedForToolUse"] is True
    assert meta["architectures"] == ["qwen35"] and meta["minMemoryUsageBytes"] == mtp_gguf.stat().st_size
    # the stub's template has enable_thinking: a thinking switch bound to that jinja variable
    assert doc["customFields"][0]["effects"] == [{"type": "setJinjaVariable", "variable": "enable_thinking"}]


def test_no_head_no_mtp_drafting(trunk_gguf: Path, tmp_path: Path) -> None:
    r = export_lmstudio(trunk_gguf, models_dir=tmp_path / "m", publisher="me", context=8192)
    doc = yaml.safe_load(r.model_yaml.read_text())
    check_model_yaml(doc)
    load = fields(doc, "load")
    assert not any("speculativeDecoding" in k for k in load)
    assert load["llm.load.contextLength"] == 8192
    assert r.dest.parent.parent.name == "me" and doc["model"].startswith("me/")


def test_same_bytes_is_a_no_op_different_file_is_refused(mtp_gguf: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    first = export_lmstudio(mtp_gguf, models_dir=models)
    again = export_lmstudio(mtp_gguf, models_dir=models)
    assert (again.action, again.yaml_action) == ("already in place", "unchanged")
    first.dest.unlink()
    first.dest.write_bytes(b"someone else's model")
    with pytest.raises(QwythosError, match="already exists and differs"):
        export_lmstudio(mtp_gguf, models_dir=models)
    assert first.dest.read_bytes() == b"someone else's model"


def test_a_user_edited_model_yaml_is_not_overwritten(mtp_gguf: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    r = export_lmstudio(mtp_gguf, models_dir=models)
    r.model_yaml.write_text("model: me/mine\n")
    r.dest.unlink()
    with pytest.raises(QwythosError, match="model.yaml already exists"):
        export_lmstudio(mtp_gguf, models_dir=models)
    assert not r.dest.exists()  # nothing placed when the yaml conflicts


@pytest.mark.parametrize("mode, flag", [("hardlink", " -L"), ("symlink", " -l"), ("move", "")])
def test_link_and_move_modes(mtp_gguf: Path, tmp_path: Path, mode: str, flag: str) -> None:
    data = mtp_gguf.read_bytes()
    r = export_lmstudio(mtp_gguf, models_dir=tmp_path / "models", mode=mode)
    assert r.dest.read_bytes() == data
    assert r.lms_command.endswith(f"-y{flag}")
    if mode == "hardlink":
        assert os.path.samefile(r.dest, mtp_gguf) and not r.dest.is_symlink()
    elif mode == "symlink":
        assert r.dest.is_symlink() and r.dest.resolve() == mtp_gguf.resolve()
    else:
        assert not mtp_gguf.exists()


def test_unwritable_models_dir(mtp_gguf: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with pytest.raises(QwythosError, match="cannot write"):
        export_lmstudio(mtp_gguf, models_dir=blocker)


def test_refuses_a_non_qwen35_file(tmp_path: Path) -> None:
    g = stubs.write_stub_gguf(tmp_path / "x.gguf", arch="llama")
    with pytest.raises(QwythosError, match="not qwen35"):
        export_lmstudio(g, models_dir=tmp_path / "models")
    assert not (tmp_path / "models").exists()


def test_cli(mtp_gguf: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(
        app, ["export", "lmstudio", str(mtp_gguf), "--models-dir", str(tmp_path / "m"), "--link"]
    )
    assert res.exit_code == 0, res.output
    assert "lms import" in res.output and "-L" in res.output
    res = runner.invoke(
        app, ["export", "lmstudio", str(mtp_gguf), "--models-dir", str(tmp_path / "m2"), "--copy", "--move"]
    )
    assert res.exit_code == 1
    res = runner.invoke(
        app, ["export", "lmstudio", str(mtp_gguf), "--models-dir", str(tmp_path / "m3"), "--json"]
    )
    assert json.loads(res.stdout)["action"] == "copied"


@pytest.mark.parametrize("kind, has_mtp", [("mtp", True), ("trunk", False)])
def test_converter_output(export_real_gguf, tmp_path: Path, kind: str, has_mtp: bool) -> None:
    g = Path(export_real_gguf(kind))
    r = export_lmstudio(g, models_dir=tmp_path / "models", mode="symlink")
    doc = yaml.safe_load(r.model_yaml.read_text())
    check_model_yaml(doc)
    assert ("llm.load.llama.speculativeDecoding.draftMtp" in fields(doc, "load")) is has_mtp
