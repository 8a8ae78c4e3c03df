"""qwythos mtp restore: heads from HF folders, GGUFs with a nextn block and stand-alone MTP GGUFs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf.quants import dequantize, quantize
from typer.testing import CliRunner

from qwythos.cli import app
from qwythos.core.errors import QwythosError
from qwythos.core.gguf.file import read_header, read_tensor_bytes
from qwythos.core.model.structure import check_structure
from qwythos.mtp.restore import restore
from qwythos.mtp.sources import open_head


def assert_same_gguf(a, b) -> None:
    """Same metadata (keys, order, types, values), same tensors (order, type, shape, bytes)."""
    ha, hb = read_header(a), read_header(b)
    assert list(ha.kv) == list(hb.kv)
    for k in ha.kv:
        assert (ha.kv[k], ha.kv_types[k]) == (hb.kv[k], hb.kv_types[k]), k
    assert [(t.name, t.ggml_type, t.ne) for t in ha.tensors] == [
        (t.name, t.ggml_type, t.ne) for t in hb.tensors
    ]
    for t in ha.tensors:
        assert read_tensor_bytes(ha, t.name) == read_tensor_bytes(hb, t.name), t.name
    assert a.read_bytes() == b.read_bytes()


def test_from_hf_folder_equals_converter_output(mtp_fixture_ggufs, tiny_mtp_dir, tmp_path):
    r = restore(mtp_fixture_ggufs["trunk"], tiny_mtp_dir, tmp_path / "g.gguf")
    assert r.mode == "grafted" and r.head_block == 4 and r.block_count == 5
    assert_same_gguf(r.output, mtp_fixture_ggufs["full"])


def test_from_gguf_with_nextn_equals_converter_output(mtp_fixture_ggufs, tmp_path):
    r = restore(mtp_fixture_ggufs["trunk"], mtp_fixture_ggufs["full"], tmp_path / "g.gguf")
    assert r.source_kind == "GGUF with a nextn block"
    assert_same_gguf(r.output, mtp_fixture_ggufs["full"])


def test_separate_round_trip(mtp_fixture_ggufs, tmp_path):
    sep = restore(mtp_fixture_ggufs["trunk"], mtp_fixture_ggufs["full"], tmp_path / "mtp.gguf", separate=True)
    hdr = read_header(sep.output)
    names = [t.name for t in hdr.tensors]
    assert names[:3] == ["output.weight", "token_embd.weight", "output_norm.weight"]
    assert all(n.startswith("blk.4.") for n in names[3:]) and len(names) == 3 + 15
    assert hdr.kv["qwen35.block_count"] == 5 and hdr.kv["qwen35.nextn_predict_layers"] == 1
    st = check_structure(sep.output, trunk=mtp_fixture_ggufs["trunk"])
    assert st.ok and st.kind == "stand-alone head", st.issues
    # the stand-alone file is itself a source
    r = restore(mtp_fixture_ggufs["trunk"], sep.output, tmp_path / "g.gguf")
    assert r.source_kind == "stand-alone MTP GGUF"
    assert_same_gguf(r.output, mtp_fixture_ggufs["full"])


def test_hf_source_reads_only_the_mtp_shards(trained_dir, other_head_dir, tmp_path):
    head = open_head(trained_dir)
    assert head.kind == "hf" and head.files_read == ["model-00002-of-00002.safetensors"]
    # a folder holding only config, index and the head's shard is enough
    part = tmp_path / "partial"
    part.mkdir()
    for f in ("config.json", "model.safetensors.index.json", "model-00002-of-00002.safetensors"):
        shutil.copy(trained_dir / f, part / f)
    assert open_head(part).names == head.names
    assert not (other_head_dir / "model-00001-of-00002.safetensors").exists()
    assert len(open_head(other_head_dir).tensors) == 15


def test_q8_0_head_on_a_bf16_trunk(mtp_fixture_ggufs, tmp_path):
    r = restore(mtp_fixture_ggufs["trunk"], mtp_fixture_ggufs["full"], tmp_path / "q8.gguf", head_type="q8_0")
    hdr, ref = read_header(r.output), read_header(mtp_fixture_ggufs["full"])
    types = {t.name: GGMLQuantizationType(t.ggml_type) for t in hdr.tensors}
    assert types["blk.4.nextn.eh_proj.weight"] == GGMLQuantizationType.Q8_0
    assert types["blk.4.attn_q.weight"] == GGMLQuantizationType.Q8_0
    assert types["blk.4.nextn.enorm.weight"] == GGMLQuantizationType.F32
    assert types["blk.3.ffn_up.weight"] == GGMLQuantizationType.BF16  # the trunk is untouched
    t = next(t for t in ref.tensors if t.name == "blk.4.ffn_up.weight")
    bf16 = np.frombuffer(read_tensor_bytes(ref, t.name), dtype=np.uint8).reshape(t.shape[0], -1)
    f32 = dequantize(bf16, GGMLQuantizationType.BF16)
    want = quantize(f32, GGMLQuantizationType.Q8_0).tobytes()
    assert read_tensor_bytes(hdr, "blk.4.ffn_up.weight") == want
    assert check_structure(r.output).ok


def test_mismatched_head_names_tensor_and_shapes_and_writes_nothing(mtp_fixture_ggufs, trained_dir, tmp_path):
    out = tmp_path / "bad.gguf"
    with pytest.raises(QwythosError) as e:
        restore(mtp_fixture_ggufs["trunk"], trained_dir, out)  # hidden 128 head on a hidden 256 trunk
    msg = str(e.value)
    assert "blk.4.nextn.eh_proj.weight" in msg and "[128, 256]" in msg and "[256, 512]" in msg
    assert not out.exists() and not list(tmp_path.iterdir())


def test_refusals(mtp_fixture_ggufs, tiny_qwythos_dir, tiny_mtp_dir, tmp_path):
    with pytest.raises(QwythosError, match="no mtp"):
        restore(mtp_fixture_ggufs["trunk"], tiny_qwythos_dir, tmp_path / "a.gguf")
    with pytest.raises(QwythosError, match="already has an MTP head"):
        restore(mtp_fixture_ggufs["full"], tiny_mtp_dir, tmp_path / "b.gguf")
    with pytest.raises(QwythosError, match="no MTP head"):
        restore(mtp_fixture_ggufs["trunk"], mtp_fixture_ggufs["trunk"], tmp_path / "c.gguf")
    with pytest.raises(QwythosError, match="unknown head --type"):
        restore(mtp_fixture_ggufs["trunk"], tiny_mtp_dir, tmp_path / "d.gguf", head_type="iq2_xxs")
    assert not list(tmp_path.iterdir())
    # --force replaces an existing head
    r = restore(mtp_fixture_ggufs["full"], tiny_mtp_dir, tmp_path / "e.gguf", force=True)
    assert_same_gguf(r.output, mtp_fixture_ggufs["full"])


def test_cli_restore_json(mtp_fixture_ggufs, tiny_mtp_dir, tmp_path):
    out = tmp_path / "cli.gguf"
    res = CliRunner().invoke(
        app,
        [
            "mtp",
            "restore",
            str(mtp_fixture_ggufs["trunk"]),
            "--from",
            str(tiny_mtp_dir),
            "-o",
            str(out),
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["mode"] == "grafted" and data["head_block"] == 4 and len(data["head_tensors"]) == 15
    assert_same_gguf(out, mtp_fixture_ggufs["full"])
    res = CliRunner().invoke(
        app, ["mtp", "restore", str(mtp_fixture_ggufs["trunk"]), "--from", str(tmp_path / "nope")]
    )
    assert res.exit_code == 1 and "does not exist" in res.output
