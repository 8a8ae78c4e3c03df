"""The tiny Qwen3.5 fixtures: deterministic, in the real HF layout, readable by transformers and
by llama.cpp's reference converter; the 9B config matches transformers' shapes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from qwythos.testing import tiny
from qwythos.testing.tokenizer_build import SPECIAL_TOKENS, special_token_ids

DATA = Path(__file__).resolve().parent.parent / "data"


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _header(path: Path) -> dict:
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return json.loads(f.read(n))


def _all_tensors(folder: Path) -> dict[str, dict]:
    out = {}
    for shard in sorted(folder.glob("*.safetensors")):
        head = _header(shard)
        head.pop("__metadata__", None)
        out.update(head)
    return out


# ---- determinism and layout -------------------------------------------------------------------


def test_rebuild_is_byte_identical(tiny_mtp_dir, tmp_path):
    again = tiny.build_tiny_checkpoint(tmp_path / "again", variant="mtp")
    assert _digest(again) == _digest(tiny_mtp_dir)


def test_seed_changes_weights_not_layout(tiny_mtp_dir, tmp_path):
    other = tiny.build_tiny_checkpoint(tmp_path / "seed1", variant="mtp", seed=1)
    a, b = _digest(tiny_mtp_dir), _digest(other)
    assert a["config.json"] == b["config.json"] and a["tokenizer.json"] == b["tokenizer.json"]
    assert a["model-00001-of-00002.safetensors"] != b["model-00001-of-00002.safetensors"]
    name = "model.language_model.embed_tokens.weight"
    assert not np.array_equal(tiny.read_tensor(tiny_mtp_dir, name), tiny.read_tensor(other, name))


def test_config_layout(tiny_mtp_dir):
    cfg = json.loads((tiny_mtp_dir / "config.json").read_text())
    assert cfg["architectures"] == ["Qwen3_5ForConditionalGeneration"] and cfg["model_type"] == "qwen3_5"
    t = cfg["text_config"]
    assert t["model_type"] == "qwen3_5_text"
    assert t["layer_types"] == ["linear_attention"] * 3 + ["full_attention"]
    assert t["linear_num_key_heads"] < t["linear_num_value_heads"]
    assert t["mtp_num_hidden_layers"] == 1 and t["tie_word_embeddings"] is False
    rope = t["rope_parameters"]
    assert rope["rope_type"] == "yarn" and rope["factor"] == 4.0
    assert t["max_position_embeddings"] == rope["factor"] * rope["original_max_position_embeddings"]
    # mrope sections cover the rotary half-dims: head_dim * partial / 2
    assert sum(rope["mrope_section"]) == t["head_dim"] * rope["partial_rotary_factor"] / 2
    n_tok = len(json.loads((tiny_mtp_dir / "tokenizer.json").read_text())["model"]["vocab"]) + len(
        SPECIAL_TOKENS
    )
    assert t["vocab_size"] > n_tok
    assert cfg["image_token_id"] == special_token_ids()["<|image_pad|>"]
    assert cfg["vision_config"]["out_hidden_size"] == t["hidden_size"]


@pytest.mark.parametrize("variant", tiny.VARIANTS)
def test_shards_and_index(variant, tiny_mtp_dir, tiny_nomtp_dir, tiny_qwythos_dir):
    folder = {"mtp": tiny_mtp_dir, "no-mtp": tiny_nomtp_dir, "qwythos": tiny_qwythos_dir}[variant]
    shards = sorted(folder.glob("*.safetensors"))
    assert len(shards) >= 2
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    tensors = _all_tensors(folder)
    assert set(index["weight_map"]) == set(tensors)
    assert set(index["weight_map"].values()) == {s.name for s in shards}
    sizes = [info["data_offsets"][1] - info["data_offsets"][0] for info in tensors.values()]
    assert index["metadata"]["total_size"] == sum(sizes)
    assert {info["dtype"] for info in tensors.values()} == {"BF16"}
    has_mtp = any(n.startswith("mtp.") for n in tensors)
    assert has_mtp == (variant == "mtp")
    assert any(n.startswith("model.visual.") for n in tensors)
    assert "lm_head.weight" in tensors
    cfg = json.loads((folder / "config.json").read_text())
    assert ("mtp_num_hidden_layers" in cfg["text_config"]) == (variant != "no-mtp")


def test_safetensors_library_reads_our_files(tiny_mtp_dir):
    from safetensors import safe_open

    shard = sorted(tiny_mtp_dir.glob("*.safetensors"))[0]
    with safe_open(shard, framework="numpy") as f:
        names = list(f.keys())
        assert names and f.get_slice(names[0]).get_dtype() == "BF16"


def test_mtp_tensors(tiny_mtp_dir):
    t = _all_tensors(tiny_mtp_dir)
    h = 256
    assert t["mtp.fc.weight"]["shape"] == [h, 2 * h]
    for n in ("pre_fc_norm_embedding", "pre_fc_norm_hidden", "norm"):
        assert t[f"mtp.{n}.weight"]["shape"] == [h]
    assert t["mtp.layers.0.self_attn.q_proj.weight"]["shape"] == [4 * 64 * 2, h]  # gated q
    assert t["mtp.layers.0.mlp.down_proj.weight"]["shape"] == [h, 512]


def test_trunk_weights_identical_across_variants(tiny_mtp_dir, tiny_qwythos_dir):
    for name in ("model.language_model.layers.1.linear_attn.in_proj_qkv.weight", "lm_head.weight"):
        assert np.array_equal(tiny.read_tensor(tiny_mtp_dir, name), tiny.read_tensor(tiny_qwythos_dir, name))


def test_weight_statistics(tiny_mtp_dir):
    r = lambda n: tiny.read_tensor(tiny_mtp_dir, "model.language_model." + n)  # noqa: E731
    assert abs(r("norm.weight").mean()) < 0.01  # stored as offset from 1
    assert abs(r("layers.0.input_layernorm.weight").mean()) < 0.01
    assert abs(r("layers.0.linear_attn.norm.weight").mean() - 1) < 0.02  # gated norm: plain weight
    a_log = r("layers.0.linear_attn.A_log")
    assert a_log.shape == (4,) and np.all((a_log >= 0) & (a_log <= np.log(8) + 0.01))
    assert r("layers.0.linear_attn.dt_bias").shape == (4,)
    assert r("layers.0.linear_attn.conv1d.weight").shape == (2 * 2 * 32 + 4 * 32, 1, 4)
    emb = r("embed_tokens.weight")
    assert np.isfinite(emb).all() and 0.015 < emb.std() < 0.025


def test_bf16_rounding():
    x = np.array([1.0, -2.5, 3.14159, 1e-8, 65504.0, 1.00390625], np.float32)
    back = tiny.bf16_bits_to_f32(tiny.to_bf16_bits(x))
    assert np.allclose(back, x, rtol=2**-8)
    assert tiny.to_bf16_bits(np.array([1.00390625], np.float32))[0] == 0x3F80  # tie -> even


def test_write_checkpoint_roundtrip(tmp_path, tiny_mtp_dir):
    cfg = tiny.tiny_config("mtp")
    rng = np.random.default_rng(0)
    tensors = {
        "mtp.fc.weight": rng.standard_normal((256, 512)).astype(np.float32),
        "lm_head.weight": lambda: np.ones((4, 4)),
        "model.language_model.norm.weight": ((3,), lambda: np.full(3, 0.5)),
    }
    out = tiny.write_checkpoint(tmp_path / "w", cfg, tensors, tokenizer_from=tiny_mtp_dir)
    assert (out / "tokenizer.json").read_bytes() == (tiny_mtp_dir / "tokenizer.json").read_bytes()
    back = tiny.read_tensor(out, "mtp.fc.weight")
    assert np.allclose(back, tensors["mtp.fc.weight"], rtol=2**-8, atol=0)
    assert np.array_equal(tiny.read_tensor(out, "lm_head.weight"), np.ones((4, 4), np.float32))
    norm = tiny.read_tensor(out, "model.language_model.norm.weight")
    assert np.array_equal(norm, np.full(3, 0.5, np.float32))
    assert json.loads((out / "config.json").read_text()) == cfg


def test_streaming_chunks_match_whole(tmp_path, monkeypatch):
    """A tensor written in many chunks is the same tensor random_tensor describes."""
    cfg = tiny.tiny_config("no-mtp")
    monkeypatch.setattr(tiny, "CHUNK_ELEMS", 1000)
    out = tiny.build_checkpoint_from_config(tmp_path / "c", cfg, seed=3, with_tokenizer=False)
    spec = next(s for s in tiny.tensor_specs(cfg) if s.name == "lm_head.weight")
    want = tiny.bf16_bits_to_f32(tiny.to_bf16_bits(tiny.random_tensor(spec, 3)))
    assert np.array_equal(tiny.read_tensor(out, "lm_head.weight"), want.reshape(spec.shape))


# ---- tokenizer --------------------------------------------------------------------------------


def test_tokenizer_roundtrip_and_specials(tiny_mtp_dir):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tiny_mtp_dir / "tokenizer.json"))
    ids = special_token_ids()
    for text, _ in SPECIAL_TOKENS:
        assert tok.encode(text).ids == [ids[text]]
        assert tok.token_to_id(text) == ids[text]
    for text in ("def f(x):\n    return x * 2\n", "Hello, world! Ünïcödé 日本 🚀", "  spaces\t\ttabs\n\n"):
        assert tok.decode(tok.encode(text).ids) == text
    chat = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\nx\n</think>\n\nok<|im_end|>"
    enc = tok.encode(chat)
    assert enc.ids[0] == ids["<|im_start|>"] and ids["</think>"] in enc.ids
    assert tok.decode(enc.ids, skip_special_tokens=False) == chat
    code = "    def __init__(self, name, value=None):\n        self.name = name\n        return self.value\n"
    assert len(tok.encode(code).ids) < len(code) / 2.5  # merges learned
    tcfg = json.loads((tiny_mtp_dir / "tokenizer_config.json").read_text())
    assert tcfg["eos_token"] == "<|im_end|>" and tcfg["pad_token"] == "<|endoftext|>"


def test_chat_template_renders(tiny_mtp_dir):
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    tcfg = json.loads((tiny_mtp_dir / "tokenizer_config.json").read_text())
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    tpl = env.from_string(tcfg["chat_template"])
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    msgs = [
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
        },
        {"role": "tool", "content": "sunny"},
    ]
    text = tpl.render(messages=msgs, tools=tools, add_generation_prompt=True)
    assert "<tools>" in text and '"get_weather"' in text
    assert "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>" in text
    assert "<tool_response>\nsunny\n</tool_response>" in text
    assert text.endswith("<|im_start|>assistant\n<think>\n")
    off = tpl.render(messages=msgs[:1], add_generation_prompt=True, enable_thinking=False)
    assert off == "<|im_start|>user\nWeather?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


# ---- transformers -----------------------------------------------------------------------------


@pytest.mark.reference
@pytest.mark.parametrize("variant", tiny.VARIANTS)
def test_transformers_loads(variant, tiny_mtp_dir, tiny_nomtp_dir, tiny_qwythos_dir):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    folder = {"mtp": tiny_mtp_dir, "no-mtp": tiny_nomtp_dir, "qwythos": tiny_qwythos_dir}[variant]
    transformers.logging.set_verbosity_error()
    model, info = transformers.Qwen3_5ForConditionalGeneration.from_pretrained(
        folder, output_loading_info=True, dtype=torch.bfloat16
    )
    assert not info["missing_keys"] and not info["mismatched_keys"]
    # transformers drops mtp.* on purpose (_keys_to_ignore_on_load_unexpected), so nothing is unexpected
    assert not info["unexpected_keys"]
    assert not any(k.startswith("mtp.") for k in model.state_dict())
    ids = torch.tensor([[1001, 84, 558, 198, 39, 383, 340, 287, 272, 846]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float()
    assert torch.isfinite(logits).all() and 0.05 < logits.std() < 5
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    assert tok.eos_token == "<|im_end|>" and len(tok) == 1000 + len(SPECIAL_TOKENS)


@pytest.mark.reference
def test_9b_config_matches_transformers_shapes():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = json.loads((DATA / "qwythos-9b-config.json").read_text())
    conf = transformers.Qwen3_5Config(**cfg)
    t = conf.text_config
    assert (t.hidden_size, t.intermediate_size, t.num_hidden_layers, t.vocab_size) == (
        4096,
        12288,
        32,
        248320,
    )
    assert t.max_position_embeddings == 1048576 and t.rope_parameters["rope_type"] == "yarn"
    with torch.device("meta"):
        model = transformers.Qwen3_5ForConditionalGeneration(conf)
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    ours = {s.name: s.shape for s in tiny.tensor_specs(cfg, include_mtp=False)}
    assert ours == want


def test_9b_config_sizes():
    cfg = json.loads((DATA / "qwythos-9b-config.json").read_text())
    specs = tiny.tensor_specs(cfg)
    n = {s.name: int(np.prod(s.shape)) for s in specs}
    trunk = sum(v for k, v in n.items() if not k.startswith(("mtp.", "model.visual.")))
    # published BF16 GGUF (text only, no head): 16.69 GiB
    assert abs(trunk * 2 / 2**30 - 16.69) < 0.05
    assert n["mtp.fc.weight"] == 4096 * 8192
    assert len([k for k in n if k.startswith("model.language_model.layers.") and k.endswith("A_log")]) == 24


# ---- llama.cpp's reference converter ----------------------------------------------------------


def _gguf_summary(path: Path) -> tuple[int, int | None, str, set[int]]:
    from gguf import GGUFReader

    r = GGUFReader(path)
    nextn = r.fields.get("qwen35.nextn_predict_layers")
    blocks = {int(t.name.split(".")[1]) for t in r.tensors if t.name.startswith("blk.")}
    return (
        int(r.fields["qwen35.block_count"].contents()),
        None if nextn is None else int(nextn.contents()),
        r.fields["tokenizer.ggml.pre"].contents(),
        blocks,
    )


@pytest.fixture(scope="module")
def reference():
    from qwythos.testing import reference as ref

    if not ref.reference_available():
        pytest.skip("llama.cpp source or torch not available")
    return ref


@pytest.mark.reference
@pytest.mark.slow
def test_reference_converter_mtp(reference, tiny_mtp_dir, tmp_path):
    out = reference.run_reference_converter(tiny_mtp_dir, tmp_path / "mtp.gguf")
    assert _gguf_summary(out) == (5, 1, "qwen35", {0, 1, 2, 3, 4})


@pytest.mark.reference
@pytest.mark.slow
def test_reference_converter_qwythos(reference, tiny_qwythos_dir, tmp_path):
    # llama.cpp trusts the config: it announces block 4 as an MTP layer but writes no tensors for it
    broken = reference.run_reference_converter(tiny_qwythos_dir, tmp_path / "broken.gguf")
    assert _gguf_summary(broken) == (5, 1, "qwen35", {0, 1, 2, 3})
    ok = reference.run_reference_converter(tiny_qwythos_dir, tmp_path / "ok.gguf", extra_args=["--no-mtp"])
    assert _gguf_summary(ok) == (4, None, "qwen35", {0, 1, 2, 3})


@pytest.mark.reference
@pytest.mark.slow
def test_reference_converter_nomtp_needs_flag(reference, tiny_nomtp_dir, tmp_path):
    from qwythos.core.errors import QwythosError

    # without mtp_num_hidden_layers and mtp.* tensors llama.cpp asserts (it assumes Qwen3-Next)
    with pytest.raises(QwythosError, match="AssertionError"):
        reference.run_reference_converter(tiny_nomtp_dir, tmp_path / "fail.gguf")
    out = reference.run_reference_converter(tiny_nomtp_dir, tmp_path / "ok.gguf", extra_args=["--no-mtp"])
    assert _gguf_summary(out) == (4, None, "qwen35", {0, 1, 2, 3})


def test_reference_source_error(monkeypatch, tmp_path):
    from qwythos.core.errors import QwythosError
    from qwythos.testing import reference as ref

    monkeypatch.setenv(ref.ENV_VAR, str(tmp_path / "nowhere"))
    with pytest.raises(QwythosError, match="llama.cpp source not found"):
        ref.llama_cpp_source()


@pytest.mark.reference
@pytest.mark.slow
def test_reference_converter_mmproj(reference, tiny_qwythos_dir, tmp_path):
    """The vision tower is real enough for llama.cpp's --mmproj (needs preprocessor_config.json)."""
    from gguf import GGUFReader

    out = reference.run_reference_converter(tiny_qwythos_dir, tmp_path / "mmproj.gguf", "f16", ["--mmproj"])
    r = GGUFReader(out)
    assert r.fields["general.architecture"].contents() == "clip"
    assert int(r.fields["clip.vision.block_count"].contents()) == 1
    assert any(t.name.startswith("v.blk.0.") for t in r.tensors)


# ---- vision towers ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vision_variant_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vision-variants")
    return {v: tiny.build_tiny_checkpoint(root / v, variant=v) for v in tiny.VISION_VARIANTS}


@pytest.mark.parametrize("variant", tiny.VISION_VARIANTS)
def test_vision_variant_layout(variant, vision_variant_dirs, tiny_qwythos_dir):
    folder = vision_variant_dirs[variant]
    cfg = json.loads((folder / "config.json").read_text())
    real = json.loads((DATA / "qwythos-9b-config.json").read_text())["vision_config"]
    v = cfg["vision_config"]
    assert set(v) == set(real)  # the real Qwen3.5 vision_config keys, nothing else
    assert v["depth"] > 1 and v["hidden_size"] % v["num_heads"] == 0
    assert v["out_hidden_size"] == cfg["text_config"]["hidden_size"]
    tensors = _all_tensors(folder)
    blocks = {int(n.split(".")[3]) for n in tensors if n.startswith("model.visual.blocks.")}
    assert blocks == set(range(v["depth"]))
    assert tensors["model.visual.pos_embed.weight"]["shape"] == [
        v["num_position_embeddings"],
        v["hidden_size"],
    ]
    p = v["patch_size"]
    assert tensors["model.visual.patch_embed.proj.weight"]["shape"] == [v["hidden_size"], 3, 2, p, p]
    assert not any(n.startswith("mtp.") for n in tensors)  # the Qwythos release layout
    # the text model is the qwythos variant's, byte for byte
    name = "model.language_model.layers.3.self_attn.q_proj.weight"
    assert np.array_equal(tiny.read_tensor(folder, name), tiny.read_tensor(tiny_qwythos_dir, name))
    pre = json.loads((folder / "preprocessor_config.json").read_text())
    assert pre["patch_size"] == p and pre["merge_size"] == v["spatial_merge_size"]
    assert pre["temporal_patch_size"] == v["temporal_patch_size"] and len(pre["image_mean"]) == 3
    assert pre["image_mean"] == tiny.PREPROCESSOR_OVERRIDES.get(variant, {}).get("image_mean", [0.5] * 3)


def test_vision_wide_is_not_q8_friendly_like_9b():
    """The wide tower's FFN width is not a multiple of 32, like the 9B tower's 4304."""
    real = json.loads((DATA / "qwythos-9b-config.json").read_text())["vision_config"]
    wide = tiny.tiny_config("vision-wide")["vision_config"]
    assert real["intermediate_size"] % 32 and wide["intermediate_size"] % 32
    assert int(wide["num_position_embeddings"] ** 0.5) ** 2 == wide["num_position_embeddings"]


@pytest.mark.reference
@pytest.mark.parametrize("variant", tiny.VISION_VARIANTS)
def test_transformers_loads_vision_variants(variant, vision_variant_dirs):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    model, info = transformers.Qwen3_5ForConditionalGeneration.from_pretrained(
        vision_variant_dirs[variant], output_loading_info=True, dtype=torch.float32
    )
    assert not info["missing_keys"] and not info["mismatched_keys"] and not info["unexpected_keys"]
    assert len(model.model.visual.blocks) == tiny.tiny_config(variant)["vision_config"]["depth"]
