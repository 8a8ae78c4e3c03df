"""Ollama export: the Modelfile rules (parser of Ollama's grammar) and the files we write."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import gguf  # noqa: F401
import pytest
from typer.testing import CliRunner

from qwythos.cli import app
from qwythos.core.drafting.lengths import DEFAULT_DRAFT
from qwythos.core.errors import QwythosError
from qwythos.core.model import release, summary
from qwythos.export.modelfile import Command, parse_modelfile, render_modelfile, to_request
from qwythos.export.ollama import (
    ModelfileSpec,
    default_spec,
    export_ollama,
    render,
    required_version,
)
from qwythos.testing import stubs  # noqa: F401

REPO = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------ Ollama's Modelfile grammar


def test_parser_reads_commands_case_insensitively_and_skips_comments() -> None:
    cmds = parse_modelfile(
        "# a comment\n  from ./m.gguf\nParameter top_k 20\n\n   # another\nSYSTEM hi there\n"
    )
    assert cmds == [Command("model", "./m.gguf"), Command("top_k", "20"), Command("system", "hi there")]


def test_parser_multiline_triple_and_single_quotes() -> None:
    text = 'FROM x\nTEMPLATE """line one\n  "quoted" line\nlast"""\nSYSTEM "a\nb"\nLICENSE plain\n'
    cmds = parse_modelfile(text)
    assert cmds[1] == Command("template", 'line one\n  "quoted" line\nlast')
    assert cmds[2] == Command("system", "a\nb")
    assert cmds[3] == Command("license", "plain")


def test_parser_crlf_and_bom() -> None:
    cmds = parse_modelfile('\ufeffFROM x\r\nSYSTEM """a\r\nb"""\r\nPARAMETER stop <|im_end|>\r\n')
    assert cmds == [Command("model", "x"), Command("system", "a\r\nb"), Command("stop", "<|im_end|>")]


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("FROM x\nBOGUS y\n", "unknown command"),
        ("FROM x\nPARAMETER\n", "followed by a blank"),
        ("FROM x\nFROM: y\n", "followed by a blank"),
        ("FROM x\nPARAMETER top-k 3\n", "PARAMETER needs a name"),
        ("FROM x\nMESSAGE robot hi\n", "message role"),
        ('FROM x\nSYSTEM """never closed\n', "never closed"),
        ('FROM x\nSYSTEM "never closed', "never closed"),
        ("PARAMETER top_k 3\n", "no FROM"),
        ("FROM", "unexpected end"),
    ],
)
def test_parser_rejects_what_ollama_rejects(text: str, fragment: str) -> None:
    with pytest.raises(QwythosError, match=fragment):
        parse_modelfile(text)


@pytest.mark.parametrize(
    "line, fragment",
    [
        ("PARAMETER top_kk 3", "unknown parameter 'top_kk'"),
        ("PARAMETER num_thread_count 3", "unknown parameter"),
        ("PARAMETER top_k 2.5", "not a valid int"),
        ("PARAMETER temperature warm", "not a valid float"),
        ("PARAMETER use_mmap yes", "not a valid bool"),
        ("REQUIRES latest", "not a version"),
    ],
)
def test_request_checks_parameter_names_and_types(line: str, fragment: str, tmp_path: Path) -> None:
    with pytest.raises(QwythosError, match=fragment):
        to_request(parse_modelfile(f"FROM x\n{line}\n"), tmp_path)


def test_request_types_and_stop_list(tmp_path: Path) -> None:
    text = "FROM x\nPARAMETER top_k 20\nPARAMETER top_p 0.95\nPARAMETER use_mmap true\n"
    text += (
        "PARAMETER stop <|im_end|>\nPARAMETER stop <|endoftext|>\nPARAMETER mirostat 1\nREQUIRES v0.17.1\n"
    )
    req = to_request(parse_modelfile(text), tmp_path)
    assert req.parameters == {
        "top_k": 20,
        "top_p": 0.95,
        "use_mmap": True,
        "stop": ["<|im_end|>", "<|endoftext|>"],
    }
    assert req.requires == "0.17.1"
    assert req.warnings == ["parameter mirostat is deprecated"]
    assert req.model_path is None  # "x" does not exist: Ollama treats it as a model name


def test_writer_quotes_only_what_needs_it_and_round_trips() -> None:
    cmds = [
        Command("model", "./a b.gguf"),
        Command("system", ' padded "x" '),
        Command("template", '{{ .Prompt }}\nends with a quote"'),
        Command("license", "multi\nline"),
        Command("stop", "<|im_end|>"),
    ]
    text = render_modelfile(cmds, ["header"])
    assert text.startswith("# header\n\nFROM ./a b.gguf\n")
    assert "PARAMETER stop <|im_end|>\n" in text
    assert parse_modelfile(text) == cmds


def test_writer_refuses_a_value_ollama_would_cut_short() -> None:
    with pytest.raises(QwythosError, match="cannot write"):
        render_modelfile([Command("model", "x"), Command("system", 'a"""\nb"\nc """')])


# ------------------------------------------------------------------ the Modelfile we write


def test_mtp_file_gets_renderer_parser_sampling_and_draft(mtp_gguf: Path) -> None:
    r = export_ollama(mtp_gguf)
    assert r.modelfile == mtp_gguf.parent / "Modelfile"
    text = r.modelfile.read_text()
    assert text == r.text
    lines = text.splitlines()
    assert lines[0] == f"# Ollama Modelfile for {mtp_gguf.name}"
    assert "quant Q4_K_M" in lines[1] and "MTP head: yes" in lines[1]
    cmds = parse_modelfile(text)
    req = to_request(cmds, r.modelfile.parent)
    assert req.model == f"./{mtp_gguf.name}"
    assert req.model_path is not None and req.model_path.resolve() == mtp_gguf.resolve()
    assert (req.renderer, req.parser, req.template) == ("qwen3.5", "qwen3.5", None)
    assert req.requires == "0.30.0" and r.requires == "0.30.0"
    assert "Needs Ollama >= 0.30.0" in text and "counted in its block_count" in text
    assert req.parameters == {
        "temperature": 0.6,
        "top_p": 0.95,
        "top_k": 20,
        "repeat_penalty": 1.05,
        "num_ctx": 32768,
        "stop": ["<|im_end|>", "<|endoftext|>"],
        "draft_num_predict": DEFAULT_DRAFT,
    }
    assert len(req.licenses) == 1 and "Apache-2.0" in req.licenses[0]
    assert "apache.org/licenses/LICENSE-2.0" in req.licenses[0]


def test_trunk_file_gets_no_draft(trunk_gguf: Path) -> None:
    r = export_ollama(trunk_gguf, ctx=65536)
    req = to_request(parse_modelfile(r.text), trunk_gguf.parent)
    assert "draft_num_predict" not in req.parameters
    assert req.parameters["num_ctx"] == 65536
    assert req.requires == "0.17.6"  # the dedicated Qwen3.5 renderer/parser (#14605)
    assert "Needs Ollama >= 0.17.6" in r.text and "#14605" in r.text
    assert r.draft == 0 and not r.has_mtp
    with pytest.raises(QwythosError, match="no MTP"):
        export_ollama(trunk_gguf, ctx=65536, draft=2, force=True)


def test_draft_zero_turns_mtp_off(mtp_gguf: Path) -> None:
    r = export_ollama(mtp_gguf, draft=0)
    req = to_request(parse_modelfile(r.text), mtp_gguf.parent)
    assert "draft_num_predict" not in req.parameters and "drafting off" in r.text
    # a file with a head needs the llama-server engine even when it does not draft
    assert req.requires == "0.30.0"


def test_required_version_follows_the_layers_the_file_declares(tmp_path: Path) -> None:
    """block_count counts a declared nextn layer whether or not its tensors are there: any declared
    head needs 0.30.0; only a file without one runs on 0.17.6."""

    def spec(**kw) -> ModelfileSpec:
        return ModelfileSpec(from_path="./m.gguf", file_name="m.gguf", quant="Q4_K_M", **kw)

    assert required_version(spec(has_mtp=False)) == "0.17.6"
    assert required_version(spec(has_mtp=False, declares_head=True)) == "0.30.0"
    assert required_version(spec(has_mtp=True)) == "0.30.0"
    assert required_version(spec(has_mtp=True, draft=3)) == "0.30.0"
    trunk_only = stubs.write_stub_gguf(tmp_path / "t.gguf", nextn_layers=0, block_count=32)
    assert "\nREQUIRES 0.17.6\n" in export_ollama(trunk_only, tmp_path / "M1").text


def test_create_command_quotes_the_path(mtp_gguf: Path, tmp_path: Path) -> None:
    out = tmp_path / "my folder" / "Modelfile"
    r = export_ollama(mtp_gguf, out)
    assert shlex.split(r.create_command) == ["ollama", "create", "qwythos-9b", "-f", str(out)]


def test_from_is_relative_to_the_modelfile_folder(mtp_gguf: Path, tmp_path: Path) -> None:
    out = tmp_path / "elsewhere" / "deeper" / "Modelfile"
    r = export_ollama(mtp_gguf, out)
    req = to_request(parse_modelfile(r.text), out.parent)
    assert req.model.startswith("../../")
    assert req.model_path is not None and req.model_path.resolve() == mtp_gguf.resolve()


def test_stop_tokens_come_from_the_file_vocabulary(tmp_path: Path) -> None:
    g = stubs.write_stub_gguf(tmp_path / "m.gguf", tokens=["a", "<|im_end|>"], eos_token="<|im_end|>")
    assert summary.exportable(g).turn_end_tokens == ["<|im_end|>"]
    assert "PARAMETER stop <|endoftext|>" not in export_ollama(g).text


def test_existing_modelfile_same_bytes_is_a_no_op_different_is_refused(mtp_gguf: Path) -> None:
    first = export_ollama(mtp_gguf)
    assert export_ollama(mtp_gguf).unchanged
    first.modelfile.write_text("FROM something-else\n")
    with pytest.raises(QwythosError, match="already exists"):
        export_ollama(mtp_gguf)
    assert first.modelfile.read_text() == "FROM something-else\n"
    assert not export_ollama(mtp_gguf, force=True).unchanged
    assert first.modelfile.read_text() == first.text


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda d: stubs.write_stub_gguf(d / "l.gguf", arch="llama"), "architecture 'llama'"),
        (lambda d: (d / "t.gguf").write_bytes(b"not a gguf at all"), "not a GGUF"),
        (lambda d: (d / "c.gguf").write_bytes(b"GGUF\x03\x00\x00\x00\xff"), "truncated"),
        (lambda d: truncated_copy(d), "truncated"),
        (lambda d: d / "missing.gguf", "does not exist"),
    ],
)
def test_refuses_files_that_are_not_qwen35_ggufs(tmp_path: Path, make, fragment: str) -> None:
    path = make(tmp_path)
    path = path if isinstance(path, Path) else next(tmp_path.iterdir())
    with pytest.raises(QwythosError, match=fragment):
        export_ollama(path)
    assert not (tmp_path / "Modelfile").exists()


def truncated_copy(d: Path) -> Path:
    """A real stub GGUF with its last tensor bytes cut off."""
    g = stubs.write_stub_gguf(d / "whole.gguf")
    data = g.read_bytes()
    g.unlink()
    (d / "cut.gguf").write_bytes(data[:-8])
    return d / "cut.gguf"


def test_refuses_a_head_only_gguf(tmp_path: Path) -> None:
    import numpy as np

    w = gguf.GGUFWriter(str(tmp_path / "head.gguf"), "qwen35")
    w.add_block_count(33)
    w.add_nextn_predict_layers(1)
    w.add_tensor("blk.32.nextn.eh_proj.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(QwythosError, match="no trunk"):
        export_ollama(tmp_path / "head.gguf")


def test_unwritable_destination_is_a_clear_error(mtp_gguf: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(QwythosError, match="a-file"):
        export_ollama(mtp_gguf, blocker / "Modelfile")
    assert blocker.read_text() == "x"


def test_bad_name_is_refused(mtp_gguf: Path) -> None:
    with pytest.raises(QwythosError, match="not an Ollama model name"):
        export_ollama(mtp_gguf, name="bad name!")
    assert "ollama create me/q9:mtp -f Modelfile" in export_ollama(mtp_gguf, name="me/q9:mtp").text


def test_bad_ctx_is_refused(mtp_gguf: Path) -> None:
    with pytest.raises(QwythosError, match="--ctx"):
        export_ollama(mtp_gguf, ctx=0)
    with pytest.raises(QwythosError, match="--ctx"):
        export_ollama(mtp_gguf, ctx=2_000_000)


# ------------------------------------------------------------------ the repository's Modelfile


def test_top_level_modelfile_is_generated_and_up_to_date() -> None:
    committed = (REPO / "Modelfile").read_bytes()
    assert committed == render(default_spec()).encode()
    r = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "make_modelfile.py"), "--check"], capture_output=True
    )
    assert r.returncode == 0, r.stderr
    req = to_request(parse_modelfile(committed.decode()), REPO)
    # the flagship the README's pipeline makes: Q4_K_M with its head restored, drafting on
    assert req.model == "./Qwythos-9B-Claude-Mythos-5-1M-Q4_K_M-MTP.gguf"
    assert req.model == f"./{release.FLAGSHIP_FILE}"
    assert req.parameters["draft_num_predict"] == DEFAULT_DRAFT
    assert req.requires == "0.30.0"
    assert (req.renderer, req.parser) == ("qwen3.5", "qwen3.5")


def test_make_modelfile_check_notices_a_hand_edit(tmp_path: Path) -> None:
    out = tmp_path / "Modelfile"
    script = str(REPO / "scripts" / "make_modelfile.py")
    assert subprocess.run([sys.executable, script, "-o", str(out)], capture_output=True).returncode == 0
    assert subprocess.run([sys.executable, script, "-o", str(out), "--check"]).returncode == 0
    out.write_text(out.read_text().replace("0.6", "0.7"))
    assert (
        subprocess.run([sys.executable, script, "-o", str(out), "--check"], capture_output=True).returncode
        == 1
    )


# ------------------------------------------------------------------ CLI and real converter output


def test_cli_export_ollama(mtp_gguf: Path, trunk_gguf: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["export", "ollama", str(mtp_gguf), "--name", "q9", "--draft", "2", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["draft"] == 2 and data["create_command"].startswith("ollama create q9 -f ")
    res = runner.invoke(
        app, ["export", "ollama", str(trunk_gguf), "-o", str(trunk_gguf.parent / "M2"), "--draft", "1"]
    )
    assert res.exit_code == 1 and "no MTP" in res.output


@pytest.mark.parametrize("kind, has_mtp", [("mtp", True), ("trunk", False)])
def test_converter_output(export_real_gguf, tmp_path: Path, kind: str, has_mtp: bool) -> None:
    g = Path(export_real_gguf(kind))
    r = export_ollama(g, tmp_path / "Modelfile")
    req = to_request(parse_modelfile(r.text), tmp_path)
    assert r.has_mtp is has_mtp
    assert ("draft_num_predict" in req.parameters) is has_mtp
    assert req.parameters["stop"] == ["<|im_end|>", "<|endoftext|>"]
    assert req.model_path is not None and req.model_path.resolve() == g.resolve()


@pytest.mark.slow
@pytest.mark.reference
def test_declared_but_missing_head_gets_no_drafting_anywhere(export_real_gguf, tmp_path: Path) -> None:
    """llama.cpp's converter on the Qwythos layout writes nextn_predict_layers 1 without the tensors:
    no export may switch MTP on for it, and each says why."""
    from qwythos.export.koboldcpp import export_koboldcpp
    from qwythos.export.lmstudio import export_lmstudio

    g = Path(export_real_gguf("qwythos-ref"))
    s = summary.exportable(g)
    assert s.nextn_predict_layers == 1 and s.nextn_tensor_count == 0 and not s.mtp_present
    r = export_ollama(g, tmp_path / "Modelfile")
    req = to_request(parse_modelfile(r.text), tmp_path)
    assert "draft_num_predict" not in req.parameters and any("no nextn tensors" in w for w in r.warnings)
    assert req.requires == "0.30.0"  # its block_count still counts the declared nextn layer
    with pytest.raises(QwythosError, match="no MTP"):
        export_ollama(g, tmp_path / "M2", draft=3)
    lm = export_lmstudio(g, models_dir=tmp_path / "lm", mode="symlink")
    assert "draftMtp" not in lm.yaml_text and lm.warnings
    assert "usemtp" not in export_koboldcpp(g, tmp_path / "k.kcpps").config
