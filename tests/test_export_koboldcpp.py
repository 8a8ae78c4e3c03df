"""KoboldCpp export: .kcpps keyed by koboldcpp.py's argparse destinations, within its limits."""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

import gguf  # noqa: F401
import pytest
from typer.testing import CliRunner

from qwythos.cli import app
from qwythos.core.errors import QwythosError
from qwythos.core.model import release
from qwythos.export.koboldcpp import export_koboldcpp, kcpps_config
from qwythos.testing import stubs  # noqa: F401

TOOL_TEMPLATE = "{% if tools %}<tools>{{ tools | tojson }}</tools>{% endif %}<|im_start|>"


@pytest.fixture
def mtp_gguf(tmp_path: Path) -> Path:
    """A stub named like the Q4_K_M release with an MTP head and a chat template that renders tools."""
    d = tmp_path / "src"
    d.mkdir()
    return stubs.write_stub_gguf(d / release.gguf_file_name("Q4_K_M", mtp=True), chat_template=TOOL_TEMPLATE)


def kobold_parser() -> argparse.ArgumentParser:
    """The arguments we write, as KoboldCpp 1.117's koboldcpp.py declares them (dest names, types,
    choices, ranges, defaults), re-stated for the test:
    - `--model` takes one or more paths (a list); `model_param` is the positional path;
    - `--contextsize` is checked to 256..524288;
    - `--quantkv` is a string choice f16/bf16/q8_0/q5_1/q4_0 (an int level before);
    - `--gendefaults` is JSON text; `--jinja`, `--jinja_tools`, `--usemtp` are flags;
    - `--flashattention` is deprecated (flash attention is on by default): not written any more."""

    def ctx_range(value: str) -> int:
        v = int(value)
        if not 256 <= v <= 524288:
            raise argparse.ArgumentTypeError("contextsize out of range")
        return v

    p = argparse.ArgumentParser(exit_on_error=False)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--model", nargs="+", type=str, default=[])
    g.add_argument("model_param", nargs="?")
    p.add_argument("--config", nargs=1)
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--contextsize", type=ctx_range, default=8192)
    p.add_argument("--gpulayers", nargs="?", const=1, type=int, default=-1)
    p.add_argument("--quantkv", type=str, choices=["f16", "bf16", "q8_0", "q5_1", "q4_0"], default="f16")
    p.add_argument("--jinja", action="store_true")
    p.add_argument("--jinja_tools", action="store_true")
    p.add_argument("--gendefaults", type=str, default="")
    p.add_argument("--usemtp", action="store_true")
    p.add_argument("--draftamount", type=int, default=8)
    return p


def load_like_koboldcpp(kcpps: Path, argv: list[str]) -> argparse.Namespace:
    """koboldcpp's --config: parse argv (defaults), then set every key of the file not given in argv."""
    args = kobold_parser().parse_args(argv)
    for key, value in json.loads(kcpps.read_text()).items():
        if f"--{key}" not in argv:
            setattr(args, key, value)
    if not args.model_param and args.model:
        args.model_param = args.model[0]
    return args


def check_types(cfg: dict) -> None:
    """Each value has the type argparse would have produced for it (what --exportconfig saves)."""
    p = kobold_parser()
    by_dest = {a.dest: a for a in p._actions}
    for key, value in cfg.items():
        action = by_dest[key]
        if isinstance(action, argparse._StoreTrueAction):
            assert value is True, key
        elif action.nargs == "+":
            assert isinstance(value, list) and all(isinstance(v, str) for v in value), key
        elif action.type is not None and action.type is not str:
            assert action.type(str(value)) == value, key
        else:
            assert isinstance(value, str), key
        if action.choices:
            assert value in action.choices, key


def test_kcpps_with_head_loads_with_koboldcpp_semantics(mtp_gguf: Path) -> None:
    r = export_koboldcpp(mtp_gguf, gpulayers=20, threads=6)
    assert r.kcpps == mtp_gguf.with_suffix(".kcpps")
    cfg = json.loads(r.kcpps.read_text())
    dests = {a.dest for a in kobold_parser()._actions}
    assert set(cfg) <= dests, set(cfg) - dests
    assert "flashattention" not in cfg  # deprecated in 1.117
    check_types(cfg)
    args = load_like_koboldcpp(r.kcpps, ["--config", str(r.kcpps)])
    assert Path(args.model_param) == mtp_gguf.resolve() and args.model == [str(mtp_gguf.resolve())]
    assert (args.contextsize, args.gpulayers, args.threads) == (32768, 20, 6)
    assert args.jinja and args.jinja_tools and args.quantkv == "f16"
    assert args.usemtp is True and args.draftamount == 3
    # the card's sampling as KoboldCpp's request defaults
    assert json.loads(args.gendefaults) == {
        "temperature": 0.6,
        "top_p": 0.95,
        "top_k": 20,
        "min_p": 0.0,
        "rep_pen": 1.05,
    }
    # command-line flags override the file, as in koboldcpp
    args = load_like_koboldcpp(r.kcpps, ["--config", str(r.kcpps), "--contextsize", "4096"])
    assert args.contextsize == 4096
    # the printed flag form parses to the same settings; both lines name the version MTP needs
    flags = shlex.split(r.launch_command_flags, comments=True)[1:]
    parsed = kobold_parser().parse_args(flags)
    assert (parsed.model, parsed.contextsize, parsed.usemtp, parsed.draftamount) == (
        [str(mtp_gguf.resolve())],
        32768,
        True,
        3,
    )
    assert json.loads(parsed.gendefaults)["rep_pen"] == 1.05
    for line in (r.launch_command, r.launch_command_flags):
        assert "MTP needs >= 1.116" in line and "#2275" in line
    assert shlex.split(r.launch_command, comments=True) == ["koboldcpp", "--config", str(r.kcpps)]


def test_paths_with_spaces_are_quoted(tmp_path: Path) -> None:
    d = tmp_path / "my models"
    d.mkdir()
    g = stubs.write_stub_gguf(d / release.gguf_file_name("Q4_K_M", mtp=True), chat_template=TOOL_TEMPLATE)
    r = export_koboldcpp(g)
    assert shlex.split(r.launch_command, comments=True)[2] == str(r.kcpps)
    flags = shlex.split(r.launch_command_flags, comments=True)
    assert flags[flags.index("--model") + 1] == str(g.resolve())


def test_no_head_no_usemtp(trunk_gguf: Path) -> None:
    r = export_koboldcpp(trunk_gguf)
    cfg = r.config
    assert "usemtp" not in cfg and "draftamount" not in cfg
    assert "1.116" not in r.launch_command and "KoboldCpp >= 1.117" in r.launch_command
    assert "threads" not in cfg  # left to KoboldCpp's own default
    with pytest.raises(QwythosError, match="no MTP"):
        export_koboldcpp(trunk_gguf, draft=2, force=True)


def test_jinja_tools_only_when_the_template_handles_tools(tmp_path: Path) -> None:
    plain = stubs.write_stub_gguf(tmp_path / "plain.gguf")  # a template without tools
    cfg = export_koboldcpp(plain).config
    assert cfg["jinja"] is True and "jinja_tools" not in cfg


def test_draft_zero_turns_mtp_off(mtp_gguf: Path) -> None:
    assert "usemtp" not in export_koboldcpp(mtp_gguf, draft=0).config


@pytest.mark.parametrize(
    "ctx, ok", [(255, False), (256, True), (262145, True), (524288, True), (524289, False), (1048576, False)]
)
def test_context_limits(mtp_gguf: Path, ctx: int, ok: bool) -> None:
    if ok:
        assert kcpps_config(mtp_gguf, contextsize=ctx)["contextsize"] == ctx
        kobold_parser().parse_args(["--contextsize", str(ctx)])
    else:
        with pytest.raises(QwythosError, match="256..524288"):
            kcpps_config(mtp_gguf, contextsize=ctx)


@pytest.mark.parametrize("kw", [{"quantkv": "q8"}, {"quantkv": 1}, {"gpulayers": -2}, {"threads": 0}])
def test_values_koboldcpp_refuses(mtp_gguf: Path, kw: dict) -> None:
    with pytest.raises(QwythosError):
        kcpps_config(mtp_gguf, **kw)


def test_existing_file_rules(mtp_gguf: Path, tmp_path: Path) -> None:
    out = tmp_path / "q.kcpps"
    export_koboldcpp(mtp_gguf, out)
    assert export_koboldcpp(mtp_gguf, out).unchanged
    with pytest.raises(QwythosError, match="already exists"):
        export_koboldcpp(mtp_gguf, out, contextsize=8192)
    assert json.loads(out.read_text())["contextsize"] == 32768
    export_koboldcpp(mtp_gguf, out, contextsize=8192, force=True)
    assert json.loads(out.read_text())["contextsize"] == 8192  # --force really replaced the file
    with pytest.raises(QwythosError, match=".kcpps"):
        export_koboldcpp(mtp_gguf, tmp_path / "q.json")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(QwythosError, match="file"):
        export_koboldcpp(mtp_gguf, blocker / "q.kcpps")


def test_refuses_non_qwen35(tmp_path: Path) -> None:
    g = stubs.write_stub_gguf(tmp_path / "x.gguf", arch="qwen3")
    with pytest.raises(QwythosError, match="not qwen35"):
        export_koboldcpp(g)
    assert not g.with_suffix(".kcpps").exists()


def test_cli(mtp_gguf: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "cfg.kcpps"
    res = runner.invoke(app, ["export", "koboldcpp", str(mtp_gguf), "-o", str(out), "--ctx", "65536"])
    assert res.exit_code == 0, res.output
    assert "koboldcpp --config" in res.output and json.loads(out.read_text())["contextsize"] == 65536
    res = runner.invoke(app, ["export", "koboldcpp", str(mtp_gguf), "-o", str(out), "--ctx", "100"])
    assert res.exit_code == 1 and "256..524288" in res.output
    res = runner.invoke(
        app, ["export", "koboldcpp", str(mtp_gguf), "-o", str(out), "--quantkv", "q4_0", "--force"]
    )
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["quantkv"] == "q4_0" and "1.116" in res.output


@pytest.mark.parametrize("kind, has_mtp", [("mtp", True), ("trunk", False)])
def test_converter_output(export_real_gguf, tmp_path: Path, kind: str, has_mtp: bool) -> None:
    g = Path(export_real_gguf(kind))
    r = export_koboldcpp(g, tmp_path / "t.kcpps")
    assert r.config.get("usemtp", False) is has_mtp
