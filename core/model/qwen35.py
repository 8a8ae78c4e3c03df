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
from gguf import GGMLQuantizationType, GGUFValueType, Keys
from gguf.quants import quantize as gguf_quantize

from qwythos.core.errors import QwythosError
from qwythos.core.gguf.file import KV, RawSource, TensorPlan, type_nbytes
from qwythos.core.gguf.view import RECURRENT_LAYERS, GGUFView
from qwythos.core.model.arch import ARCH, HF_ARCHITECTURES
from qwythos.core.model.checkpoint import ST_DTYPES, Checkpoint, TensorInfo, check_tensor, to_f32
from qwythos.core.model.hparams import (
    LLAMA_MAX_LAYERS as MAX_LAYERS,  # a config with more: refused before sizing
)
from qwythos.core.model.vocab import PRE_TOKENIZER, load_vocab

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
#: the TextConfig sizes that must be at least 1
POSITIVE_FIELDS = ("n_embd", "n_ff", "n_head", "n_head_kv", "head_dim", "n_ctx", "n_vocab")
POSITIVE_FIELDS += ("lin_k_heads", "lin_v_heads", "lin_k_dim", "lin_v_dim", "conv_kernel")

# tensors of the HF checkpoint that are not part of the text model
SKIP_SUBSTRINGS = ("visual.", "vision.", "vision_", "merger.", "patch_embed", "rotary_emb.inv_freq")


@dataclass(frozen=True)
class Rule:
    """One tensor kind: its GGUF name (without `blk.N.`), transforms, and expected HF shape.

    `shape` reads only size attributes (n_embd, n_vocab, n_head, ...), so it takes a TextConfig or
    any object with those names (core/model/structure.py's HeadDims). `required`: llama.cpp's qwen35
    loader refuses a file without it (TENSOR_NOT_REQUIRED in src/models/qwen35.cpp otherwise).
    """

    gguf: str
    transforms: tuple[str, ...]
    shape: Callable[[Any], tuple[int, ...]]
    force_f32: bool = False
    required: bool = True


GLOBAL_RULES: dict[str, Rule] = {
    "model.embed_tokens.weight": Rule("token_embd.weight", (), lambda c: (c.n_vocab, c.n_embd)),
    "model.norm.weight": Rule("output_norm.weight", ("plus1",), lambda c: (c.n_embd,)),
    "lm_head.weight": Rule("output.weight", (), lambda c: (c.n_vocab, c.n_embd), required=False),
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
    "mtp.norm.weight": Rule(
        "nextn.shared_head_norm.weight", ("plus1",), lambda c: (c.n_embd,), required=False
    ),
}
# nextn tensors llama.cpp's loader accepts that no Qwen3.5 checkpoint carries (a head's own
# embedding and output matrix; without them the trunk's are used)
NEXTN_GGUF_ONLY: dict[str, Rule] = {
    "nextn.embed_tokens.weight": Rule(
        "nextn.embed_tokens.weight", (), lambda c: (c.n_vocab, c.n_embd), required=False
    ),
    "nextn.shared_head_head.weight": Rule(
        "nextn.shared_head_head.weight", (), lambda c: (c.n_vocab, c.n_embd), required=False
    ),
}
LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
MTP_LAYER_RE = re.compile(r"^mtp\.layers\.(\d+)\.(.+)$")
PERMUTATIONS = ("v_qkv", "v_rows", "v_rows1", "v_conv", "v_cols", "squeeze")
ARITHMETIC = ("plus1", "neg_exp")

# ---------------------------------------------------------------- the GGUF side of the table
# Block kinds: the trunk's two (config.json's layer_types) and the MTP block (a full-attention
# block plus the nextn tensors). Every GGUF tensor-name list is derived from the rules above.
BLOCK_KINDS = ("linear_attention", "full_attention", "nextn")
_ATTENTION_PREFIX = {
    "linear_attention": "linear_attn.",
    "full_attention": "self_attn.",
    "nextn": "self_attn.",
}


def hf_layer_keys(kind: str) -> list[str]:
    """Layer-relative HF names (`model.layers.N.<key>`, `mtp.layers.K.<key>`) of one block kind."""
    own = _ATTENTION_PREFIX[kind]
    return [k for k in LAYER_RULES if k.startswith(own) or not k.startswith(("linear_attn.", "self_attn."))]


def block_rules(kind: str) -> dict[str, Rule]:
    """Block-relative GGUF name (`attn_q.weight`, `nextn.eh_proj.weight`) -> rule, for one block kind."""
    rules = {LAYER_RULES[k].gguf: LAYER_RULES[k] for k in hf_layer_keys(kind)}
    if kind == "nextn":
        rules |= {r.gguf: r for r in MTP_RULES.values()} | NEXTN_GGUF_ONLY
    return rules


def gguf_shape(rule: Rule, dims: Any) -> tuple[int, ...]:
    """The tensor's numpy-order shape in the GGUF (the HF shape, squeezed where the rule says)."""
    shape = tuple(int(d) for d in rule.shape(dims))
    return tuple(d for d in shape if d != 1) if "squeeze" in rule.transforms else shape


def stays_f32(gguf_name: str, rule: Rule, shape: tuple[int, ...]) -> bool:
    """The converter writes this tensor as F32 whatever the outtype (norms, biases, 1-D, conv)."""
    return (
        rule.force_f32
        or len(shape) <= 1
        or gguf_name.endswith("_norm.weight")
        or not gguf_name.endswith(".weight")
    )


def gguf_table(cfg: Any, n_nextn: int) -> dict[str, Rule]:
    """Every tensor a qwen35 GGUF of `cfg` with `n_nextn` MTP blocks may hold: full name -> rule.

    `cfg` needs `layer_types`, `n_layer`, `tie_embeddings` and the sizes. The globals come first,
    then each block (the order of the names is not llama.cpp's tensor order).
    """
    table = {r.gguf: r for k, r in GLOBAL_RULES.items() if not (cfg.tie_embeddings and k == "lm_head.weight")}
    for i, kind in enumerate(cfg.layer_types):
        table |= {f"blk.{i}.{n}": r for n, r in block_rules(kind).items()}
    for k in range(n_nextn):
        table |= {f"blk.{cfg.n_layer + k}.{n}": r for n, r in block_rules("nextn").items()}
    return table


def required_tensors(cfg: TextConfig, n_nextn: int) -> set[str]:
    """The GGUF tensors a converted `cfg` must have (an untied checkpoint needs its output.weight)."""
    return {
        n
        for n, r in gguf_table(cfg, n_nextn).items()
        if r.required or (n == "output.weight" and not cfg.tie_embeddings)
    }


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
    """Validate a qwen35 config (nested text_config or flat) and read its hyper-parameters. A field
    of the wrong JSON type, a size that is not positive or a layer count past llama.cpp's limit is
    one QwythosError naming `where` (checked before anything is sized from it)."""
    fix = "use the checkpoint's original config.json"
    if not isinstance(config, dict):
        raise QwythosError(f"{where} is not a JSON object", fix)
    archs = config.get("architectures") or []
    if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
        raise QwythosError(f"{where}: architectures is not a list of names", fix)
    if not isinstance(config.get("text_config") or {}, dict):
        raise QwythosError(
            f"{where}: text_config is {type(config['text_config']).__name__}, not an object", fix
        )
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
        if not 0 < n_layer <= MAX_LAYERS:
            raise ValueError(f"num_hidden_layers {n_layer} is not in 1..{MAX_LAYERS}")
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
    except (KeyError, TypeError, ValueError, ZeroDivisionError, OverflowError) as e:
        raise QwythosError(f"{where} lacks or has a bad text_config field: {e}", fix) from e
    bad = [k for k in POSITIVE_FIELDS if getattr(cfg, k) <= 0]
    if bad:
        raise QwythosError(f"{where}: {', '.join(bad)} must be positive", fix)
    if cfg.mtp_layers < 0:
        raise QwythosError(f"{where}: mtp_num_hidden_layers is {cfg.mtp_layers}", fix)
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


def config_from_gguf(view: GGUFView) -> TextConfig:
    """The hyper-parameters a qwen35 GGUF's metadata records (the inverse of `hparams_kv`), for
    checking its tensors' shapes and estimating memory. QwythosError names a missing key."""

    def need(template: str) -> int:
        v = view.get_int(template)
        if v is None:
            raise QwythosError(
                f"{view.path} lacks {view.key(template)}, which every {ARCH} GGUF has",
                "convert the model again with `qwythos convert`",
            )
        return v

    n_nextn = view.n_nextn
    n_layer = need(Keys.LLM.BLOCK_COUNT) - n_nextn
    n_embd, n_head = need(Keys.LLM.EMBEDDING_LENGTH), need(Keys.Attention.HEAD_COUNT)
    interval = view.get_int(Keys.LLM.FULL_ATTENTION_INTERVAL) or 4
    rec = view.recurrent_layers or []
    rec = rec[:n_layer] + [(i + 1) % interval != 0 for i in range(len(rec), n_layer)]
    v_heads = need(Keys.SSM.TIME_STEP_RANK)
    emb = view.by_name.get("token_embd.weight")
    eps = view.get(Keys.Attention.LAYERNORM_RMS_EPS)
    return TextConfig(
        hf_arch="gguf",
        n_layer=n_layer,
        n_embd=n_embd,
        n_ff=need(Keys.LLM.FEED_FORWARD_LENGTH),
        n_head=n_head,
        n_head_kv=need(Keys.Attention.HEAD_COUNT_KV),
        head_dim=view.get_int(Keys.Attention.KEY_LENGTH) or n_embd // max(n_head, 1),
        n_ctx=view.context_length or 0,
        n_vocab=view.vocab_size or (int(emb.shape[0]) if emb is not None else 0),
        rms_eps=float(eps) if isinstance(eps, float) else 0.0,
        lin_k_heads=need(Keys.SSM.GROUP_COUNT),
        lin_v_heads=v_heads,
        lin_k_dim=need(Keys.SSM.STATE_SIZE),
        lin_v_dim=need(Keys.SSM.INNER_SIZE) // max(v_heads, 1),
        conv_kernel=need(Keys.SSM.CONV_KERNEL),
        layer_types=["linear_attention" if r else "full_attention" for r in rec],
        full_attention_interval=interval,
        mtp_layers=n_nextn,
        tie_embeddings="output.weight" not in view.by_name,
    )


# ---------------------------------------------------------------- metadata


def _u32(key: str, v: int) -> KV:
    return KV(key, GGUFValueType.UINT32, int(v))


def _f32(key: str, v: float) -> KV:
    return KV(key, GGUFValueType.FLOAT32, float(v))


def _k(template: str) -> str:
    """A gguf.Keys template for this arch: `Keys.LLM.BLOCK_COUNT` -> "qwen35.block_count"."""
    return template.format(arch=ARCH)


def hparams_kv(cfg: TextConfig, *, n_nextn: int, outtype: str = "bf16") -> list[KV]:
    """The arch keys, in llama.cpp's converter order."""
    L, A, R, S = Keys.LLM, Keys.Attention, Keys.Rope, Keys.SSM
    out = [
        _u32(_k(L.BLOCK_COUNT), cfg.n_layer + n_nextn),
        _u32(_k(L.CONTEXT_LENGTH), cfg.n_ctx),
        _u32(_k(L.EMBEDDING_LENGTH), cfg.n_embd),
        _u32(_k(L.FEED_FORWARD_LENGTH), cfg.n_ff),
        _u32(_k(A.HEAD_COUNT), cfg.n_head),
        _u32(_k(A.HEAD_COUNT_KV), cfg.n_head_kv),
    ]
    rope = cfg.rope.get("full_attention", cfg.rope)
    rtype, factor = rope.get("rope_type"), rope.get("factor")
    if rtype == "linear" and factor is not None:
        out += [
            KV(_k(R.SCALING_TYPE), GGUFValueType.STRING, "linear"),
            _f32(_k(R.SCALING_FACTOR), factor),
        ]
    elif rtype == "yarn" and factor is not None:
        out += [
            KV(_k(R.SCALING_TYPE), GGUFValueType.STRING, "yarn"),
            _f32(_k(R.SCALING_FACTOR), factor),
            _u32(_k(R.SCALING_ORIG_CTX_LEN), rope["original_max_position_embeddings"]),
        ]
        yarn = (
            ("extrapolation_factor", R.SCALING_YARN_EXT_FACTOR),
            ("attention_factor", R.SCALING_YARN_ATTN_FACTOR),
            ("beta_fast", R.SCALING_YARN_BETA_FAST),
            ("beta_slow", R.SCALING_YARN_BETA_SLOW),
        )
        for src, dst in yarn:
            v = rope.get(src, rope.get("attn_factor") if src == "attention_factor" else None)
            if v is not None:
                out.append(_f32(_k(dst), v))
    elif rtype in ("su", "longrope"):
        out.append(KV(_k(R.SCALING_TYPE), GGUFValueType.STRING, "longrope"))
    if "mrope_section" in cfg.rope:
        sections = (list(cfg.rope["mrope_section"]) + [0, 0, 0, 0])[:4]
        out.append(KV(_k(R.DIMENSION_SECTIONS), GGUFValueType.ARRAY, sections, GGUFValueType.INT32))
    if rope.get("rope_theta") is not None:
        out.append(_f32(_k(R.FREQ_BASE), rope["rope_theta"]))
    out += [
        _f32(_k(A.LAYERNORM_RMS_EPS), cfg.rms_eps),
        _u32(_k(A.KEY_LENGTH), cfg.head_dim),
        _u32(_k(A.VALUE_LENGTH), cfg.head_dim),
        _u32(Keys.General.FILE_TYPE, OUTTYPES[outtype][1]),
    ]
    if n_nextn > 0:
        out.append(_u32(_k(L.NEXTN_PREDICT_LAYERS), n_nextn))
    recurrent = [t == "linear_attention" for t in cfg.layer_types] + [False] * n_nextn
    out += [
        _u32(_k(S.CONV_KERNEL), cfg.conv_kernel),
        _u32(_k(S.STATE_SIZE), cfg.lin_k_dim),
        _u32(_k(S.GROUP_COUNT), cfg.lin_k_heads),
        _u32(_k(S.TIME_STEP_RANK), cfg.lin_v_heads),
        _u32(_k(S.INNER_SIZE), cfg.ssm_inner),
        KV(_k(RECURRENT_LAYERS), GGUFValueType.ARRAY, recurrent, GGUFValueType.BOOL),
        _u32(_k(L.FULL_ATTENTION_INTERVAL), cfg.full_attention_interval),
        _u32(_k(R.DIMENSION_COUNT), int(cfg.head_dim * cfg.rope.get("partial_rotary_factor", 0.25))),
    ]
    if "mrope_section" not in cfg.rope:
        out.append(
            KV(_k(R.DIMENSION_SECTIONS), GGUFValueType.ARRAY, QWEN35_DEFAULT_MROPE, GGUFValueType.INT32)
        )
    return out


def metadata(
    cfg: TextConfig, ckpt: Checkpoint, *, n_nextn: int, outtype: str = "bf16", name: str | None = None
) -> list[KV]:
    """All GGUF metadata: general.*, hyper-parameters, tokenizer."""
    general = [
        KV(Keys.General.ARCHITECTURE, GGUFValueType.STRING, ARCH),
        KV(Keys.General.TYPE, GGUFValueType.STRING, "model"),
        KV(Keys.General.NAME, GGUFValueType.STRING, name or ckpt.hub_id or ckpt.path.name),
    ]
    tail = [_u32(Keys.General.QUANTIZATION_VERSION, 2)]
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
    return _reorder_by_kind(kind, a, cfg, r)


def _reorder_by_kind(kind: str, a: np.ndarray, cfg: TextConfig, r: Callable[..., np.ndarray]) -> np.ndarray:
    """Apply the V-head reordering `r` (forward or inverse) to the axis `kind` names."""
    if kind == "v_rows":
        return r(a, 0, hd=cfg.lin_v_dim)
    if kind == "v_rows1":
        return r(a, 0, hd=1)
    if kind == "v_cols":
        return r(a, 1, hd=cfg.lin_v_dim)
    if kind in ("v_qkv", "v_conv"):
        qk = 2 * cfg.lin_k_heads * cfg.lin_k_dim
        return np.concatenate([a[:qk], r(a[qk:], 0, hd=cfg.lin_v_dim)], axis=0)
    raise ValueError(kind)


def _apply_arithmetic(kind: str, x: np.ndarray) -> np.ndarray:
    if kind == "plus1":
        return x + np.float32(1)
    if kind == "neg_exp":  # correctly rounded (torch's float32 exp, used by llama.cpp, can be 1 ulp off)
        return (-np.exp(x.astype(np.float64))).astype(np.float32)
    raise ValueError(kind)


def cast(raw: np.ndarray, st_dtype: str, out: GGMLQuantizationType) -> np.ndarray:
    """A raw safetensors array (BF16 as uint16) in the output type's on-disk form."""
    if (st_dtype, out) in SAME_BYTES:
        return raw
    x = to_f32(raw, st_dtype)
    if out == GGMLQuantizationType.F32:
        return x
    if out == GGMLQuantizationType.F16:
        return x.astype(np.float16)
    if out == GGMLQuantizationType.BF16:  # gguf-py's (= ggml's) rounding: NaN quiet, nearest even
        return gguf_quantize(np.ascontiguousarray(x, dtype=np.float32), out)
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


def check_layers(ckpt: Checkpoint, cfg: TextConfig) -> None:
    """The weights hold exactly the trunk layers config.json declares: none missing, none extra.

    With fewer layers declared than held, trunk block N and the MTP block would share names.
    """
    held = {
        int(m.group(1)) for n in ckpt.tensor_names() if (t := hf_text_name(n)) and (m := LAYER_RE.match(t))
    }
    where = ckpt.path / "config.json"
    extra = sorted(i for i in held if i >= cfg.n_layer)
    if extra:
        raise QwythosError(
            f"{where} declares {cfg.n_layer} layers (num_hidden_layers) but the weights hold "
            f"{len(extra)} more: layer(s) {_span(extra)} (model.layers.{extra[0]}.*)",
            f"use the config.json that came with these weights (num_hidden_layers {max(held) + 1}, "
            "layer_types to match)",
        )
    missing = sorted(set(range(cfg.n_layer)) - held)
    if missing:
        raise QwythosError(
            f"{where} declares {cfg.n_layer} layers (num_hidden_layers) but the weights lack "
            f"layer(s) {_span(missing)} (no model.layers.{missing[0]}.* tensors)",
            "download all the checkpoint's safetensors shards, or use the config.json that came with them",
        )


def _span(idx: list[int]) -> str:
    return (
        f"{idx[0]}-{idx[-1]}"
        if len(idx) > 2 and idx[-1] - idx[0] == len(idx) - 1
        else ", ".join(map(str, idx))
    )


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
    if not mtp_only:
        check_layers(ckpt, cfg)
    plans: list[TensorPlan] = []
    sources: dict[str, str] = {}  # GGUF name -> HF name: two tensors must never share a name
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
        if gname in sources:
            raise QwythosError(
                f"{info.file}: tensors {sources[gname]} and {hf_name} would both be {gname} in the GGUF",
                "the checkpoint holds one weight twice under two names; use the original files",
            )
        sources[gname] = hf_name
        check_tensor(info, tuple(int(d) for d in rule.shape(cfg)))
        out_shape = tuple(d for d in info.shape if d != 1) if "squeeze" in rule.transforms else info.shape
        gtype = GGMLQuantizationType.F32 if stays_f32(gname, rule, out_shape) else big_type
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


# ---------------------------------------------------------------- GGUF -> HF (the inverse table)
# Used to write a head read from a GGUF back into a Hugging Face checkpoint. Each forward
# transform above has its inverse here; `hf_value(plan_value)` == the HF tensor for every rule.


def mtp_hf_name(rel: str) -> tuple[str, Rule] | None:
    """Block-relative GGUF name of the MTP block ('nextn.eh_proj.weight', 'attn_q.weight', ...)
    -> (HF name 'mtp.fc.weight' / 'mtp.layers.0.self_attn.q_proj.weight', rule); None if unknown."""
    for hf, rule in MTP_RULES.items():
        if rule.gguf == rel:
            return hf, rule
    for hf, rule in LAYER_RULES.items():
        if rule.gguf == rel:
            return f"mtp.layers.0.{hf}", rule
    return None


def _unapply_arithmetic(kind: str, x: np.ndarray) -> np.ndarray:
    """Inverse of `_apply_arithmetic`, computed in float64 (y - 1 is exact for a float32 y)."""
    y = np.asarray(x, dtype=np.float64)
    if kind == "plus1":
        return y - 1.0
    if kind == "neg_exp":
        return np.log(-y)
    raise ValueError(kind)


def _unapply_permutation(kind: str, a: np.ndarray, cfg: TextConfig, hf_shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of `_apply_permutation`: tiled V-head order back to grouped-by-K order."""
    if kind == "squeeze":
        return a.reshape(hf_shape)
    n_k, n_v = cfg.lin_k_heads, cfg.lin_v_heads
    if n_k == n_v:
        return a
    # forward groups (n_k, n_vpk) and swaps them; swapping (n_vpk, n_k) back undoes it
    r = partial(_reorder_v, n_k=n_v // n_k, n_vpk=n_k)
    return _reorder_by_kind(kind, a, cfg, r)


def hf_value(gguf_value: np.ndarray, rule: Rule, cfg: TextConfig) -> np.ndarray:
    """A tensor's GGUF value (float, numpy shape) -> its HF value (float64, HF shape): the rule's
    arithmetic undone in reverse order, then its permutations undone in reverse order."""
    x = np.asarray(gguf_value, dtype=np.float64)
    for t in reversed(rule.transforms):
        if t in ARITHMETIC:
            x = _unapply_arithmetic(t, x)
    hf_shape = tuple(int(d) for d in rule.shape(cfg))
    for t in reversed(rule.transforms):
        if t in PERMUTATIONS:
            x = _unapply_permutation(t, x, cfg, hf_shape)
    return x.reshape(hf_shape)
