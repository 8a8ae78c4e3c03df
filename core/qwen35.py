"""The qwen35 table: HF tensor name -> GGUF name, per-tensor transform, expected shape, and the
GGUF metadata derived from config.json. Everything llama.cpp's converter does for
`Qwen3_5ForConditionalGeneration` lives here as constants; a second arch is a second table.

Transforms (as llama.cpp's converter applies them):
- `plus1`: Qwen3.5 RMSNorm weights are stored as w-1; GGUF holds 1+w (all norms except the gated
  linear-attention norm).
- `neg_exp`: A_log -> A = -exp(A_log).
- `squeeze`: conv1d weight [C, 1, K] -> [C, K].
- `v_rows`/`v_rows1`/`v_qkv`/`v_conv`/`v_cols`: linear attention has fewer key heads than value heads;
  HF groups V heads by K head, ggml broadcasts tiled, so V heads are reordered from
  [k0: v0..v(r-1), k1: ...] to [v0: k0..k(n-1), v1: ...] along rows / columns.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType

from qwythos.core.checkpoint import ST_DTYPES, Checkpoint, TensorInfo, to_f32
from qwythos.core.errors import QwythosError
from qwythos.core.gguf_file import KV, RawSource, TensorPlan, type_nbytes
from qwythos.core.vocab import PRE_TOKENIZER, load_vocab

ARCH = "qwen35"
HF_ARCHITECTURES = ("Qwen3_5ForConditionalGeneration", "Qwen3_5ForCausalLM")

# outtype -> (GGML type of the big matrices, general.file_type)
OUTTYPES: dict[str, tuple[GGMLQuantizationType, int]] = {
    "bf16": (GGMLQuantizationType.BF16, 32),
    "f16": (GGMLQuantizationType.F16, 1),
    "f32": (GGMLQuantizationType.F32, 0),
}
# source dtype that is byte-identical to a GGML type (the raw-copy fast path)
SAME_BYTES = {
    ("BF16", GGMLQuantizationType.BF16),
    ("F16", GGMLQuantizationType.F16),
    ("F32", GGMLQuantizationType.F32),
}
QWEN35_DEFAULT_MROPE = [11, 11, 10, 0]
CHUNK_ELEMS = 16 * 2**20  # rows per chunk when a big tensor changes type

# tensors of the HF checkpoint that are not part of the text model
SKIP_SUBSTRINGS = ("visual.", "vision.", "vision_", "merger.", "patch_embed", "rotary_emb.inv_freq")


@dataclass(frozen=True)
class Rule:
    """One HF tensor kind: its GGUF name (without `blk.N.`), transforms, and expected HF shape."""

    gguf: str
    transforms: tuple[str, ...]
    shape: Callable[[TextConfig], tuple[int, ...]]
    force_f32: bool = False


GLOBAL_RULES: dict[str, Rule] = {
    "model.embed_tokens.weight": Rule("token_embd.weight", (), lambda c: (c.n_vocab, c.n_embd)),
    "model.norm.weight": Rule("output_norm.weight", ("plus1",), lambda c: (c.n_embd,)),
    "lm_head.weight": Rule("output.weight", (), lambda c: (c.n_vocab, c.n_embd)),
}
LAYER_RULES: dict[str, Rule] = {
    "input_layernorm.weight": Rule("attn_norm.weight", ("plus1",), lambda c: (c.n_embd,)),
    "post_attention_layernorm.weight": Rule("post_attention_norm.weight", ("plus1",), lambda c: (c.n_embd,)),
    "mlp.gate_proj.weight": Rule("ffn_gate.weight", (), lambda c: (c.n_ff, c.n_embd)),
    "mlp.up_proj.weight": Rule("ffn_up.weight", (), lambda c: (c.n_ff, c.n_embd)),
    "mlp.down_proj.weight": Rule("ffn_down.weight", (), lambda c: (c.n_embd, c.n_ff)),
    "self_attn.q_proj.weight": Rule("attn_q.weight", (), lambda c: (2 * c.n_head * c.head_dim, c.n_embd)),
    "self_attn.k_proj.weight": Rule("attn_k.weight", (), lambda c: (c.n_head_kv * c.head_dim, c.n_embd)),
    "self_attn.v_proj.weight": Rule("attn_v.weight", (), lambda c: (c.n_head_kv * c.head_dim, c.n_embd)),
    "self_attn.o_proj.weight": Rule("attn_output.weight", (), lambda c: (c.n_embd, c.n_head * c.head_dim)),
    "self_attn.q_norm.weight": Rule("attn_q_norm.weight", ("plus1",), lambda c: (c.head_dim,)),
    "self_attn.k_norm.weight": Rule("attn_k_norm.weight", ("plus1",), lambda c: (c.head_dim,)),
    "linear_attn.in_proj_qkv.weight": Rule("attn_qkv.weight", ("v_qkv",), lambda c: (c.conv_dim, c.n_embd)),
    "linear_attn.in_proj_z.weight": Rule("attn_gate.weight", ("v_rows",), lambda c: (c.ssm_inner, c.n_embd)),
    "linear_attn.in_proj_b.weight": Rule(
        "ssm_beta.weight", ("v_rows1",), lambda c: (c.lin_v_heads, c.n_embd)
    ),
    "linear_attn.in_proj_a.weight": Rule(
        "ssm_alpha.weight", ("v_rows1",), lambda c: (c.lin_v_heads, c.n_embd)
    ),
    "linear_attn.A_log": Rule("ssm_a", ("v_rows1", "neg_exp"), lambda c: (c.lin_v_heads,)),
    "linear_attn.dt_bias": Rule("ssm_dt.bias", ("v_rows1",), lambda c: (c.lin_v_heads,)),
    "linear_attn.conv1d.weight": Rule(
        "ssm_conv1d.weight", ("squeeze", "v_conv"), lambda c: (c.conv_dim, 1, c.conv_kernel), force_f32=True
    ),
    "linear_attn.norm.weight": Rule("ssm_norm.weight", (), lambda c: (c.lin_v_dim,)),
    "linear_attn.out_proj.weight": Rule("ssm_out.weight", ("v_cols",), lambda c: (c.n_embd, c.ssm_inner)),
}
# mtp.<x> -> blk.{n_layer}.<gguf>; mtp.layers.K.<layer rule> -> blk.{n_layer + K}.<...>
MTP_RULES: dict[str, Rule] = {
    "mtp.fc.weight": Rule("nextn.eh_proj.weight", (), lambda c: (c.n_embd, 2 * c.n_embd)),
    "mtp.pre_fc_norm_embedding.weight": Rule("nextn.enorm.weight", ("plus1",), lambda c: (c.n_embd,)),
    "mtp.pre_fc_norm_hidden.weight": Rule("nextn.hnorm.weight", ("plus1",), lambda c: (c.n_embd,)),
    "mtp.norm.weight": Rule("nextn.shared_head_norm.weight", ("plus1",), lambda c: (c.n_embd,)),
}
LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
MTP_LAYER_RE = re.compile(r"^mtp\.layers\.(\d+)\.(.+)$")
PERMUTATIONS = ("v_qkv", "v_rows", "v_rows1", "v_conv", "v_cols", "squeeze")
ARITHMETIC = ("plus1", "neg_exp")


@dataclass
class TextConfig:
    """The text model's hyper-parameters, as llama.cpp reads them (text_config merged over root)."""

    hf_arch: str
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ctx: int
    n_vocab: int
    rms_eps: float
    lin_k_heads: int
    lin_v_heads: int
    lin_k_dim: int
    lin_v_dim: int
    conv_kernel: int
    layer_types: list[str]
    full_attention_interval: int
    mtp_layers: int  # promised by config (mtp_num_hidden_layers)
    tie_embeddings: bool
    rope: dict[str, Any] = field(default_factory=dict)

    @property
    def conv_dim(self) -> int:
        return 2 * self.lin_k_heads * self.lin_k_dim + self.lin_v_heads * self.lin_v_dim

    @property
    def ssm_inner(self) -> int:
        return self.lin_v_heads * self.lin_v_dim


def text_config_from(config: dict[str, Any], *, where: str = "config.json") -> TextConfig:
    """Validate a qwen35 config (nested text_config or flat) and read its hyper-parameters."""
    archs = config.get("architectures") or []
    if not any(a in HF_ARCHITECTURES for a in archs):
        raise QwythosError(
            f"{where} describes {', '.join(archs) or 'an unknown architecture'}, not Qwen3.5 "
            f"({' / '.join(HF_ARCHITECTURES)})",
            "qwythos converts Qwen3.5 (arch qwen35) checkpoints such as Qwythos-9B; use llama.cpp's "
            "convert_hf_to_gguf.py for other models",
        )
    hp = {**config, **(config.get("text_config") or {})}
    try:
        n_layer = int(hp["num_hidden_layers"])
        head_dim = int(hp.get("head_dim") or hp["hidden_size"] // hp["num_attention_heads"])
        layer_types = list(hp.get("layer_types") or [])
        interval = int(hp.get("full_attention_interval", 4))
        if not layer_types:
            layer_types = [
                "linear_attention" if (i + 1) % interval else "full_attention" for i in range(n_layer)
            ]
        cfg = TextConfig(
            hf_arch=next(a for a in archs if a in HF_ARCHITECTURES),
            n_layer=n_layer,
            n_embd=int(hp["hidden_size"]),
            n_ff=int(hp["intermediate_size"]),
            n_head=int(hp["num_attention_heads"]),
            n_head_kv=int(hp["num_key_value_heads"]),
            head_dim=head_dim,
            n_ctx=int(hp["max_position_embeddings"]),
            n_vocab=int(hp["vocab_size"]),
            rms_eps=float(hp["rms_norm_eps"]),
            lin_k_heads=int(hp["linear_num_key_heads"]),
            lin_v_heads=int(hp["linear_num_value_heads"]),
            lin_k_dim=int(hp["linear_key_head_dim"]),
            lin_v_dim=int(hp["linear_value_head_dim"]),
            conv_kernel=int(hp["linear_conv_kernel_dim"]),
            layer_types=layer_types,
            full_attention_interval=interval,
            mtp_layers=int(hp.get("mtp_num_hidden_layers", 0) or 0),
            tie_embeddings=bool(config.get("tie_word_embeddings", hp.get("tie_word_embeddings", False))),
            rope=_rope_params(hp),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise QwythosError(
            f"{where} lacks or has a bad text_config field: {e}", "use the checkpoint's original config.json"
        ) from e
    if len(cfg.layer_types) != n_layer:
        raise QwythosError(
            f"{where}: layer_types has {len(cfg.layer_types)} entries for {n_layer} layers",
            "repair config.json",
        )
    if cfg.lin_v_heads % cfg.lin_k_heads:
        raise QwythosError(
            f"{where}: linear_num_value_heads is not a multiple of linear_num_key_heads", "repair config.json"
        )
    return cfg


def _rope_params(hp: dict[str, Any]) -> dict[str, Any]:
    rope = dict(hp.get("rope_parameters") or hp.get("rope_scaling") or {})
    if "full_attention" not in rope and "sliding_attention" not in rope:
        mirrors = {
            "rope_theta": hp.get("rope_theta"),
            "rope_type": rope.get("type"),
            "partial_rotary_factor": hp.get("partial_rotary_factor"),
            "original_max_position_embeddings": hp.get("original_max_position_embeddings"),
        }
        for k, v in mirrors.items():
            if k not in rope and v is not None:
                rope[k] = v
    return rope


# ---------------------------------------------------------------- metadata


def _u32(key: str, v: int) -> KV:
    return KV(key, GGUFValueType.UINT32, int(v))


def _f32(key: str, v: float) -> KV:
    return KV(key, GGUFValueType.FLOAT32, float(v))


def hparams_kv(cfg: TextConfig, *, n_nextn: int, outtype: str = "bf16") -> list[KV]:
    """The arch keys, in llama.cpp's converter order."""
    a = ARCH
    out = [
        _u32(f"{a}.block_count", cfg.n_layer + n_nextn),
        _u32(f"{a}.context_length", cfg.n_ctx),
        _u32(f"{a}.embedding_length", cfg.n_embd),
        _u32(f"{a}.feed_forward_length", cfg.n_ff),
        _u32(f"{a}.attention.head_count", cfg.n_head),
        _u32(f"{a}.attention.head_count_kv", cfg.n_head_kv),
    ]
    rope = cfg.rope.get("full_attention", cfg.rope)
    rtype, factor = rope.get("rope_type"), rope.get("factor")
    if rtype == "linear" and factor is not None:
        out += [
            KV(f"{a}.rope.scaling.type", GGUFValueType.STRING, "linear"),
            _f32(f"{a}.rope.scaling.factor", factor),
        ]
    elif rtype == "yarn" and factor is not None:
        out += [
            KV(f"{a}.rope.scaling.type", GGUFValueType.STRING, "yarn"),
            _f32(f"{a}.rope.scaling.factor", factor),
            _u32(f"{a}.rope.scaling.original_context_length", rope["original_max_position_embeddings"]),
        ]
        yarn = (
            ("extrapolation_factor", "yarn_ext_factor"),
            ("attention_factor", "yarn_attn_factor"),
            ("beta_fast", "yarn_beta_fast"),
            ("beta_slow", "yarn_beta_slow"),
        )
        for src, dst in yarn:
            v = rope.get(src, rope.get("attn_factor") if src == "attention_factor" else None)
            if v is not None:
                out.append(_f32(f"{a}.rope.scaling.{dst}", v))
    elif rtype in ("su", "longrope"):
        out.append(KV(f"{a}.rope.scaling.type", GGUFValueType.STRING, "longrope"))
    if "mrope_section" in cfg.rope:
        sections = (list(cfg.rope["mrope_section"]) + [0, 0, 0, 0])[:4]
        out.append(KV(f"{a}.rope.dimension_sections", GGUFValueType.ARRAY, sections, GGUFValueType.INT32))
    if rope.get("rope_theta") is not None:
        out.append(_f32(f"{a}.rope.freq_base", rope["rope_theta"]))
    out += [
        _f32(f"{a}.attention.layer_norm_rms_epsilon", cfg.rms_eps),
        _u32(f"{a}.attention.key_length", cfg.head_dim),
        _u32(f"{a}.attention.value_length", cfg.head_dim),
        _u32("general.file_type", OUTTYPES[outtype][1]),
    ]
    if n_nextn > 0:
        out.append(_u32(f"{a}.nextn_predict_layers", n_nextn))
    recurrent = [t == "linear_attention" for t in cfg.layer_types] + [False] * n_nextn
    out += [
        _u32(f"{a}.ssm.conv_kernel", cfg.conv_kernel),
        _u32(f"{a}.ssm.state_size", cfg.lin_k_dim),
        _u32(f"{a}.ssm.group_count", cfg.lin_k_heads),
        _u32(f"{a}.ssm.time_step_rank", cfg.lin_v_heads),
        _u32(f"{a}.ssm.inner_size", cfg.ssm_inner),
        KV(f"{a}.attention.recurrent_layers", GGUFValueType.ARRAY, recurrent, GGUFValueType.BOOL),
        _u32(f"{a}.full_attention_interval", cfg.full_attention_interval),
        _u32(f"{a}.rope.dimension_count", int(cfg.head_dim * cfg.rope.get("partial_rotary_factor", 0.25))),
    ]
    if "mrope_section" not in cfg.rope:
        out.append(
            KV(f"{a}.rope.dimension_sections", GGUFValueType.ARRAY, QWEN35_DEFAULT_MROPE, GGUFValueType.INT32)
        )
    return out


def metadata(
    cfg: TextConfig, ckpt: Checkpoint, *, n_nextn: int, outtype: str = "bf16", name: str | None = None
) -> list[KV]:
    """All GGUF metadata: general.*, hyper-parameters, tokenizer."""
    general = [
        KV("general.architecture", GGUFValueType.STRING, ARCH),
        KV("general.type", GGUFValueType.STRING, "model"),
        KV("general.name", GGUFValueType.STRING, name or ckpt.hub_id or ckpt.path.name),
    ]
    tail = [_u32("general.quantization_version", 2)]
    vocab = load_vocab(ckpt.path, ckpt.config)
    return general + hparams_kv(cfg, n_nextn=n_nextn, outtype=outtype) + tail + vocab.kv(PRE_TOKENIZER[ARCH])


# ---------------------------------------------------------------- tensors


def _reorder_v(arr: np.ndarray, axis: int, n_k: int, n_vpk: int, hd: int) -> np.ndarray:
    """V heads grouped by K head -> tiled order, along `axis`."""
    shape = arr.shape
    grouped = arr.reshape(shape[:axis] + (n_k, n_vpk, hd) + shape[axis + 1 :])
    return np.ascontiguousarray(np.swapaxes(grouped, axis, axis + 1)).reshape(shape)


def _apply_permutation(kind: str, a: np.ndarray, cfg: TextConfig) -> np.ndarray:
    if kind == "squeeze":
        return a.reshape(tuple(d for d in a.shape if d != 1))
    n_k, n_v = cfg.lin_k_heads, cfg.lin_v_heads
    if n_k == n_v:
        return a
    r = partial(_reorder_v, n_k=n_k, n_vpk=n_v // n_k)
    if kind == "v_rows":
        return r(a, 0, hd=cfg.lin_v_dim)
    if kind == "v_rows1":
        return r(a, 0, hd=1)
    if kind == "v_cols":
        return r(a, 1, hd=cfg.lin_v_dim)
    if kind in ("v_qkv", "v_conv"):
        qk = 2 * n_k * cfg.lin_k_dim
        return np.concatenate([a[:qk], r(a[qk:], 0, hd=cfg.lin_v_dim)], axis=0)
    raise ValueError(kind)


def _apply_arithmetic(kind: str, x: np.ndarray) -> np.ndarray:
    if kind == "plus1":
        return x + np.float32(1)
    if kind == "neg_exp":  # correctly rounded (torch's float32 exp, used by llama.cpp, can be 1 ulp off)
        return (-np.exp(x.astype(np.float64))).astype(np.float32)
    raise ValueError(kind)


def f32_to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bits (uint16) exactly as ggml/gguf-py: NaN forced quiet, round to nearest even."""
    n = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    n = np.where((n & 0x7FFFFFFF) > 0x7F800000, (n & np.uint32(0xFFFF0000)) | np.uint32(64 << 16), n)
    n = (n.astype(np.uint64) + (0x7FFF + ((n >> 16) & 1))) >> 16
    return n.astype(np.uint16)


def cast(raw: np.ndarray, st_dtype: str, out: GGMLQuantizationType) -> np.ndarray:
    """A raw safetensors array (BF16 as uint16) in the output type's on-disk form."""
    if (st_dtype, out) in SAME_BYTES:
        return raw
    x = to_f32(raw, st_dtype)
    if out == GGMLQuantizationType.F32:
        return x
    if out == GGMLQuantizationType.F16:
        return x.astype(np.float16)
    if out == GGMLQuantizationType.BF16:
        return f32_to_bf16(x)
    raise ValueError(out)


def _load(
    info: TensorInfo, rule: Rule, cfg: TextConfig, out: GGMLQuantizationType, ckpt: Checkpoint
) -> np.ndarray:
    a = ckpt.read_copy(info.name)
    for t in rule.transforms:
        if t in PERMUTATIONS:
            a = _apply_permutation(t, a, cfg)
    arith = [t for t in rule.transforms if t in ARITHMETIC]
    if not arith:
        return cast(a, info.dtype, out)
    x = to_f32(a, info.dtype)
    for t in arith:
        x = _apply_arithmetic(t, x)
    return cast(x, "F32", out)


def _chunks(info: TensorInfo, out: GGMLQuantizationType) -> Iterator[np.ndarray]:
    """A big cast-only tensor, a block of rows at a time (bounded memory)."""
    np_dtype = np.dtype(ST_DTYPES[info.dtype][0])
    row = info.numel // info.shape[0] if info.shape else 1
    rows = max(1, CHUNK_ELEMS // max(row, 1))
    with open(info.file, "rb") as f:
        for r0 in range(0, info.shape[0], rows):
            n = min(rows, info.shape[0] - r0) * row
            f.seek(info.offset + r0 * row * np_dtype.itemsize)
            raw = np.frombuffer(f.read(n * np_dtype.itemsize), dtype=np_dtype)
            yield cast(raw, info.dtype, out)


def hf_text_name(name: str) -> str | None:
    """HF name -> the language-model name the table knows (None: not a text tensor)."""
    if any(s in name for s in SKIP_SUBSTRINGS):
        return None
    name = name.replace("language_model.", "")
    if name.startswith("model.mtp."):
        name = name[len("model.") :]
    return name


def lookup(name: str, cfg: TextConfig) -> tuple[str, Rule] | None:
    """(GGUF name, rule) for a language-model tensor name, or None if unknown."""
    if name in GLOBAL_RULES:
        rule = GLOBAL_RULES[name]
        return rule.gguf, rule
    if name in MTP_RULES:
        rule = MTP_RULES[name]
        return f"blk.{cfg.n_layer}.{rule.gguf}", rule
    for regex, base in ((LAYER_RE, 0), (MTP_LAYER_RE, cfg.n_layer)):
        m = regex.match(name)
        if m and m.group(2) in LAYER_RULES:
            rule = LAYER_RULES[m.group(2)]
            return f"blk.{base + int(m.group(1))}.{rule.gguf}", rule
    return None


def mtp_layer_count(ckpt: Checkpoint) -> int:
    """How many MTP blocks the checkpoint's files carry (0: none)."""
    idx = {
        int(m.group(1))
        for n in ckpt.tensor_names()
        if (t := hf_text_name(n)) and (m := MTP_LAYER_RE.match(t))
    }
    return max(idx) + 1 if idx else 0


def plan_tensors(
    ckpt: Checkpoint,
    cfg: TextConfig,
    *,
    outtype: str = "bf16",
    include_mtp: bool = True,
    mtp_only: bool = False,
) -> list[TensorPlan]:
    """The GGUF tensors of `ckpt`, in llama.cpp's order, each with its transform and byte size.

    `include_mtp=False` leaves the `mtp.*` head out; `mtp_only=True` gives just the nextn block
    (`blk.{n_layer}.*`), for grafting a head onto an existing GGUF.
    """
    if outtype not in OUTTYPES:
        raise QwythosError(f"unknown outtype {outtype}", "use bf16, f16 or f32")
    big_type = OUTTYPES[outtype][0]
    plans: list[TensorPlan] = []
    for hf_name in ckpt.tensor_names():
        name = hf_text_name(hf_name)
        if name is None:
            continue
        is_mtp = name.startswith("mtp.")
        if (is_mtp and not include_mtp) or (mtp_only and not is_mtp):
            continue
        found = lookup(name, cfg)
        info = ckpt.tensor_info(hf_name)
        if found is None:
            raise QwythosError(
                f"{info.file}: tensor {hf_name} is not part of a Qwen3.5 text model",
                "check that this is an unmodified Qwen3.5 checkpoint",
            )
        gname, rule = found
        expected = tuple(int(d) for d in rule.shape(cfg))
        if info.shape != expected:
            raise QwythosError(
                f"{info.file}: tensor {hf_name} has shape {list(info.shape)}, config.json implies {list(expected)}",
                "the weights do not match config.json; use the config that came with them",
            )
        if info.dtype not in ("BF16", "F16", "F32"):
            raise QwythosError(
                f"{info.file}: tensor {hf_name} is {info.dtype}", "use a BF16, F16 or F32 checkpoint"
            )
        out_shape = tuple(d for d in info.shape if d != 1) if "squeeze" in rule.transforms else info.shape
        f32 = (
            rule.force_f32
            or len(out_shape) <= 1
            or gname.endswith("_norm.weight")
            or not gname.endswith(".weight")
        )
        gtype = GGMLQuantizationType.F32 if f32 else big_type
        nbytes = type_nbytes(gtype, out_shape)
        plan = TensorPlan(
            name=gname,
            shape=out_shape,
            ggml_type=gtype,
            nbytes=nbytes,
            load=partial(_load, info, rule, cfg, gtype, ckpt),
            source=hf_name,
            transform="+".join(rule.transforms) or ("copy" if (info.dtype, gtype) in SAME_BYTES else "cast"),
        )
        if not rule.transforms:
            if (info.dtype, gtype) in SAME_BYTES:
                plan.raw = RawSource(info.file, info.offset, info.nbytes)
            elif info.numel > CHUNK_ELEMS:
                plan.chunks = partial(_chunks, info, gtype)
        plans.append(plan)
    return plans
