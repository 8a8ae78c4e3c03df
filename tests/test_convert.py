"""qwythos convert on the tiny fixtures: structure, streaming fast path, bf16 rounding, every error."""

from __future__ import annotations

import errno
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader

from qwythos.convert.text import RESTORE_HINT, convert
from qwythos.core.errors import QwythosError
from qwythos.core.model import qwen35
from qwythos.core.model.checkpoint import open_checkpoint


def kv(reader: GGUFReader, key: str):
    return reader.fields[key].contents()


def names(reader: GGUFReader) -> list[str]:
    return [t.name for t in reader.tensors]


def text_cfg(folder: Path) -> dict:
    c = json.loads((folder / "config.json").read_text())
    return c.get("text_config", c)


def copy_dir(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ---------------------------------------------------------------- structure


def test_mtp_gguf_has_nextn_block(tiny_mtp_dir: Path, tiny_mtp_gguf: Path) -> None:
    r = GGUFReader(tiny_mtp_gguf)
    n = text_cfg(tiny_mtp_dir)["num_hidden_layers"]
    assert kv(r, "general.architecture") == "qwen35"
    assert kv(r, "qwen35.block_count") == n + 1
    assert kv(r, "qwen35.nextn_predict_layers") == 1
    nextn = {x for x in names(r) if x.startswith(f"blk.{n}.nextn.")}
    assert nextn == {f"blk.{n}.nextn.{t}.weight" for t in ("eh_proj", "enorm", "hnorm", "shared_head_norm")}
    assert f"blk.{n}.attn_q.weight" in names(r)
    rec = kv(r, "qwen35.attention.recurrent_layers")
    assert len(rec) == n + 1 and rec[-1] is False
    assert rec[:n] == [t == "linear_attention" for t in text_cfg(tiny_mtp_dir)["layer_types"]]
    assert not any("visual" in x or x.startswith("v.") for x in names(r))
    assert kv(r, "general.file_type") == 32


def test_trunk_gguf_has_no_head(tiny_mtp_dir: Path, tiny_trunk_gguf: Path) -> None:
    r = GGUFReader(tiny_trunk_gguf)
    n = text_cfg(tiny_mtp_dir)["num_hidden_layers"]
    assert kv(r, "qwen35.block_count") == n
    assert "qwen35.nextn_predict_layers" not in r.fields
    assert not any(".nextn." in x or x.startswith(f"blk.{n}.") for x in names(r))


def test_tokenizer_metadata(tiny_mtp_dir: Path, tiny_mtp_gguf: Path) -> None:
    r = GGUFReader(tiny_mtp_gguf)
    tj = json.loads((tiny_mtp_dir / "tokenizer.json").read_text())
    tc = json.loads((tiny_mtp_dir / "tokenizer_config.json").read_text())
    assert kv(r, "tokenizer.ggml.model") == "gpt2"
    assert kv(r, "tokenizer.ggml.pre") == "qwen35"
    tokens = kv(r, "tokenizer.ggml.tokens")
    types = kv(r, "tokenizer.ggml.token_type")
    assert len(tokens) == text_cfg(tiny_mtp_dir)["vocab_size"] == len(types)
    # as in transformers (and so llama.cpp's converter), tokenizer_config.json decides what is special:
    # Qwen's <think>, <tool_call> ... are added but not special there -> USER_DEFINED (4), not CONTROL (3)
    special = {int(i): d["special"] for i, d in tc["added_tokens_decoder"].items()}
    assert not special[tokens.index("<think>")] and not special[tokens.index("<tool_call>")]
    for a in tj["added_tokens"]:
        assert tokens[a["id"]] == a["content"]
        assert types[a["id"]] == (3 if special[a["id"]] or a["content"].startswith("<|") else 4)
    assert types[tokens.index("<think>")] == 4 and types[tokens.index("<|im_end|>")] == 3
    im_end = next(a["id"] for a in tj["added_tokens"] if a["content"] == "<|im_end|>")
    assert kv(r, "tokenizer.ggml.eos_token_id") == im_end
    assert kv(r, "tokenizer.ggml.add_bos_token") is False
    tpl = tc.get("chat_template") or (tiny_mtp_dir / "chat_template.jinja").read_text()
    assert kv(r, "tokenizer.chat_template") == tpl
    assert len(kv(r, "tokenizer.ggml.merges")) == len(tj["model"]["merges"])


def test_untransformed_tensors_are_byte_copies(tiny_mtp_dir: Path, tiny_mtp_gguf: Path) -> None:
    ckpt = open_checkpoint(tiny_mtp_dir)
    r = GGUFReader(tiny_mtp_gguf)
    by_name = {t.name: t for t in r.tensors}
    src = next(n for n in ckpt.tensor_names() if n.endswith("embed_tokens.weight"))
    assert by_name["token_embd.weight"].data.tobytes() == ckpt.read(src).tobytes()
    # a norm: stored as 1 + w in f32
    norm = next(n for n in ckpt.tensor_names() if n.endswith("layers.0.input_layernorm.weight"))
    got = np.asarray(by_name["blk.0.attn_norm.weight"].data)
    np.testing.assert_array_equal(got, ckpt.read_f32(norm) + np.float32(1))


def test_plan_mtp_only(tiny_mtp_dir: Path) -> None:
    ckpt = open_checkpoint(tiny_mtp_dir)
    cfg = qwen35.text_config_from(ckpt.config)
    plans = qwen35.plan_tensors(ckpt, cfg, mtp_only=True)
    assert plans and all(p.name.startswith(f"blk.{cfg.n_layer}.") for p in plans)
    assert {p.name for p in plans} >= {
        f"blk.{cfg.n_layer}.nextn.eh_proj.weight",
        f"blk.{cfg.n_layer}.attn_q.weight",
    }
    trunk = qwen35.plan_tensors(ckpt, cfg, include_mtp=False)
    assert not any(p.name.startswith(f"blk.{cfg.n_layer}.") for p in trunk)


def test_qwythos_variant_is_trunk_only_with_note(tiny_qwythos_dir: Path, tmp_path: Path) -> None:
    res = convert(tiny_qwythos_dir, tmp_path / "q.gguf")
    assert res.nextn_layers == 0 and "promised" in res.mtp
    assert any(RESTORE_HINT in n for n in res.notes)
    assert any("vision tower left out" in n for n in res.notes)
    r = GGUFReader(res.output)
    assert kv(r, "qwen35.block_count") == text_cfg(tiny_qwythos_dir)["num_hidden_layers"]
    assert "qwen35.nextn_predict_layers" not in r.fields
    # llama.cpp accepts it (its own converter's file for this case is refused)
    code = (
        "import llama_cpp, sys; from qwythos.core.llamacpp.probe import safe_model_kwargs;"
        "m = llama_cpp.Llama(sys.argv[1], n_ctx=64, verbose=False, **safe_model_kwargs());"
        "m.eval([1, 2, 3]); print('ok', m.n_vocab())"
    )
    p = subprocess.run(
        [sys.executable, "-c", code, str(res.output)], capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 0 and "ok" in p.stdout, p.stderr[-2000:]


@pytest.mark.parametrize(
    "outtype,gtype", [("f16", GGMLQuantizationType.F16), ("f32", GGMLQuantizationType.F32)]
)
def test_outtypes(tiny_nomtp_dir: Path, tmp_path: Path, outtype: str, gtype: GGMLQuantizationType) -> None:
    res = convert(tiny_nomtp_dir, tmp_path / "o.gguf", outtype=outtype)
    r = GGUFReader(res.output)
    assert {t.tensor_type for t in r.tensors if t.name.endswith("ffn_up.weight")} == {gtype}
    assert {t.tensor_type for t in r.tensors if t.name.endswith("_norm.weight")} == {GGMLQuantizationType.F32}


def test_bf16_cast_rounds_like_ggml() -> None:
    """f32 -> bf16 through gguf-py's quantizer: round to nearest even, NaN made quiet, Inf kept."""
    bits = {
        0x3F800000: 0x3F80,  # 1.0
        0x3F808000: 0x3F80,  # halfway, even below: stays
        0x3F818000: 0x3F82,  # halfway, odd below: up to even
        0x3F80FFFF: 0x3F81,  # above halfway
        0x7F800000: 0x7F80,  # +Inf
        0xFF800000: 0xFF80,  # -Inf
        0x7F800001: 0x7FC0,  # signalling NaN -> quiet
        0xFF812345: 0xFFC1,
        0x7F7FFFFF: 0x7F80,  # FLT_MAX rounds to Inf, as in ggml
    }
    x = np.array(list(bits), dtype=np.uint32).view(np.float32)
    got = qwen35.cast(x, "F32", GGMLQuantizationType.BF16)
    assert got.nbytes == 2 * len(bits)
    assert [int(b) for b in got.view("<u2")] == list(bits.values())


# ---------------------------------------------------------------- errors


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(QwythosError, match="does not exist"):
        convert(tmp_path / "nope", tmp_path / "o.gguf")


def test_folder_without_config_or_weights(tiny_nomtp_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(QwythosError, match="no config.json"):
        convert(tmp_path / "empty", tmp_path / "o.gguf")
    d = tmp_path / "noweights"
    d.mkdir()
    shutil.copy(tiny_nomtp_dir / "config.json", d)
    with pytest.raises(QwythosError, match="safetensors"):
        convert(d, tmp_path / "o.gguf")


def test_wrong_architecture(tiny_nomtp_dir: Path, tmp_path: Path) -> None:
    d = copy_dir(tiny_nomtp_dir, tmp_path / "m")
    c = json.loads((d / "config.json").read_text())
    c["architectures"] = ["LlamaForCausalLM"]
    (d / "config.json").write_text(json.dumps(c))
    with pytest.raises(QwythosError, match="LlamaForCausalLM.*not Qwen3.5") as e:
        convert(d, tmp_path / "o.gguf")
    assert "config.json" in str(e.value)


def _a_shard(d: Path) -> Path:
    return sorted(d.glob("*.safetensors"))[0]


def _claim_a_longer_header(shard: Path) -> None:
    data = bytearray(shard.read_bytes())
    data[:8] = struct.pack("<Q", len(data) * 4)
    shard.write_bytes(bytes(data))


def _cut_the_data(shard: Path) -> None:
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size - 64)


def _garble_the_header_json(shard: Path) -> None:
    data = bytearray(shard.read_bytes())
    data[8:12] = b"!!!!"
    shard.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_claim_a_longer_header, "truncated or corrupt"),  # header length beyond the file
        (_cut_the_data, "truncated: tensor"),  # data offsets beyond the file
        (_garble_the_header_json, "not valid JSON"),
    ],
)
def test_damaged_shard_is_named(damage, message: str, tiny_nomtp_dir: Path, tmp_path: Path) -> None:
    d = copy_dir(tiny_nomtp_dir, tmp_path / "m")
    shard = _a_shard(d)
    damage(shard)
    with pytest.raises(QwythosError, match=message) as e:
        convert(d, tmp_path / "o.gguf")
    assert shard.name in str(e.value)


def test_missing_shard(tiny_nomtp_dir: Path, tmp_path: Path) -> None:
    d = copy_dir(tiny_nomtp_dir, tmp_path / "m")
    if not (d / "model.safetensors.index.json").exists():
        pytest.skip("fixture is not sharded")
    shard = _a_shard(d)
    shard.unlink()
    with pytest.raises(QwythosError, match="missing") as e:
        convert(d, tmp_path / "o.gguf")
    assert shard.name in str(e.value)


def test_shape_mismatch(tiny_nomtp_dir: Path, tmp_path: Path) -> None:
    d = copy_dir(tiny_nomtp_dir, tmp_path / "m")
    c = json.loads((d / "config.json").read_text())
    c.setdefault("text_config", c)["intermediate_size"] += 8
    (d / "config.json").write_text(json.dumps(c))
    with pytest.raises(QwythosError, match="has shape .* config.json implies"):
        convert(d, tmp_path / "o.gguf")


def test_output_exists_needs_force(tiny_nomtp_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.gguf"
    out.write_bytes(b"old")
    with pytest.raises(QwythosError, match="already exists"):
        convert(tiny_nomtp_dir, out)
    assert out.read_bytes() == b"old"
    convert(tiny_nomtp_dir, out, force=True)
    assert out.read_bytes()[:4] == b"GGUF"


def test_not_enough_space_is_checked_first(tiny_nomtp_dir: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(QwythosError, match="not enough disk space"):
        convert(tiny_nomtp_dir, tmp_path / "o.gguf")
    assert list(tmp_path.iterdir()) == []


def test_disk_full_while_writing_leaves_nothing(tiny_nomtp_dir: Path, tmp_path: Path, monkeypatch) -> None:
    real_write = os.write
    calls = {"n": 0}

    def flaky_write(fd: int, data) -> int:
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", flaky_write)
    monkeypatch.setattr(
        os, "copy_file_range", lambda *a: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full"))
    )
    with pytest.raises(QwythosError, match="disk full"):
        convert(tiny_nomtp_dir, tmp_path / "o.gguf")
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_leaves_no_partial_file(tiny_nomtp_dir: Path, tmp_path: Path) -> None:
    def interrupt(name: str, done: int, total: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convert(tiny_nomtp_dir, tmp_path / "o.gguf", progress=interrupt)
    assert list(tmp_path.iterdir()) == []


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "qwythos.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "400", **(env or {})},
    )


def test_hub_id_offline_is_a_clear_message(tmp_path: Path) -> None:
    p = _cli(
        "convert",
        "qwythos-test-nobody/no-such-model",
        "-o",
        str(tmp_path / "o.gguf"),
        env={"HF_HUB_OFFLINE": "1"},
    )
    assert p.returncode == 1
    assert "Traceback" not in p.stderr
    assert "qwythos-test-nobody/no-such-model" in p.stderr and "offline" in p.stderr


def test_cli_convert_json_and_errors(tiny_nomtp_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "c.gguf"
    p = _cli("convert", str(tiny_nomtp_dir), "-o", str(out), "--json")
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    assert res["output"] == str(out) and res["arch"] == "qwen35" and out.is_file()
    p = _cli("convert", str(tiny_nomtp_dir), "-o", str(out))
    assert (
        p.returncode == 1
        and "already exists" in p.stderr
        and "--force" in p.stderr
        and "Traceback" not in p.stderr
    )
    p = _cli("convert", str(tmp_path / "missing"), "-o", str(tmp_path / "x.gguf"))
    assert p.returncode == 1 and "does not exist" in p.stderr and "Traceback" not in p.stderr


# ---------------------------------------------------------------- coverage and content checks


def _edit_config(d: Path, edit) -> None:
    c = json.loads((d / "config.json").read_text())
    edit(c.setdefault("text_config", c))
    (d / "config.json").write_text(json.dumps(c))


def _add_tensor(d: Path, name: str, shape: tuple[int, ...]) -> None:
    """A BF16 tensor in a shard of its own, listed in the index (as a stray extra weight would be)."""
    data = np.full(shape, 0x3F80, dtype="<u2").tobytes()  # 1.0
    header = json.dumps({name: {"dtype": "BF16", "shape": list(shape), "data_offsets": [0, len(data)]}})
    header += " " * (-len(header) % 8)
    shard = d / "model-extra.safetensors"
    shard.write_bytes(struct.pack("<Q", len(header)) + header.encode() + data)
    index = json.loads((d / "model.safetensors.index.json").read_text())
    index["weight_map"][name] = shard.name
    (d / "model.safetensors.index.json").write_text(json.dumps(index))


def test_config_with_fewer_layers_than_the_weights(tiny_mtp_dir: Path, tmp_path: Path) -> None:
    """Issue 15: trunk block N and the MTP block would share names; refused, naming the layer."""
    d = copy_dir(tiny_mtp_dir, tmp_path / "m")

    def drop_last(t: dict) -> None:
        t["num_hidden_layers"] -= 1
        t["layer_types"] = t["layer_types"][:-1]

    _edit_config(d, drop_last)
    with pytest.raises(QwythosError, match=r"declares 3 layers .* hold 1 more: layer\(s\) 3") as e:
        convert(d, tmp_path / "o.gguf")
    assert "config.json" in str(e.value) and "num_hidden_layers 4" in e.value.hint
    assert not (tmp_path / "o.gguf").exists()


def test_config_with_more_layers_than_the_weights(tiny_nomtp_dir: Path, tmp_path: Path) -> None:
    d = copy_dir(tiny_nomtp_dir, tmp_path / "m")

    def add_two(t: dict) -> None:
        t["num_hidden_layers"] += 2
        t["layer_types"] = t["layer_types"] + ["linear_attention", "linear_attention"]

    _edit_config(d, add_two)
    with pytest.raises(QwythosError, match=r"declares 6 layers .* lack layer\(s\) 4, 5 \(no model.layers.4"):
        convert(d, tmp_path / "o.gguf")


def test_two_tensors_with_one_gguf_name(tiny_nomtp_dir: Path, tmp_path: Path) -> None:
    """The same weight under the VL name and the plain name would be written twice."""
    d = copy_dir(tiny_nomtp_dir, tmp_path / "m")
    _add_tensor(d, "model.layers.1.post_attention_layernorm.weight", (text_cfg(d)["hidden_size"],))
    with pytest.raises(QwythosError, match="would both be blk.1.post_attention_norm.weight") as e:
        convert(d, tmp_path / "o.gguf")
    assert "model.language_model.layers.1.post_attention_layernorm.weight" in str(e.value)
    assert not (tmp_path / "o.gguf").exists()


def test_tensor_of_the_other_layer_kind(tiny_nomtp_dir: Path, tmp_path: Path) -> None:
    """A full-attention tensor in a linear-attention layer is not part of the model."""
    d = copy_dir(tiny_nomtp_dir, tmp_path / "m")
    assert text_cfg(d)["layer_types"][0] == "linear_attention"
    _add_tensor(d, "model.language_model.layers.0.self_attn.q_norm.weight", (text_cfg(d)["head_dim"],))
    with pytest.raises(QwythosError, match="self_attn.q_norm.weight does not fit config.json's layer_types"):
        convert(d, tmp_path / "o.gguf")


def _poke_bf16(d: Path, name: str, index: int, bits: int) -> None:
    info = open_checkpoint(d).tensor_info(name)
    with open(info.file, "r+b") as f:
        f.seek(info.offset + 2 * index)
        f.write(struct.pack("<H", bits))


def test_nan_and_inf_weights_convert_with_a_warning(tiny_nomtp_dir: Path, tmp_path: Path) -> None:
    d = copy_dir(tiny_nomtp_dir, tmp_path / "m")
    up = "model.language_model.layers.2.mlp.up_proj.weight"  # copied byte for byte
    norm = "model.language_model.layers.0.input_layernorm.weight"  # transformed (1 + w)
    _poke_bf16(d, up, 5, 0x7FC0)  # NaN
    _poke_bf16(d, up, 9, 0xFF80)  # -Inf
    _poke_bf16(d, norm, 0, 0x7F80)  # +Inf
    res = convert(d, tmp_path / "o.gguf")
    warning = next(n for n in res.notes if "NaN or Inf" in n)
    assert "2 tensor(s)" in warning and "3 in all" in warning
    r = GGUFReader(res.output)
    assert kv(r, "qwythos.convert.warnings") == [warning]
    ref = convert(tiny_nomtp_dir, tmp_path / "clean.gguf")
    assert "qwythos.convert.warnings" not in GGUFReader(ref.output).fields
    # the weights themselves are written as they are
    by_name = {t.name: t for t in r.tensors}
    assert by_name["blk.2.ffn_up.weight"].data.tobytes() == open_checkpoint(d).read(up).tobytes()


def test_checkpoint_without_chat_template_converts_with_a_warning(
    tiny_nomtp_dir: Path, tmp_path: Path
) -> None:
    d = copy_dir(tiny_nomtp_dir, tmp_path / "m")
    tc = json.loads((d / "tokenizer_config.json").read_text())
    tc.pop("chat_template")
    (d / "tokenizer_config.json").write_text(json.dumps(tc))
    (d / "chat_template.jinja").unlink(missing_ok=True)
    res = convert(d, tmp_path / "o.gguf")
    warning = next(n for n in res.notes if "no chat template" in n)
    r = GGUFReader(res.output)
    assert "tokenizer.chat_template" not in r.fields
    assert kv(r, "qwythos.convert.warnings") == [warning]


def test_unequal_linear_head_widths_are_refused_before_writing(tiny_mtp_dir: Path, tmp_path: Path) -> None:
    """llama.cpp's qwen35 loader takes both linear-attention head widths from ssm.state_size: a
    checkpoint with narrower key heads would make a GGUF nothing can load."""
    src = Path(shutil.copytree(tiny_mtp_dir, tmp_path / "src"))
    cfg = json.loads((src / "config.json").read_text())
    text = cfg.get("text_config", cfg)
    text["linear_key_head_dim"] = text["linear_value_head_dim"] // 2
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(QwythosError, match="linear_key_head_dim 16 differs from linear_value_head_dim 32"):
        convert(src, tmp_path / "out.gguf")
    assert not list(tmp_path.glob("out*"))
