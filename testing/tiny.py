"""Tiny Qwen3.5 checkpoints in the real Hugging Face layout (numpy + tokenizers, no torch).

`build_tiny_checkpoint` writes a folder that transformers' `Qwen3_5ForConditionalGeneration` and
llama.cpp's converter read like the real Qwen3.5-9B / Qwythos-9B release: nested config.json,
bf16 safetensors shards + index, tokenizer files, generation_config.json. Every byte is a pure
function of (variant, seed), so reruns are byte-identical.

`build_checkpoint_from_config` streams random weights of any config (the exact 9B shapes
included) shard by shard, chunk by chunk, so memory stays small.
"""

from __future__ import annotations

import copy
import json
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qwythos.core.model.safetensors_writer import SafetensorsEntry, write_pieces, write_safetensors
from qwythos.testing.tokenizer_build import N_REGULAR, SPECIAL_TOKENS, build_tokenizer, special_token_ids

VARIANTS = ("mtp", "no-mtp", "qwythos")
# Qwythos-release layout (no mtp.* tensors) with a vision tower other than the default one-block
# tower: "vision-deep" has three blocks; "vision-wide" has a wider tower whose FFN width is not a
# multiple of 32 (like the 9B tower's 4304, so q8_0 falls back to f16 for ffn_down) and a
# position-embedding grid of 6x6 (image_size 96) that non-square images interpolate.
VISION_VARIANTS = ("vision-deep", "vision-wide")
_SPECIAL = special_token_ids(N_REGULAR)
TINY_VOCAB = 1152  # padded above the tokenizer's 1026 tokens, as the real 248320 > 248077
TINY_SHARD_BYTES = 4 * 2**20
DEFAULT_SHARD_BYTES = 5 * 2**30
LM_HEAD_GAIN = 2.0

TINY_TEXT_CONFIG: dict = {
    "model_type": "qwen3_5_text",
    "attention_bias": False,
    "attention_dropout": 0.0,
    "attn_output_gate": True,
    "dtype": "bfloat16",
    "eos_token_id": _SPECIAL["<|endoftext|>"],
    "full_attention_interval": 4,
    "head_dim": 64,
    "hidden_act": "silu",
    "hidden_size": 256,
    "initializer_range": 0.02,
    "intermediate_size": 512,
    "layer_types": ["linear_attention", "linear_attention", "linear_attention", "full_attention"],
    "linear_conv_kernel_dim": 4,
    "linear_key_head_dim": 32,
    "linear_num_key_heads": 2,
    "linear_num_value_heads": 4,
    "linear_value_head_dim": 32,
    "mamba_ssm_dtype": "float32",
    "max_position_embeddings": 16384,
    "mtp_num_hidden_layers": 1,
    "mtp_use_dedicated_embeddings": False,
    "num_attention_heads": 4,
    "num_hidden_layers": 4,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06,
    "rope_parameters": {
        "factor": 4.0,
        "mrope_interleaved": True,
        "mrope_section": [3, 3, 2],
        "original_max_position_embeddings": 4096,
        "partial_rotary_factor": 0.25,
        "rope_theta": 10000000,
        "rope_type": "yarn",
    },
    "tie_word_embeddings": False,
    "use_cache": True,
    "vocab_size": TINY_VOCAB,
}

TINY_VISION_CONFIG: dict = {
    "model_type": "qwen3_5",
    "deepstack_visual_indexes": [],
    "depth": 1,
    "hidden_act": "gelu_pytorch_tanh",
    "hidden_size": 64,
    "in_channels": 3,
    "initializer_range": 0.02,
    "intermediate_size": 128,
    "num_heads": 2,
    "num_position_embeddings": 64,
    "out_hidden_size": 256,
    "patch_size": 16,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
}


# vision_config overrides of the vision variants (keys as in Qwen3.5's vision_config)
VISION_TOWERS: dict[str, dict] = {
    "vision-deep": {"depth": 3},
    "vision-wide": {
        "depth": 2,
        "hidden_size": 96,
        "intermediate_size": 144,
        "num_heads": 3,
        "num_position_embeddings": 36,
    },
}


# preprocessor_config.json overrides: vision-wide uses the CLIP mean/std of Qwen2-VL's processor, so
# a converter that ignores the file (and writes Qwen3.5's 0.5s) is caught
PREPROCESSOR_OVERRIDES: dict[str, dict] = {
    "vision-wide": {
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
    },
}


def tiny_config(variant: str = "mtp") -> dict:
    """The full config.json of a tiny fixture (no-mtp: the config has no MTP layer either)."""
    if variant not in VARIANTS + VISION_VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS + VISION_VARIANTS}, got {variant!r}")
    text = copy.deepcopy(TINY_TEXT_CONFIG)
    if variant == "no-mtp":
        text.pop("mtp_num_hidden_layers")
        text.pop("mtp_use_dedicated_embeddings")
    return {
        "architectures": ["Qwen3_5ForConditionalGeneration"],
        "image_token_id": _SPECIAL["<|image_pad|>"],
        "model_type": "qwen3_5",
        "text_config": text,
        "tie_word_embeddings": False,
        "transformers_version": "5.23.0",
        "video_token_id": _SPECIAL["<|video_pad|>"],
        "vision_config": {**copy.deepcopy(TINY_VISION_CONFIG), **VISION_TOWERS.get(variant, {})},
        "vision_end_token_id": _SPECIAL["<|vision_end|>"],
        "vision_start_token_id": _SPECIAL["<|vision_start|>"],
    }


def generation_config(special_ids: dict[str, int] | None = None) -> dict:
    ids = special_ids or _SPECIAL
    return {
        "bos_token_id": ids["<|endoftext|>"],
        "do_sample": True,
        "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]],
        "pad_token_id": ids["<|endoftext|>"],
        "temperature": 0.6,
        "top_k": 20,
        "top_p": 0.95,
        "transformers_version": "5.23.0",
    }


# ---------------------------------------------------------------------------------------------
# Tensor table: name -> shape + how to initialise it (pure function of the config).

# init kinds: ("normal", std) | ("offset", std) -> N(0,std) | ("one", std) -> 1 + N(0,std)
#             ("a_log",) -> log U(1, 8) | ("zero",)
Init = tuple


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    init: Init


def _text_cfg(config: dict) -> dict:
    return config.get("text_config", config)


def _decoder_block(prefix: str, t: dict, layer_type: str) -> list[TensorSpec]:
    h, std = t["hidden_size"], t.get("initializer_range", 0.02)
    ffn = t["intermediate_size"]
    out = [
        TensorSpec(f"{prefix}.input_layernorm.weight", (h,), ("offset", std)),
        TensorSpec(f"{prefix}.post_attention_layernorm.weight", (h,), ("offset", std)),
        TensorSpec(f"{prefix}.mlp.gate_proj.weight", (ffn, h), ("normal", std)),
        TensorSpec(f"{prefix}.mlp.up_proj.weight", (ffn, h), ("normal", std)),
        TensorSpec(f"{prefix}.mlp.down_proj.weight", (h, ffn), ("normal", std)),
    ]
    if layer_type == "full_attention":
        hd, nq, nkv = t["head_dim"], t["num_attention_heads"], t["num_key_value_heads"]
        gate = 2 if t.get("attn_output_gate", True) else 1
        a = f"{prefix}.self_attn"
        out += [
            TensorSpec(f"{a}.q_proj.weight", (nq * hd * gate, h), ("normal", std)),
            TensorSpec(f"{a}.k_proj.weight", (nkv * hd, h), ("normal", std)),
            TensorSpec(f"{a}.v_proj.weight", (nkv * hd, h), ("normal", std)),
            TensorSpec(f"{a}.o_proj.weight", (h, nq * hd), ("normal", std)),
            TensorSpec(f"{a}.q_norm.weight", (hd,), ("offset", std)),
            TensorSpec(f"{a}.k_norm.weight", (hd,), ("offset", std)),
        ]
    elif layer_type == "linear_attention":
        nk, nv = t["linear_num_key_heads"], t["linear_num_value_heads"]
        dk, dv = t["linear_key_head_dim"], t["linear_value_head_dim"]
        conv_dim = 2 * nk * dk + nv * dv
        a = f"{prefix}.linear_attn"
        out += [
            TensorSpec(f"{a}.in_proj_qkv.weight", (conv_dim, h), ("normal", std)),
            TensorSpec(f"{a}.in_proj_z.weight", (nv * dv, h), ("normal", std)),
            TensorSpec(f"{a}.in_proj_b.weight", (nv, h), ("normal", std)),
            TensorSpec(f"{a}.in_proj_a.weight", (nv, h), ("normal", std)),
            TensorSpec(f"{a}.conv1d.weight", (conv_dim, 1, t["linear_conv_kernel_dim"]), ("normal", 0.2)),
            TensorSpec(f"{a}.dt_bias", (nv,), ("one", 0.1)),
            TensorSpec(f"{a}.A_log", (nv,), ("a_log",)),
            TensorSpec(f"{a}.norm.weight", (dv,), ("one", std)),
            TensorSpec(f"{a}.out_proj.weight", (h, nv * dv), ("normal", std)),
        ]
    else:
        raise ValueError(f"unknown layer type {layer_type!r}")
    return out


def _vision_tensors(v: dict) -> list[TensorSpec]:
    d, ffn, std = v["hidden_size"], v["intermediate_size"], v.get("initializer_range", 0.02)
    merged = d * v["spatial_merge_size"] ** 2
    p, tp = v["patch_size"], v["temporal_patch_size"]
    out = [
        TensorSpec("model.visual.patch_embed.proj.weight", (d, v["in_channels"], tp, p, p), ("normal", std)),
        TensorSpec("model.visual.patch_embed.proj.bias", (d,), ("normal", std)),
        TensorSpec("model.visual.pos_embed.weight", (v["num_position_embeddings"], d), ("normal", std)),
        TensorSpec("model.visual.merger.norm.weight", (d,), ("one", std)),
        TensorSpec("model.visual.merger.norm.bias", (d,), ("normal", std)),
        TensorSpec("model.visual.merger.linear_fc1.weight", (merged, merged), ("normal", std)),
        TensorSpec("model.visual.merger.linear_fc1.bias", (merged,), ("normal", std)),
        TensorSpec("model.visual.merger.linear_fc2.weight", (v["out_hidden_size"], merged), ("normal", std)),
        TensorSpec("model.visual.merger.linear_fc2.bias", (v["out_hidden_size"],), ("normal", std)),
    ]
    for i in range(v["depth"]):
        b = f"model.visual.blocks.{i}"
        out += [
            TensorSpec(f"{b}.norm1.weight", (d,), ("one", std)),
            TensorSpec(f"{b}.norm1.bias", (d,), ("normal", std)),
            TensorSpec(f"{b}.norm2.weight", (d,), ("one", std)),
            TensorSpec(f"{b}.norm2.bias", (d,), ("normal", std)),
            TensorSpec(f"{b}.attn.qkv.weight", (3 * d, d), ("normal", std)),
            TensorSpec(f"{b}.attn.qkv.bias", (3 * d,), ("normal", std)),
            TensorSpec(f"{b}.attn.proj.weight", (d, d), ("normal", std)),
            TensorSpec(f"{b}.attn.proj.bias", (d,), ("normal", std)),
            TensorSpec(f"{b}.mlp.linear_fc1.weight", (ffn, d), ("normal", std)),
            TensorSpec(f"{b}.mlp.linear_fc1.bias", (ffn,), ("normal", std)),
            TensorSpec(f"{b}.mlp.linear_fc2.weight", (d, ffn), ("normal", std)),
            TensorSpec(f"{b}.mlp.linear_fc2.bias", (d,), ("normal", std)),
        ]
    return out


def mtp_tensor_specs(config: dict) -> list[TensorSpec]:
    """The `mtp.*` tensors of a config with mtp_num_hidden_layers > 0 (empty otherwise)."""
    t = _text_cfg(config)
    h, std = t["hidden_size"], t.get("initializer_range", 0.02)
    n = int(t.get("mtp_num_hidden_layers", 0) or 0)
    if n == 0:
        return []
    out = [
        TensorSpec("mtp.fc.weight", (h, 2 * h), ("normal", std)),
        TensorSpec("mtp.pre_fc_norm_embedding.weight", (h,), ("offset", std)),
        TensorSpec("mtp.pre_fc_norm_hidden.weight", (h,), ("offset", std)),
        TensorSpec("mtp.norm.weight", (h,), ("offset", std)),
    ]
    for i in range(n):
        out += _decoder_block(f"mtp.layers.{i}", t, "full_attention")
    return out


def tensor_specs(config: dict, *, include_mtp: bool = True) -> list[TensorSpec]:
    """Every tensor a checkpoint of `config` holds, HF names, sorted by name."""
    t = _text_cfg(config)
    h, std, vocab = t["hidden_size"], t.get("initializer_range", 0.02), t["vocab_size"]
    layer_types = t.get("layer_types") or [
        "full_attention" if (i + 1) % t.get("full_attention_interval", 4) == 0 else "linear_attention"
        for i in range(t["num_hidden_layers"])
    ]
    nested = "text_config" in config
    lm = "model.language_model" if nested else "model"
    specs = [
        TensorSpec(f"{lm}.embed_tokens.weight", (vocab, h), ("normal", std)),
        TensorSpec(f"{lm}.norm.weight", (h,), ("offset", std)),
    ]
    tied = config.get("tie_word_embeddings", t.get("tie_word_embeddings", False))
    if not tied:
        # logits std ~2 (as in trained models) rather than ~0.3: next-token choices are decisive
        specs.append(TensorSpec("lm_head.weight", (vocab, h), ("normal", LM_HEAD_GAIN / h**0.5)))
    for i, lt in enumerate(layer_types):
        specs += _decoder_block(f"{lm}.layers.{i}", t, lt)
    if nested and config.get("vision_config"):
        specs += _vision_tensors(config["vision_config"])
    if include_mtp:
        specs += mtp_tensor_specs(config)
    return sorted(specs, key=lambda s: s.name)


# ---------------------------------------------------------------------------------------------
# Deterministic random data, generated in row chunks.

CHUNK_ELEMS = 1 << 22


def _rng(seed: int, name: str, chunk: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode()), chunk])


def _init_chunk(spec: TensorSpec, seed: int, chunk: int, n: int) -> np.ndarray:
    kind = spec.init[0]
    rng = _rng(seed, spec.name, chunk)
    if kind == "zero":
        return np.zeros(n, np.float32)
    if kind == "a_log":
        return np.log(rng.uniform(1.0, 8.0, n)).astype(np.float32)
    x = rng.standard_normal(n, dtype=np.float32) * np.float32(spec.init[1])
    return x + np.float32(1.0) if kind == "one" else x


def random_chunks(spec: TensorSpec, seed: int) -> Iterator[np.ndarray]:
    """float32 data of `spec`, flat, in chunks of about CHUNK_ELEMS elements."""
    total = int(np.prod(spec.shape, dtype=np.int64))
    for chunk, start in enumerate(range(0, total, CHUNK_ELEMS)):
        yield _init_chunk(spec, seed, chunk, min(CHUNK_ELEMS, total - start))


def random_tensor(spec: TensorSpec, seed: int) -> np.ndarray:
    return np.concatenate(list(random_chunks(spec, seed))).reshape(spec.shape)


# ---------------------------------------------------------------------------------------------
# safetensors writing (core/model/safetensors_writer.py; numpy has no bf16: our own encoder).

_DTYPES = {"bf16": ("BF16", 2), "f16": ("F16", 2), "f32": ("F32", 4)}


def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float -> bfloat16 bit patterns (uint16), round to nearest even (NaN kept NaN)."""
    f = np.ascontiguousarray(x, dtype=np.float32)
    u = f.view(np.uint32)
    rounded = ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype(
        np.uint16
    )
    nan = np.isnan(f)
    if nan.any():
        rounded[nan] = 0x7FC0
    return rounded


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)


def _encode(x: np.ndarray, dtype: str) -> bytes:
    if dtype == "bf16":
        if x.dtype == np.uint16:  # already bf16 bit patterns
            return np.ascontiguousarray(x).tobytes()
        return to_bf16_bits(x).tobytes()
    return np.ascontiguousarray(x, dtype=np.float16 if dtype == "f16" else np.float32).tobytes()


@dataclass(frozen=True)
class _Entry:
    name: str
    shape: tuple[int, ...]
    chunks: Callable[[], Iterable[np.ndarray]]  # float data (or uint16 bf16 bits), flat or shaped


def _nbytes(shape: tuple[int, ...], dtype: str) -> int:
    return int(np.prod(shape, dtype=np.int64)) * _DTYPES[dtype][1]


def _write_safetensors(path: Path, entries: list[_Entry], dtype: str) -> int:
    """One shard through the package's own writer, each tensor encoded a chunk at a time."""
    return write_safetensors(
        path,
        [
            SafetensorsEntry(
                e.name,
                _DTYPES[dtype][0],
                e.shape,
                write_pieces(lambda e=e: (_encode(np.asarray(c), dtype) for c in e.chunks())),
            )
            for e in entries
        ],
    )


def _write_sharded(out: Path, entries: list[_Entry], dtype: str, max_shard_bytes: int) -> list[Path]:
    shards: list[list[_Entry]] = [[]]
    size = 0
    for e in entries:
        n = _nbytes(e.shape, dtype)
        if shards[-1] and size + n > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(e)
        size += n
    total = len(shards)
    names = (
        ["model.safetensors"]
        if total == 1
        else [f"model-{i + 1:05d}-of-{total:05d}.safetensors" for i in range(total)]
    )
    weight_map: dict[str, str] = {}
    total_size = 0
    for fname, shard in zip(names, shards, strict=True):
        total_size += _write_safetensors(out / fname, shard, dtype)
        weight_map.update({e.name: fname for e in shard})
    if total > 1:
        index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return [out / n for n in names]


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def preprocessor_config(vision: dict) -> dict:
    """Image processor settings shipped beside a Qwen3.5 checkpoint (llama.cpp's --mmproj reads them)."""
    return {
        "image_mean": [0.5, 0.5, 0.5],
        "image_processor_type": "Qwen2VLImageProcessorFast",
        "image_std": [0.5, 0.5, 0.5],
        "merge_size": vision.get("spatial_merge_size", 2),
        "patch_size": vision.get("patch_size", 16),
        "processor_class": "Qwen3VLProcessor",
        "size": {"longest_edge": 16777216, "shortest_edge": 65536},
        "temporal_patch_size": vision.get("temporal_patch_size", 2),
    }


def _write_side_files(out: Path, config: dict) -> None:
    _write_json(out / "config.json", config)
    _write_json(out / "generation_config.json", generation_config())
    if config.get("vision_config"):
        _write_json(out / "preprocessor_config.json", preprocessor_config(config["vision_config"]))


def _as_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, without importing torch
        value = value.detach().float().cpu().numpy()
    return np.asarray(value)


TensorSource = np.ndarray | Callable[[], np.ndarray] | tuple[tuple[int, ...], Callable[[], np.ndarray]]


def write_checkpoint(
    out_dir: str | Path,
    config: dict,
    tensors: dict[str, TensorSource],
    *,
    dtype: str = "bf16",
    max_shard_bytes: int = TINY_SHARD_BYTES,
    tokenizer_from: str | Path | None = None,
    with_tokenizer: bool = True,
) -> Path:
    """Save `tensors` with `config` in the HF layout (sorted names, shards + index when over
    max_shard_bytes). A value is a float array (or torch tensor), uint16 bf16 bit patterns, a
    callable returning one (called twice: shape, then data), or `(shape, callable)` (called once,
    at write time). Tokenizer files are copied from `tokenizer_from`, or rebuilt."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for name in sorted(tensors):
        value = tensors[name]
        if isinstance(value, tuple):
            shape, value = tuple(value[0]), value[1]
        else:
            shape = tuple(_as_numpy(value() if callable(value) else value).shape)

        def chunks(value=value) -> Iterable[np.ndarray]:
            return [_as_numpy(value() if callable(value) else value).reshape(-1)]

        entries.append(_Entry(name, shape, chunks))
    _write_sharded(out, entries, dtype, max_shard_bytes)
    _write_side_files(out, config)
    if tokenizer_from is not None:
        for fname in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            src = Path(tokenizer_from) / fname
            if src.is_file():
                (out / fname).write_bytes(src.read_bytes())
    elif with_tokenizer:
        build_tokenizer(out)
    return out


def build_checkpoint_from_config(
    out_dir: str | Path,
    config: dict,
    seed: int = 0,
    dtype: str = "bf16",
    *,
    include_mtp: bool = True,
    max_shard_bytes: int | None = None,
    with_tokenizer: bool = True,
) -> Path:
    """Random weights for ANY Qwen3.5 config, streamed: one shard open at a time, each tensor
    generated in chunks of CHUNK_ELEMS elements, so memory stays around 50 MB even for 9B."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    specs = tensor_specs(config, include_mtp=include_mtp)
    if max_shard_bytes is None:
        total = sum(_nbytes(s.shape, dtype) for s in specs)
        max_shard_bytes = DEFAULT_SHARD_BYTES if total > 4 * DEFAULT_SHARD_BYTES else max(total // 2, 1)
    entries = [_Entry(s.name, s.shape, lambda s=s: random_chunks(s, seed)) for s in specs]
    _write_sharded(out, entries, dtype, max_shard_bytes)
    _write_side_files(out, config)
    if with_tokenizer:
        build_tokenizer(out)
    return out


def read_tensor(model_dir: str | Path, name: str) -> np.ndarray:
    """Read one tensor of an HF folder as float32 (bf16/f16/f32), without torch."""
    folder = Path(model_dir)
    index = folder / "model.safetensors.index.json"
    fname = json.loads(index.read_text())["weight_map"][name] if index.is_file() else "model.safetensors"
    path = folder / fname
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        info = json.loads(f.read(n))[name]
    start, end = info["data_offsets"]
    raw = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n + start, shape=(end - start,))
    kinds = {"BF16": np.uint16, "F16": np.float16, "F32": np.float32}
    data = raw.view(kinds[info["dtype"]])
    out = bf16_bits_to_f32(data) if info["dtype"] == "BF16" else data.astype(np.float32)
    return out.reshape(info["shape"])


def build_tiny_checkpoint(out_dir: str | Path, *, variant: str = "mtp", seed: int = 0) -> Path:
    """A tiny Qwen3.5 checkpoint: "mtp" (base-model layout, mtp.* tensors), "no-mtp" (config and
    files without an MTP layer), "qwythos" (config promises mtp_num_hidden_layers 1, files have no
    mtp.* tensors - exactly the Qwythos-9B release); the VISION_VARIANTS are "qwythos" with
    another vision tower. Every variant carries preprocessor_config.json."""
    config = tiny_config(variant)
    out = build_checkpoint_from_config(
        out_dir, config, seed=seed, include_mtp=(variant == "mtp"), max_shard_bytes=TINY_SHARD_BYTES
    )
    if variant in PREPROCESSOR_OVERRIDES:
        pre = {**preprocessor_config(config["vision_config"]), **PREPROCESSOR_OVERRIDES[variant]}
        _write_json(out / "preprocessor_config.json", pre)
    return out


__all__ = [
    "SPECIAL_TOKENS",
    "TINY_TEXT_CONFIG",
    "TINY_VISION_CONFIG",
    "VISION_TOWERS",
    "VISION_VARIANTS",
    "TensorSpec",
    "bf16_bits_to_f32",
    "build_checkpoint_from_config",
    "build_tiny_checkpoint",
    "build_tokenizer",
    "mtp_tensor_specs",
    "random_tensor",
    "read_tensor",
    "tensor_specs",
    "tiny_config",
    "to_bf16_bits",
    "write_checkpoint",
]
