"""qwythos mtp restore --hf (the head back into a HF folder for vLLM / SGLang) and qwythos mtp check."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from typer.testing import CliRunner

from qwythos.cli import app
from qwythos.convert.text import convert
from qwythos.core.errors import QwythosError
from qwythos.core.model import qwen35
from qwythos.core.model.checkpoint import open_checkpoint, read_safetensors_header, to_f32
from qwythos.core.model.safetensors_writer import SafetensorsEntry, write_pieces, write_safetensors
from qwythos.mtp.hf_check import check_hf, expected_head
from qwythos.mtp.hf_out import INDEX, MTP_SHARD, restore_hf
from qwythos.mtp.restore import restore


def snapshot(folder):
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()}


@pytest.fixture(scope="module")
def head_sources(tiny_mtp_dir, tiny_mtp_gguf, tiny_trunk_gguf, tmp_path_factory):
    """The three kinds of source a head can come from, all holding tiny_mtp_dir's head."""
    d = tmp_path_factory.mktemp("hf-sources")
    separate = restore(tiny_trunk_gguf, tiny_mtp_gguf, d / "mtp-tiny.gguf", separate=True).output
    return {"hf": tiny_mtp_dir, "gguf-nextn": tiny_mtp_gguf, "gguf-mtp": separate}


def test_inverse_transforms_undo_the_converter_on_every_tensor(tiny_mtp_dir):
    """core/model/qwen35.hf_value inverts plus1, neg_exp, squeeze and the V-head reorderings exactly (bf16)."""
    ckpt = open_checkpoint(tiny_mtp_dir)
    cfg = qwen35.text_config_from(ckpt.config)
    seen = set()
    for plan in qwen35.plan_tensors(ckpt, cfg, outtype="f32"):
        rule = qwen35.lookup(qwen35.hf_text_name(plan.source), cfg)[1]
        seen.update(rule.transforms)
        back = qwen35.hf_value(np.asarray(plan.load()).reshape(plan.shape), rule, cfg)
        got = qwen35.cast(back.astype(np.float32), "F32", GGMLQuantizationType.BF16)
        assert got.tobytes() == ckpt.read_copy(plan.source).tobytes(), plan.source
    assert {"plus1", "neg_exp", "squeeze", "v_qkv", "v_rows", "v_rows1", "v_conv", "v_cols"} <= seen


def test_mtp_hf_names_cover_the_block():
    names = {
        qwen35.mtp_hf_name(rel)[0] for rel in ("nextn.eh_proj.weight", "attn_q.weight", "ffn_down.weight")
    }
    assert names == {
        "mtp.fc.weight",
        "mtp.layers.0.self_attn.q_proj.weight",
        "mtp.layers.0.mlp.down_proj.weight",
    }
    assert qwen35.mtp_hf_name("nextn.embed_tokens.weight") is None


@pytest.mark.parametrize("kind", ["hf", "gguf-nextn", "gguf-mtp"])
def test_round_trip_hf_gguf_hf(kind, head_sources, tiny_qwythos_dir, tiny_mtp_dir, tiny_mtp_gguf, tmp_path):
    """Qwythos-shaped folder + head from any source -> the base's mtp.* bytes, and converting the
    written folder gives the converter's GGUF of the base byte for byte."""
    before = snapshot(tiny_qwythos_dir)
    r = restore_hf(tiny_qwythos_dir, head_sources[kind], tmp_path / "out")
    assert r.shard == MTP_SHARD and len(r.head_tensors) == 15 and r.dtype == "BF16"
    base, out = open_checkpoint(tiny_mtp_dir), open_checkpoint(r.output)
    head = sorted(n for n in base.tensors if n.startswith("mtp."))
    assert sorted(n for n in out.tensors if n.startswith("mtp.")) == head and len(head) == 15
    for n in head:
        assert out.read_copy(n).tobytes() == base.read_copy(n).tobytes(), n
        assert out.tensors[n].file.name == MTP_SHARD
    for n in base.tensors:  # the trunk is the fine-tune's, untouched
        if not n.startswith("mtp."):
            assert out.read_copy(n).tobytes() == open_checkpoint(tiny_qwythos_dir).read_copy(n).tobytes()
    g = convert(r.output, tmp_path / "again.gguf", name=tiny_mtp_dir.name).output
    assert g.read_bytes() == tiny_mtp_gguf.read_bytes()
    assert snapshot(tiny_qwythos_dir) == before
    assert not (tmp_path / "out.partial").exists()


def test_folder_layout_links_index_config(tiny_qwythos_dir, tiny_mtp_dir, tmp_path):
    r = restore_hf(tiny_qwythos_dir, tiny_mtp_dir, tmp_path / "linked")
    shards = sorted(p.name for p in tiny_qwythos_dir.glob("*.safetensors"))
    how = {f.name: f.how for f in r.files}
    for s in shards:
        assert how[s] in ("hardlink", "symlink")
        assert os.path.samefile(r.output / s, tiny_qwythos_dir / s)
    assert how[MTP_SHARD] == "written" and how["tokenizer.json"] == "copy"
    assert (r.output / "tokenizer.json").read_bytes() == (tiny_qwythos_dir / "tokenizer.json").read_bytes()
    index = json.loads((r.output / INDEX).read_text())
    sizes = {
        n: i.nbytes for f in r.output.glob("*.safetensors") for n, i in read_safetensors_header(f).items()
    }
    assert index["metadata"]["total_size"] == sum(sizes.values()) == r.total_size
    assert set(index["weight_map"]) == set(sizes) and set(index["weight_map"].values()) == {
        *shards,
        MTP_SHARD,
    }
    config = json.loads((r.output / "config.json").read_text())
    original = json.loads((tiny_qwythos_dir / "config.json").read_text())
    assert config["text_config"]["mtp_num_hidden_layers"] == 1
    assert list(config) == list(original) and config["vision_config"] == original["vision_config"]

    c = restore_hf(tiny_qwythos_dir, tiny_mtp_dir, tmp_path / "copied", copy=True)
    for s in shards:
        p = c.output / s
        assert not p.is_symlink() and not os.path.samefile(p, tiny_qwythos_dir / s)
        assert p.read_bytes() == (tiny_qwythos_dir / s).read_bytes()
    assert c.link_mode == "copy"


def test_replacing_a_head_rewrites_the_shard_that_held_it(tiny_mtp_dir, trained_dir, tmp_path):
    """A trunk that already has mtp.* tensors: refused, or with force the old ones are dropped
    from their shard (an engine would otherwise meet each name twice)."""
    with pytest.raises(QwythosError, match="already has an MTP head"):
        restore_hf(tiny_mtp_dir, tiny_mtp_dir, tmp_path / "a")
    r = restore_hf(tiny_mtp_dir, tiny_mtp_dir, tmp_path / "b", force=True)
    r = restore_hf(tiny_mtp_dir, tiny_mtp_dir, tmp_path / "b", force=True)  # replaces its own earlier output
    assert any(f.how == "rewritten" for f in r.files)
    out = open_checkpoint(r.output)
    assert {out.tensors[n].file.name for n in out.tensors if n.startswith("mtp.")} == {MTP_SHARD}
    assert check_hf(r.output).ok
    # a restored folder is itself a trunk: its head shard is replaced
    again = restore_hf(r.output, tiny_mtp_dir, tmp_path / "again", force=True)
    assert check_hf(again.output).ok and {f.how for f in again.files if f.name == MTP_SHARD} == {"written"}
    # the trained model: its head shard holds only mtp.* tensors, so that shard disappears
    t = restore_hf(trained_dir, trained_dir, tmp_path / "c", force=True)
    assert not (t.output / "model-00002-of-00002.safetensors").exists()
    assert check_hf(t.output).ok


def test_refusals_write_nothing(tiny_qwythos_dir, trained_dir, tiny_trunk_gguf, tmp_path):
    with pytest.raises(QwythosError) as e:
        restore_hf(tiny_qwythos_dir, trained_dir, tmp_path / "x")  # hidden 128 head, hidden 256 trunk
    assert "mtp.fc.weight" in str(e.value) and "[128, 256]" in str(e.value) and "[256, 512]" in str(e.value)
    with pytest.raises(QwythosError, match="is a file"):
        restore_hf(tiny_trunk_gguf, trained_dir, tmp_path / "x")
    with pytest.raises(QwythosError, match="overlaps"):
        restore_hf(tiny_qwythos_dir, trained_dir, tiny_qwythos_dir / "sub")
    with pytest.raises(QwythosError, match="no mtp"):
        restore_hf(tiny_qwythos_dir, tiny_qwythos_dir, tmp_path / "x")
    assert not list(tmp_path.iterdir())
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    with pytest.raises(QwythosError, match="not empty"):
        restore_hf(tiny_qwythos_dir, tiny_qwythos_dir, tmp_path / "full")
    with pytest.raises(QwythosError, match="was not written by"):
        restore_hf(tiny_qwythos_dir, tiny_qwythos_dir, tmp_path / "full", force=True)
    assert (tmp_path / "full" / "notes.txt").read_text() == "mine"
    # another checkpoint folder (here a copy of the trunk) is never replaced either
    shutil.copytree(tiny_qwythos_dir, tmp_path / "other")
    with pytest.raises(QwythosError, match="was not written by"):
        restore_hf(tiny_qwythos_dir, trained_dir, tmp_path / "other", force=True)
    assert sorted(p.name for p in (tmp_path / "other").iterdir()) == sorted(
        p.name for p in tiny_qwythos_dir.iterdir()
    )


# ---- what the engines load: their renaming rules, replayed on the written names ----------------
# vLLM: vllm-project/vllm vllm/model_executor/models/qwen3_5_mtp.py at 01d99805d1ef3d21d30e21a0ae387643fe0cd45a
#   (Qwen3_5MTP.load_weights -> AutoWeightsLoader -> Qwen3_5MultiTokenPredictor.load_weights; the layer is
#   qwen3_5.py Qwen3_5DecoderLayer("full_attention") = Qwen3NextAttention + Qwen3NextMLP + two norms).
# SGLang: sgl-project/sglang python/sglang/srt/models/qwen3_5_mtp.py at 008b79d2358b08adf9b6c879625030f890c8c4e2
#   (Qwen3_5ForCausalLMMTP.load_weights; qwen3_5.py at 005fa711897e800d45bc46e72e02ab730fca3b31: the attention
#   decoder layer holds qkv_proj/o_proj/q_norm/k_norm itself, so the loader drops ".self_attn").
STACKED = [
    ("qkv_proj", "q_proj", "q"),
    ("qkv_proj", "k_proj", "k"),
    ("qkv_proj", "v_proj", "v"),
    ("gate_up_proj", "gate_proj", 0),
    ("gate_up_proj", "up_proj", 1),
]
LAYER = ("input_layernorm", "post_attention_layernorm", "o_proj", "q_norm", "k_norm", "mlp.down_proj")
VLLM_PARAMS = {
    ("model.embed_tokens.weight", None),
    ("model.fc.weight", None),
    ("model.norm.weight", None),
    ("model.pre_fc_norm_hidden.weight", None),
    ("model.pre_fc_norm_embedding.weight", None),
    ("lm_head.weight", None),
    *{("model.layers.0.self_attn.qkv_proj.weight", s) for s in "qkv"},
    *{("model.layers.0.mlp.gate_up_proj.weight", s) for s in (0, 1)},
    *{
        (f"model.layers.0.{'self_attn.' if p in ('o_proj', 'q_norm', 'k_norm') else ''}{p}.weight", None)
        for p in LAYER
    },
}
SGLANG_PARAMS = {
    ("model.embed_tokens.weight", None),
    ("fc.weight", None),
    ("model.norm.weight", None),
    ("pre_fc_norm_hidden.weight", None),
    ("pre_fc_norm_embedding.weight", None),
    *{("model.layers.0.qkv_proj.weight", s) for s in "qkv"},
    *{("model.layers.0.mlp.gate_up_proj.weight", s) for s in (0, 1)},
    *{(f"model.layers.0.{p}.weight", None) for p in LAYER},
}


def _stacked(name, params):
    for param, shard_name, shard in STACKED:
        if shard_name in name and "mlp.experts" not in name:
            mapped = name.replace(shard_name, param)
            if mapped in params:
                return mapped, shard
    return (name, None) if name in params else None


def replay_vllm(names):
    params = {p for p, _ in VLLM_PARAMS}
    loaded, unknown = [], []
    for name in names:
        if name.startswith("mtp."):
            name = name.replace("mtp.", "model.")
        elif "embed_tokens" in name:
            name = name.replace("language_model.", "")
        elif "lm_head" not in name:
            continue
        if "rotary_emb.inv_freq" in name:
            continue
        hit = _stacked(name, params)
        (loaded.append(hit) if hit else unknown.append(name))
    return loaded, unknown


def replay_sglang(names):
    params = {p for p, _ in SGLANG_PARAMS}
    loaded, unknown = [], []
    for name in names:
        if name in ("model.embed_tokens.weight", "model.language_model.embed_tokens.weight"):
            loaded.append(("model.embed_tokens.weight", None))
            continue
        if "rotary_emb.inv_freq" in name or "mtp" not in name:
            continue
        if name.startswith("mtp."):
            name = name.replace("mtp.", "model.").replace("model.fc", "fc").replace("model.pre_fc", "pre_fc")
        if ".self_attn." in name:
            name = name.replace(".self_attn", "")
        hit = _stacked(name, params)
        (loaded.append(hit) if hit else unknown.append(name))
    return loaded, unknown


@pytest.mark.parametrize(("replay", "expected"), [(replay_vllm, VLLM_PARAMS), (replay_sglang, SGLANG_PARAMS)])
def test_engine_loaders_find_every_name_exactly_once(
    replay, expected, tiny_qwythos_dir, tiny_mtp_gguf, tmp_path
):
    r = restore_hf(tiny_qwythos_dir, tiny_mtp_gguf, tmp_path / "out")
    names = list(open_checkpoint(r.output).tensors)
    loaded, unknown = replay(names)
    assert not unknown
    assert sorted(loaded, key=str) == sorted(expected, key=str)  # each parameter (and shard) once
    # the release as published gives the engines nothing to load for the head
    loaded, _ = replay(list(open_checkpoint(tiny_qwythos_dir).tensors))
    assert {p for p, _ in loaded} <= {"model.embed_tokens.weight", "lm_head.weight"}
    # a nested model.mtp.* name would be lost (SGLang warns and skips, vLLM never routes it)
    nested = [("model." + n if n.startswith("mtp.") else n) for n in names]
    loaded, unknown = replay(nested)
    assert len(loaded) < len(expected)


# ---- qwythos mtp check -------------------------------------------------------------------------


@pytest.fixture
def restored(tiny_qwythos_dir, tiny_mtp_dir, tmp_path):
    return restore_hf(tiny_qwythos_dir, tiny_mtp_dir, tmp_path / "restored", copy=True).output


def _rewrite_head(folder, change):
    """Rewrite the mtp shard with `change(name, float32 array) -> array` applied (kept bf16)."""
    shard = folder / MTP_SHARD
    infos = read_safetensors_header(shard)
    arrays = {}
    for n, i in infos.items():
        with open(shard, "rb") as f:
            f.seek(i.offset)
            x = to_f32(np.frombuffer(f.read(i.nbytes), dtype="<u2"), "BF16").reshape(i.shape)
        arrays[n] = qwen35.cast(change(n, x).astype(np.float32), "F32", GGMLQuantizationType.BF16).tobytes()
    tmp = folder / "tmp.safetensors"
    write_safetensors(
        tmp,
        [
            SafetensorsEntry(n, "BF16", i.shape, write_pieces(lambda b=arrays[n]: [b]))
            for n, i in infos.items()
        ],
    )
    os.replace(tmp, shard)


def test_check_passes_a_restored_folder_and_the_trained_model(restored, trained_dir):
    rep = check_hf(restored)
    assert rep.ok and not rep.issues, rep.issues
    assert rep.mtp_promised == 1 and rep.mtp_found == 15 and len(rep.head) == 15
    assert len(rep.norms) == 7 and all(n.verdict == "ok" for n in rep.norms)
    rep = check_hf(trained_dir)
    assert rep.ok and len(rep.norms) == 7 and all(n.verdict == "ok" for n in rep.norms), rep.norms


def test_check_finds_the_release_without_its_head(tiny_qwythos_dir):
    rep = check_hf(tiny_qwythos_dir)
    assert not rep.ok and rep.mtp_found == 0
    assert "promises mtp_num_hidden_layers 1" in rep.issues[0].problem


def test_check_finds_norms_in_gguf_form_and_untrained_norms(restored):
    _rewrite_head(restored, lambda n, x: x + 1 if x.ndim == 1 else x)  # stored as 1 + w
    rep = check_hf(restored)
    assert not rep.ok and {n.verdict for n in rep.norms} == {"+1 too much"}
    _rewrite_head(restored, lambda n, x: np.zeros_like(x) if x.ndim == 1 else x)
    rep = check_hf(restored)
    assert rep.ok and {n.verdict for n in rep.norms} == {"untrained"}
    assert all(i.severity == "warning" for i in rep.issues) and len(rep.issues) == 7


def test_check_finds_index_and_shape_problems(restored, tiny_qwythos_dir):
    index = json.loads((restored / INDEX).read_text())
    del index["weight_map"]["mtp.norm.weight"]
    index["weight_map"]["mtp.fc.weight"] = "model-00001-of-00002.safetensors"
    (restored / INDEX).write_text(json.dumps(index))
    shutil.copy(restored / MTP_SHARD, restored / "stray.safetensors")
    rep = check_hf(restored)
    problems = {(i.where, i.severity) for i in rep.issues}
    assert ("mtp.norm.weight", "error") in problems  # in a shard, not in the index
    assert ("mtp.fc.weight", "error") in problems  # the index points at the wrong shard
    assert ("stray.safetensors", "warning") in problems
    # a config of another size: every mismatching shape is named
    config = json.loads((restored / "config.json").read_text())
    config["text_config"]["intermediate_size"] = 1024
    (restored / "config.json").write_text(json.dumps(config))
    rep = check_hf(restored)
    bad = {i.where for i in rep.issues if "config.json implies" in i.problem}
    assert bad == {f"mtp.layers.0.mlp.{p}_proj.weight" for p in ("gate", "up", "down")}
    assert set(expected_head(qwen35.text_config_from(config))) == {h["name"] for h in rep.head}


def test_cli_restore_hf_and_check(tiny_qwythos_dir, tiny_mtp_gguf, tmp_path):
    out = tmp_path / "cli"
    res = CliRunner().invoke(
        app,
        ["mtp", "restore", str(tiny_qwythos_dir), "--from", str(tiny_mtp_gguf), "--hf", str(out), "--json"],
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["shard"] == MTP_SHARD and len(data["head_tensors"]) == 15
    res = CliRunner().invoke(app, ["mtp", "check", str(out), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["ok"] is True
    res = CliRunner().invoke(app, ["mtp", "check", str(tiny_qwythos_dir)])
    assert res.exit_code == 2 and "no mtp.* tensors" in " ".join(res.output.split())
    res = CliRunner().invoke(
        app, ["mtp", "restore", str(tiny_qwythos_dir), "--from", str(tiny_mtp_gguf), "--copy"]
    )
    assert res.exit_code == 1 and "--copy only applies with --hf" in res.output


def test_quantized_gguf_head_is_dequantized_into_the_trunk_dtype(
    tiny_qwythos_dir, tiny_mtp_dir, tiny_mtp_gguf, tiny_trunk_gguf, tmp_path
):
    q8 = restore(tiny_trunk_gguf, tiny_mtp_gguf, tmp_path / "q8.gguf", head_type="q8_0").output
    r = restore_hf(tiny_qwythos_dir, q8, tmp_path / "out")
    how = {row["name"]: row["how"] for row in r.head_tensors}
    assert how["mtp.fc.weight"] == "Q8_0->BF16" and how["mtp.norm.weight"] == "F32->BF16, undo plus1"
    base, out = open_checkpoint(tiny_mtp_dir), open_checkpoint(r.output)
    for n in (h["name"] for h in r.head_tensors):
        assert out.tensors[n].dtype == "BF16"
        want, got = base.read_f32(n), out.read_f32(n)
        if want.ndim == 1:  # norms travel as F32: exact
            assert np.array_equal(got, want), n
        else:  # q8_0: within half a quantization step of each 32-block
            step = np.abs(want.reshape(-1, 32)).max(axis=1, keepdims=True) / 127
            assert np.all(
                np.abs(got - want).reshape(-1, 32) <= step * 0.5 + np.abs(want).reshape(-1, 32) / 128
            ), n
    assert check_hf(r.output).ok
