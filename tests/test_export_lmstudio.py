"""LM Studio export: `lms import` placement, never overwriting, and model.yaml against its schema."""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
from pathlib import Path

import gguf  # noqa: F401
import pytest
import yaml
from typer.testing import CliRunner

from qwythos.cli import app
from qwythos.core.errors import QwythosError
from qwythos.core.model import release
from qwythos.export import lmstudio
from qwythos.export.lmstudio import export_lmstudio
from qwythos.testing import stubs  # noqa: F401

# model.yaml rules from lmstudio-js (2026-08: VirtualModelDefinition.ts, lms-kv-config schema.ts) and
# the lms CLI 0.3.43 (push.ts generateManifestJsonFromModelYaml, load.ts, importCmd.ts).
MODEL_RE = re.compile(r"^[^/]+/[^/]+$")
OWNER_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")  # kebabCaseRegex
NAME_RE = re.compile(r"^[a-z0-9]+(?:[-.][a-z0-9]+)*$")  # kebabCaseWithDotsRegex


def checkbox(lo: float, hi: float):
    return lambda v: (
        v.keys() == {"checked", "value"} and isinstance(v["checked"], bool) and lo <= v["value"] <= hi
    )


KNOWN_FIELDS = {
    # key -> check of the value: field type and range from lms-kv-config's schema
    "llm.prediction.temperature": lambda v: isinstance(v, float) and v >= 0,  # numeric, min 0
    "llm.prediction.topKSampling": lambda v: (
        isinstance(v, int) and not isinstance(v, bool) and -1 <= v <= 500
    ),
    "llm.prediction.topPSampling": checkbox(0, 1),
    "llm.prediction.minPSampling": checkbox(0, 1),
    "llm.prediction.repeatPenalty": checkbox(-1, 100),
    "llm.load.contextLength": lambda v: isinstance(v, int) and v >= 1,
    "llm.load.llama.speculativeDecoding.draftMtp": lambda v: isinstance(v, bool),
    "llm.load.llama.speculativeDecoding.draftMaxTokens": lambda v: isinstance(v, int) and v >= 0,
}
TRI_STATE = (True, False, "mixed")


def check_model_yaml(doc: dict) -> None:
    assert MODEL_RE.match(doc["model"])
    owner, name = doc["model"].split("/")
    assert OWNER_RE.match(owner) and NAME_RE.match(name) and len(name) <= 100
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


def expected_manifest(doc: dict) -> dict:
    """What `lms push` writes for a model.yaml whose base is a list of concrete models."""
    owner, name = doc["model"].split("/")
    return {
        "type": "model",
        "owner": owner,
        "name": name,
        "dependencies": [
            {
                "type": "model",
                "modelKeys": [b["key"] for b in doc["base"]],
                "sources": [s for b in doc["base"] for s in b["sources"]],
                "purpose": "baseModel",
            }
        ],
    }


def lms_load_parser() -> argparse.ArgumentParser:
    """`lms load` 0.3.43 as far as we use it: a model key, -c/--context-length (integer >= 1),
    --speculative-draft-mtp, --speculative-draft-max-tokens (integer >= 1, needs a draft flag)."""

    def count(v: str) -> int:
        n = int(v)
        if n < 1:
            raise argparse.ArgumentTypeError("min 1")
        return n

    p = argparse.ArgumentParser(exit_on_error=False)
    p.add_argument("cmd", choices=["load"])
    p.add_argument("model_key")
    p.add_argument("-c", "--context-length", type=count)
    p.add_argument("--speculative-draft-mtp", action="store_true")
    p.add_argument("--speculative-draft-max-tokens", type=count)
    return p


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


@pytest.fixture
def lms_home(tmp_path: Path, monkeypatch) -> Path:
    """A private LM Studio home, and a HOME without one (nothing may touch the real ~/.lmstudio)."""
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    return tmp_path / "lms-home"


def test_gguf_where_lms_import_puts_it_definition_in_the_hub(mtp_gguf: Path, lms_home: Path) -> None:
    r = export_lmstudio(mtp_gguf, home=lms_home)
    folder = "Qwythos-9B-Claude-Mythos-5-1M-MTP-GGUF"
    expected = lms_home / "models" / "empero-ai" / folder / mtp_gguf.name
    assert r.dest == expected and r.action == "copied"
    assert expected.read_bytes() == mtp_gguf.read_bytes() and mtp_gguf.exists()
    assert shlex.split(r.lms_command) == [
        "lms", "import", str(mtp_gguf), "--user-repo", f"empero-ai/{folder}", "-y", "-c"
    ]  # fmt: skip
    # the definition lives in the local Hub folder, not beside the GGUF
    hub = lms_home / "hub" / "models" / "empero-ai" / "qwythos-9b-claude-mythos-5-1m-mtp"
    assert r.model_yaml == hub / "model.yaml" and r.manifest == hub / "manifest.json"
    assert not (expected.parent / "model.yaml").exists()
    doc = yaml.safe_load(r.model_yaml.read_text())
    check_model_yaml(doc)
    assert doc["model"] == r.model_key == "empero-ai/qwythos-9b-claude-mythos-5-1m-mtp"
    assert doc["base"][0]["key"] == r.concrete_key == f"empero-ai/{folder.lower()}"
    assert json.loads(r.manifest.read_text()) == expected_manifest(doc)
    assert r.manifest.read_text() == json.dumps(
        expected_manifest(doc), indent=2
    )  # JSON.stringify(m, null, 2)
    op = fields(doc, "operation")
    assert op["llm.prediction.temperature"] == 0.6
    assert op["llm.prediction.topKSampling"] == 20
    assert op["llm.prediction.topPSampling"] == {"checked": True, "value": 0.95}
    assert op["llm.prediction.minPSampling"] == {"checked": True, "value": 0.0}  # LM Studio's default: 0.05
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
    # the printed `lms load` line loads it the same way
    args = lms_load_parser().parse_args(shlex.split(r.load_command)[1:])
    assert args.model_key == r.model_key and args.context_length == 32768
    assert args.speculative_draft_mtp and args.speculative_draft_max_tokens == 3


def test_home_and_models_folder_found_as_lm_studio_finds_them(
    mtp_gguf: Path, tmp_path: Path, monkeypatch
) -> None:
    user = tmp_path / "user"
    user.mkdir()
    monkeypatch.setenv("HOME", str(user))
    assert lmstudio.lmstudio_home() == user / ".lmstudio"
    (user / ".cache" / "lm-studio").mkdir(parents=True)
    assert lmstudio.lmstudio_home() == user / ".cache" / "lm-studio"
    elsewhere = tmp_path / "elsewhere"
    (user / ".lmstudio-home-pointer").write_text(f"{elsewhere}\n")
    assert lmstudio.lmstudio_home() == elsewhere
    elsewhere.mkdir()
    downloads = tmp_path / "big disk" / "models"
    (elsewhere / "settings.json").write_text(json.dumps({"downloadsFolder": str(downloads)}))
    r = export_lmstudio(mtp_gguf)
    assert r.dest.parent.parent.parent == downloads
    assert r.model_yaml.parent.parent.parent.parent == elsewhere / "hub"
    assert shlex.split(r.lms_command)[2] == str(mtp_gguf)


def test_no_head_no_mtp_drafting(trunk_gguf: Path, lms_home: Path) -> None:
    r = export_lmstudio(trunk_gguf, home=lms_home, publisher="me", context=8192)
    doc = yaml.safe_load(r.model_yaml.read_text())
    check_model_yaml(doc)
    load = fields(doc, "load")
    assert not any("speculativeDecoding" in k for k in load)
    assert load["llm.load.contextLength"] == 8192
    assert r.dest.parent.parent.name == "me" and doc["model"] == "me/qwythos-9b-claude-mythos-5-1m"
    assert shlex.split(r.load_command) == ["lms", "load", "me/qwythos-9b-claude-mythos-5-1m", "-c", "8192"]
    with pytest.raises(QwythosError, match="no MTP"):
        export_lmstudio(trunk_gguf, home=lms_home, publisher="me", context=8192, draft=2)


def test_draft_count_and_off(mtp_gguf: Path, tmp_path: Path) -> None:
    r = export_lmstudio(mtp_gguf, home=tmp_path / "a", draft=2)
    assert (
        fields(yaml.safe_load(r.model_yaml.read_text()), "load")[
            "llm.load.llama.speculativeDecoding.draftMaxTokens"
        ]
        == 2
    )
    off = export_lmstudio(mtp_gguf, home=tmp_path / "b", draft=0)
    assert "speculativeDecoding" not in off.yaml_text and "--speculative" not in off.load_command


@pytest.mark.parametrize("publisher", ["Empero", "me/you", "a_b", ".x", ""])
def test_publisher_must_be_an_lm_studio_owner_name(mtp_gguf: Path, lms_home: Path, publisher: str) -> None:
    with pytest.raises(QwythosError, match="owner name"):
        export_lmstudio(mtp_gguf, home=lms_home, publisher=publisher)
    assert not lms_home.exists()


def test_odd_file_names_make_valid_artifact_names(tmp_path: Path) -> None:
    g = stubs.write_stub_gguf(tmp_path / "My_Model  v2.1-Q4_K_M.gguf")
    r = export_lmstudio(g, home=tmp_path / "h")
    check_model_yaml(yaml.safe_load(r.model_yaml.read_text()))
    assert r.model_key == "empero-ai/my-model-v2.1"


def test_same_bytes_is_a_no_op_different_file_is_refused(mtp_gguf: Path, lms_home: Path) -> None:
    first = export_lmstudio(mtp_gguf, home=lms_home)
    again = export_lmstudio(mtp_gguf, home=lms_home)
    assert (again.action, again.yaml_action) == ("already in place", "unchanged")
    first.dest.unlink()
    first.dest.write_bytes(b"someone else's model")
    with pytest.raises(QwythosError, match="already exists and differs"):
        export_lmstudio(mtp_gguf, home=lms_home)
    assert first.dest.read_bytes() == b"someone else's model"


@pytest.mark.parametrize("which", ["model_yaml", "manifest"])
def test_a_user_edited_definition_is_not_overwritten(mtp_gguf: Path, lms_home: Path, which: str) -> None:
    r = export_lmstudio(mtp_gguf, home=lms_home)
    getattr(r, which).write_text("model: me/mine\n")
    r.dest.unlink()
    with pytest.raises(QwythosError, match="already exists with other content"):
        export_lmstudio(mtp_gguf, home=lms_home)
    assert not r.dest.exists()  # nothing placed when the definition conflicts
    assert getattr(r, which).read_text() == "model: me/mine\n"


@pytest.mark.parametrize("mode, flag", [("hardlink", " -L"), ("symlink", " -l"), ("move", "")])
def test_link_and_move_modes(mtp_gguf: Path, lms_home: Path, mode: str, flag: str) -> None:
    data = mtp_gguf.read_bytes()
    r = export_lmstudio(mtp_gguf, home=lms_home, mode=mode)
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
    with pytest.raises(QwythosError, match="not-a-dir"):
        export_lmstudio(mtp_gguf, home=tmp_path / "h", models_dir=blocker)
    assert blocker.read_text() == "x"


def test_refuses_a_non_qwen35_file(tmp_path: Path) -> None:
    g = stubs.write_stub_gguf(tmp_path / "x.gguf", arch="llama")
    with pytest.raises(QwythosError, match="not qwen35"):
        export_lmstudio(g, home=tmp_path / "h")
    assert not (tmp_path / "h").exists()


def test_cli(mtp_gguf: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    runner = CliRunner()
    base = ["export", "lmstudio", str(mtp_gguf)]
    res = runner.invoke(app, [*base, "--lmstudio-home", str(tmp_path / "m"), "--link"])
    assert res.exit_code == 0, res.output
    assert "lms import" in res.output and "-L" in res.output
    assert "lms load empero-ai/qwythos-9b-claude-mythos-5-1m-mtp --speculative-draft-mtp" in res.output
    res = runner.invoke(app, [*base, "--lmstudio-home", str(tmp_path / "m2"), "--copy", "--move"])
    assert res.exit_code == 1
    res = runner.invoke(app, [*base, "--lmstudio-home", str(tmp_path / "m3"), "--draft", "2", "--json"])
    data = json.loads(res.stdout)
    assert data["action"] == "copied" and data["draft"] == 2
    assert not (tmp_path / "user" / ".lmstudio").exists()


@pytest.mark.parametrize("kind, has_mtp", [("mtp", True), ("trunk", False)])
def test_converter_output(export_real_gguf, tmp_path: Path, kind: str, has_mtp: bool) -> None:
    g = Path(export_real_gguf(kind))
    r = export_lmstudio(g, home=tmp_path / "lms", mode="symlink")
    doc = yaml.safe_load(r.model_yaml.read_text())
    check_model_yaml(doc)
    assert json.loads(r.manifest.read_text()) == expected_manifest(doc)
    assert ("llm.load.llama.speculativeDecoding.draftMtp" in fields(doc, "load")) is has_mtp
