"""qwythos mtp validate: structure checks, and measured acceptance on the trained tiny model
(right head passes clearly, another seed's head fails near chance, a separate draft equals the graft)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from qwythos.cli import app
from qwythos.core.errors import QwythosError
from qwythos.core.gguf.file import read_header, write_gguf
from qwythos.core.model.structure import check_model, check_structure
from qwythos.mtp.restore import restore
from qwythos.mtp.validate import DEFAULT_TEXT, expected_length, validate

GATE = 0.3  # the trained head reaches ~0.5 at depth 1 on the bundled text; chance is ~0.001


def test_structure_of_grafted_separate_and_trunk(trained_ggufs):
    st = check_structure(trained_ggufs["full"])
    assert st.ok and st.kind == "trunk+head" and st.head_block == 4 and len(st.tensors) == 15
    sep = check_structure(trained_ggufs["separate"], trunk=trained_ggufs["trunk"])
    assert sep.ok and sep.kind == "stand-alone head"
    trunk = check_structure(trained_ggufs["trunk"])
    assert not trunk.ok and trunk.kind == "trunk only"
    # the whole-file check finds all three sound (a stand-alone head: its globals and block only)
    assert [check_model(trained_ggufs[k]) for k in ("full", "separate", "trunk", "wrong")] == [[], [], [], []]


def test_structure_names_a_missing_and_a_misshapen_tensor(trained_ggufs, tmp_path):
    from qwythos.mtp.restore import _kvs, _raw_plan

    hdr = read_header(trained_ggufs["full"])
    kvs = _kvs(hdr, 4)
    plans = [_raw_plan(hdr, t) for t in hdr.tensors if t.name != "blk.4.nextn.hnorm.weight"]
    bad = tmp_path / "missing.gguf"
    write_gguf(bad, "qwen35", kvs, plans)
    st = check_structure(bad)
    assert not st.ok and any(
        i.tensor == "blk.4.nextn.hnorm.weight" and "missing" in i.problem for i in st.issues
    )
    rep = validate(bad)
    assert not rep.passed and "blk.4.nextn.hnorm.weight" in rep.reason and not rep.depths
    assert [str(i) for i in check_model(bad)] == ["blk.4.nextn.hnorm.weight is missing"]


def test_structure_names_an_unknown_type_and_a_misshapen_head_tensor(trained_ggufs, tmp_path):
    from qwythos.mtp.restore import _kvs, _raw_plan

    hdr = read_header(trained_ggufs["full"])
    plans = [_raw_plan(hdr, t) for t in hdr.tensors]
    for p in plans:
        if p.name == "blk.4.attn_k.weight":
            p.ggml_type = 99  # a type id no ggml knows
        if p.name == "blk.4.ffn_up.weight":
            p.shape = tuple(reversed(p.shape))
    bad = tmp_path / "bad.gguf"
    write_gguf(bad, "qwen35", _kvs(hdr, 4), plans)
    # an unknown type id is refused by the header reader itself, as llama.cpp's GGUF loader does
    with pytest.raises(QwythosError, match="tensor blk.4.attn_k.weight has GGML type id 99"):
        check_structure(bad)
    write_gguf(bad, "qwen35", _kvs(hdr, 4), [p for p in plans if p.name != "blk.4.attn_k.weight"])
    problems = sorted(str(i) for i in check_structure(bad).issues)
    assert problems[0] == "blk.4.attn_k.weight is missing"
    assert problems[1].startswith("blk.4.ffn_up.weight has shape") and len(problems) == 2
    assert sorted(str(i) for i in check_model(bad)) == problems


def test_expected_length():
    from qwythos.mtp.validate import DepthRow

    rows = [DepthRow(1, 5, 10, 0.5), DepthRow(2, 2, 5, 0.4), DepthRow(3, 1, 2, 0.5)]
    assert expected_length(rows) == pytest.approx(0.5 + 0.2 + 0.1)


@pytest.mark.slow
def test_right_head_passes_wrong_head_fails(trained_ggufs):
    right = validate(trained_ggufs["full"], depth=3, min_accept=GATE)
    assert right.passed, right.reason
    assert right.depths[0].rate > 0.4 and right.depths[0].total > 1000
    assert right.expected_accepted_length > 0.5
    wrong = validate(trained_ggufs["wrong"], depth=3, min_accept=GATE)
    assert not wrong.passed
    assert wrong.depths[0].rate < 0.1  # another training run's head: near chance
    # the stand-alone head next to the unchanged trunk measures the same
    sep = validate(trained_ggufs["trunk"], draft=trained_ggufs["separate"], depth=3, min_accept=GATE)
    assert sep.passed
    assert [(d.accepted, d.total) for d in sep.depths] == [(d.accepted, d.total) for d in right.depths]


@pytest.mark.slow
def test_cli_exit_codes_and_json(trained_ggufs):
    ok = CliRunner().invoke(
        app, ["mtp", "validate", str(trained_ggufs["full"]), "--min-accept", str(GATE), "--json"]
    )
    assert ok.exit_code == 0, ok.output
    data = json.loads(ok.stdout)
    assert data["passed"] and data["structure"]["ok"] and len(data["depths"]) == 3
    assert data["text"] == str(DEFAULT_TEXT)
    bad = CliRunner().invoke(app, ["mtp", "validate", str(trained_ggufs["wrong"]), "--min-accept", str(GATE)])
    assert bad.exit_code != 0 and "FAIL" in bad.output
    none = CliRunner().invoke(app, ["mtp", "validate", str(trained_ggufs["trunk"])])
    assert none.exit_code != 0 and "no MTP head" in none.output


def test_head_q8_0_keeps_acceptance(trained_ggufs, tmp_path):
    q8 = restore(trained_ggufs["trunk"], trained_ggufs["full"], tmp_path / "q8.gguf", head_type="q8_0").output
    assert check_structure(q8).ok
    rep = validate(q8, depth=1, min_accept=GATE)
    bf16 = validate(trained_ggufs["full"], depth=1, min_accept=GATE)
    assert rep.passed and abs(rep.depths[0].rate - bf16.depths[0].rate) < 0.02


@pytest.mark.slow
@pytest.mark.reference
def test_torch_forward_matches_llama_cpp(trained_dir, trained_ggufs):
    """The training script's MTP forward (torch) and llama.cpp's MTP graph agree at depth 1."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import importlib.util

    import torch
    from tokenizers import Tokenizer

    from qwythos.mtp.acceptance import measure_acceptance

    spec = importlib.util.spec_from_file_location(
        "train_tiny", trained_dir.parents[1] / "scripts" / "train_tiny.py"
    )
    tt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tt)
    text = DEFAULT_TEXT.read_text(encoding="utf-8")
    ids = Tokenizer.from_file(str(trained_dir / "tokenizer.json")).encode(text).ids
    torch.set_num_threads(2)
    stats = tt.agreement(tt.load_trained(trained_dir), torch.tensor(ids + [0]), seq=len(ids), depth=1)
    ours = measure_acceptance(str(trained_ggufs["full"]), text=text, depth=1, max_tokens=4096)
    assert ours.n_tokens == len(ids)
    (acc, tot) = stats["counts"][0]
    # same positions but the first (llama.cpp's loop also drafts from position 0 with a zero h)
    assert abs(acc / tot - ours.rates[0]) < 0.005, (acc, tot, ours.accepted, ours.total)


def test_cli_default_gate_is_the_library_default():
    import inspect

    from qwythos.commands.mtp import mtp_validate
    from qwythos.mtp.validate import DEFAULT_MIN_ACCEPT

    opt = inspect.signature(mtp_validate).parameters["min_accept"].default
    assert opt.default == DEFAULT_MIN_ACCEPT > 0
