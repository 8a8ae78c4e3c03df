"""llama-server export: a command line whose every flag the pinned llama.cpp's llama-server takes."""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qwythos.cli import app
from qwythos.core.drafting import costs as draft_costs
from qwythos.core.drafting.lengths import DEFAULT_DRAFT
from qwythos.core.errors import QwythosError
from qwythos.core.model import release
from qwythos.export.llama_server import SCRIPT_SUFFIX, export_llama_server
from qwythos.testing import stubs

#: common/speculative.cpp's type names (common_speculative_type_from_name_map).
SPEC_TYPES = {
    "none",
    "draft-simple",
    "draft-eagle3",
    "draft-mtp",
    "draft-dflash",
    "draft-dspark",
    "ngram-simple",
    "ngram-map-k",
    "ngram-map-k4v",
    "ngram-mod",
    "ngram-cache",
}


def server_parser() -> argparse.ArgumentParser:
    """The flags we write, as the llama.cpp that llama-cpp-python 0.3.36 vendors declares them for
    llama-server (common/arg.cpp), re-stated for the test: names and aliases, value types, and the
    checks the parsing lambdas make (-ngl: a count, auto or all; --spec-draft-n-max >= 0;
    --repeat-penalty finite and > 0; --spec-type a comma list of known types). An unknown flag is an
    error: a flag that does not exist in that version fails here."""

    def ngl(v: str) -> str:
        if v in ("auto", "all"):
            return v
        int(v)  # std::stoi
        return v

    def n_max(v: str) -> int:
        if int(v) < 0:
            raise ValueError(v)
        return int(v)

    def penalty(v: str) -> float:
        x = float(v)
        if not math.isfinite(x) or x <= 0:
            raise ValueError(v)
        return x

    def spec_types(v: str) -> list[str]:
        names = v.split(",")
        if not set(names) <= SPEC_TYPES:
            raise ValueError(v)
        return names

    p = argparse.ArgumentParser(prog="llama-server", exit_on_error=False, allow_abbrev=False)
    p.add_argument("-m", "--model", required=True)
    p.add_argument("-a", "--alias")
    p.add_argument("-c", "--ctx-size", type=int)
    p.add_argument("-ngl", "--gpu-layers", "--n-gpu-layers", type=ngl)
    p.add_argument("--jinja", action="store_true")
    p.add_argument("--temp", "--temperature", type=float)
    p.add_argument("--top-p", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--min-p", type=float)
    p.add_argument("--repeat-penalty", type=penalty)
    p.add_argument("--spec-type", type=spec_types)
    p.add_argument("--spec-draft-n-max", type=n_max)
    p.add_argument("-mm", "--mmproj")
    return p


def parsed(r) -> argparse.Namespace:  # noqa: ANN001
    assert r.argv[0] == "llama-server"
    assert shlex.split(r.command) == r.argv
    return server_parser().parse_args(r.argv[1:])


@pytest.fixture
def mtp_gguf(tmp_path: Path) -> Path:
    d = tmp_path / "models"
    d.mkdir()
    return stubs.write_stub_gguf(d / release.gguf_file_name("Q4_K_M", mtp=True))


def test_flags_parse_back_with_card_sampling_and_default_draft(mtp_gguf: Path):
    r = export_llama_server(mtp_gguf)
    a = parsed(r)
    assert a.model == str(mtp_gguf.resolve()) and a.alias == release.LOCAL_NAME
    assert a.ctx_size == release.START_CONTEXT and a.gpu_layers == "auto" and a.jinja
    assert (a.temp, a.top_p, a.top_k, a.min_p, a.repeat_penalty) == (
        release.TEMPERATURE,
        release.TOP_P,
        release.TOP_K,
        release.MIN_P,
        release.REPEAT_PENALTY,
    )
    assert a.spec_type == ["draft-mtp"] and a.spec_draft_n_max == DEFAULT_DRAFT
    assert (r.draft, r.draft_source) == (DEFAULT_DRAFT, "default") and a.mmproj is None
    # the script: beside the GGUF, executable, runs exactly that command (extra flags appended)
    assert r.script == mtp_gguf.with_name(mtp_gguf.stem + SCRIPT_SUFFIX)
    assert os.access(r.script, os.X_OK)
    last = r.script.read_text().splitlines()[-1]
    assert last == f'exec {r.command} "$@"'
    assert export_llama_server(mtp_gguf).unchanged


def test_bench_recommendation_is_the_draft_length(mtp_gguf: Path):
    costs = draft_costs.DraftCosts([0.01, 0.011, 0.012], 0.002, [0.8, 0.6])
    draft_costs.store(mtp_gguf, 1, costs, recommended=2)
    r = export_llama_server(mtp_gguf, force=True)
    assert (r.draft, r.draft_source) == (2, "bench") and parsed(r).spec_draft_n_max == 2
    # what a run kept from its first steps is no recommendation
    other = stubs.write_stub_gguf(mtp_gguf.with_name("other.gguf"))
    draft_costs.store(other, 1, costs, recommended=1, source="run")
    assert export_llama_server(other).draft == DEFAULT_DRAFT
    # --draft wins; 0 turns drafting off
    assert parsed(export_llama_server(mtp_gguf, draft=4, force=True)).spec_draft_n_max == 4
    off = parsed(export_llama_server(mtp_gguf, draft=0, force=True))
    assert off.spec_type is None and off.spec_draft_n_max is None


def test_model_without_head_gets_no_mtp_flags(tmp_path: Path):
    trunk = stubs.write_stub_gguf(tmp_path / release.gguf_file_name("Q4_K_M"), nextn_layers=0)
    r = export_llama_server(trunk)
    a = parsed(r)
    assert a.spec_type is None and a.spec_draft_n_max is None and (r.draft, r.draft_source) == (0, "off")
    with pytest.raises(QwythosError, match="no MTP"):
        export_llama_server(trunk, draft=3, force=True)


def test_projector_beside_the_model_is_passed(mtp_gguf: Path, tiny_qwythos_dir: Path):
    from qwythos.convert import mmproj as mm

    proj = mm.convert_mmproj(tiny_qwythos_dir, mtp_gguf.parent / "mmproj-tiny-F16.gguf").output
    r = export_llama_server(mtp_gguf)
    assert parsed(r).mmproj == str(proj.resolve()) and "found beside the model" in r.mmproj


def test_bad_values_and_an_existing_script(mtp_gguf: Path, tmp_path: Path):
    with pytest.raises(QwythosError, match="-ngl"):
        export_llama_server(mtp_gguf, gpu_layers="lots")
    with pytest.raises(QwythosError, match="--ctx"):
        export_llama_server(mtp_gguf, ctx=release.MODEL_CONTEXT + 1)
    out = tmp_path / "serve.sh"
    out.write_text("mine\n")
    with pytest.raises(QwythosError, match="already exists"):
        export_llama_server(mtp_gguf, out)
    assert out.read_text() == "mine\n"
    assert parsed(export_llama_server(mtp_gguf, out, gpu_layers=99, ctx=65536, force=True)).ctx_size == 65536


def test_command_prints_the_line_and_json(mtp_gguf: Path, tmp_path: Path):
    runner = CliRunner()
    out = tmp_path / "ls.sh"
    res = runner.invoke(app, ["export", "llama-server", str(mtp_gguf), "-o", str(out), "-ngl", "all"])
    assert res.exit_code == 0, res.output
    line = next(x for x in res.stdout.splitlines() if x.startswith("llama-server "))
    a = server_parser().parse_args(shlex.split(line)[1:])
    assert a.gpu_layers == "all" and a.spec_draft_n_max == DEFAULT_DRAFT and out.is_file()
    res = runner.invoke(
        app, ["export", "llama-server", str(mtp_gguf), "-o", str(out), "-ngl", "all", "--json"]
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["unchanged"] is True
    bad = runner.invoke(app, ["export", "llama-server", str(mtp_gguf), "-ngl", "-3"])
    assert bad.exit_code == 1 and "-ngl" in bad.output
