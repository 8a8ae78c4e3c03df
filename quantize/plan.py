"""Predict each quantization's file size, and the memory to run it, without any weights.

The sizes come from llama.cpp's own quantizer in dry-run mode: it needs only tensor headers, so
we hand it a *sparse* GGUF (the real header - names, shapes, metadata - with the data region left
as a hole: no disk used) and read back the type it picks for every tensor. The file size is then
exact: llama.cpp's header size for the output (`gguf_get_meta_size`) plus each tensor's bytes,
padded to the alignment. A bare config.json has no tokenizer, so its tokenizer metadata is an
estimate (`TOKENIZER_BYTES_PER_TOKEN`); an HF folder or a GGUF gives the exact figure.

Memory at a context: weights + KV cache of the full-attention layers (the MTP block is one more
full-attention layer) + the recurrent state of the linear-attention layers (conv + delta state,
f32, per sequence). Compute buffers are not included.
"""

from __future__ import annotations

import math
import os
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gguf import GGUFValueType

from qwythos.convert.mmproj import planned_projector
from qwythos.core.errors import QwythosError
from qwythos.core.gguf.file import KV, encode_header, normalize_kv, pad
from qwythos.core.gguf.ftypes import FType, GGMLType, parse_ggml_type, parse_types
from qwythos.core.model import qwen35
from qwythos.core.model.arch import ARCH
from qwythos.core.model.checkpoint import Checkpoint, TensorInfo
from qwythos.core.model.memory import KV_TYPES, kv_cache_bytes, recurrent_state_bytes
from qwythos.core.model.release import START_CONTEXT
from qwythos.quantize.llama_quant import Imatrix, TensorChoice, llama_quantize, output_meta_size
from qwythos.quantize.source import CONFIG_FILE, GGUF, Source, open_plan_source

DEFAULT_TYPES = ("Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0", "BF16")
# Sizes below Q4_K_M, for small GPUs: made best (IQ types: only) with an importance matrix
SMALL_TYPES = ("Q2_K", "IQ3_M", "Q3_K_M", "IQ4_XS")
# What `qwythos plan` sizes by default: the small ones too, smallest first
PLAN_TYPES = (*SMALL_TYPES, *DEFAULT_TYPES)
# quantize.imatrix.* keys an output made with an importance matrix carries (file name, dataset,
# entry and chunk counts): a few hundred bytes, an estimate
IMATRIX_KV_BYTES = 256
MTP_TYPES = ("bf16", "q8_0", "same")
# The MTP block's default type. Measured (bench/bench_mtp_type.py, trained tiny model, trunk Q4_K_M):
# a q8_0 head drafts as well as a bf16 one (depth-1 acceptance +0.23 / -0.07 points on two texts,
# same expected accepted length per step; q4_0 loses 0.9-1.8 points) and its weights are half the
# bytes: the 9B head 0.453 -> 0.241 GiB, so a draft step (head + the shared 0.777 GiB q6_K output
# matrix) reads 1.23 -> 1.02 GiB.
DEFAULT_MTP_TYPE = "q8_0"
# Tokenizer metadata of a bare config.json (no tokenizer files): bytes per vocab entry, for the
# Qwen3.5 byte-level BPE (token string + length, token type, ~one merge per token).
TOKENIZER_BYTES_PER_TOKEN = 40
GIB = 2**30


@dataclass
class TypePlan:
    type: str
    file_bytes: int  # the file `qwythos quantize` writes from this source
    file_gib: float
    trunk_gib: float  # without the MTP block (how the official GGUF repo ships its quants)
    with_mtp_gib: float | None  # with the MTP block at `mtp_type` (None: no head known)
    bpw: float  # bits per weight over all weights
    mtp_type: str
    mtp_bytes: int
    tensor_types: dict[str, int]  # ggml type -> number of tensors
    needs_imatrix: bool
    weights_bytes: int
    memory_bytes: int
    memory_gib: float


@dataclass
class Plan:
    source: str
    source_kind: str  # "gguf" | "hf-folder" | "config"
    n_params: int
    n_layer: int
    mtp_layers: int
    ctx: int
    kv_type: str
    kv_cache_bytes: int
    recurrent_state_bytes: int
    types: list[TypePlan] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    mmproj_bytes: int | None = None  # the vision projector file (None: no tower / none beside the GGUF)
    mmproj_type: str | None = None
    mmproj_source: str | None = None  # planned from config.json, or the file found beside the GGUF


# ---------------------------------------------------------------- header-only views


def _config_checkpoint(config: dict[str, Any], cfg: qwen35.TextConfig, mtp: bool, where: Path) -> Checkpoint:
    """A Checkpoint with headers only (BF16, no file) for every tensor a Qwen3.5 config implies."""
    names: list[str] = list(qwen35.GLOBAL_RULES)
    if cfg.tie_embeddings:
        names.remove("lm_head.weight")
    for i, kind in enumerate(cfg.layer_types):
        names += [f"model.layers.{i}.{k}" for k in qwen35.hf_layer_keys(kind)]
    if mtp:
        names += list(qwen35.MTP_RULES)
        for k in range(max(1, cfg.mtp_layers)):
            names += [f"mtp.layers.{k}.{n}" for n in qwen35.hf_layer_keys("nextn")]
    tensors: dict[str, TensorInfo] = {}
    for n in names:
        _, rule = qwen35.lookup(n, cfg)  # type: ignore[misc]
        shape = tuple(int(d) for d in rule.shape(cfg))
        numel = 1
        for d in shape:
            numel *= d
        tensors[n] = TensorInfo(n, "BF16", shape, where, 0, 2 * numel)
    return Checkpoint(path=where.parent, config=config, files=[], tensors=tensors)


def _tokenizer_estimate(cfg: qwen35.TextConfig) -> KV:
    """A placeholder key whose size stands for the tokenizer metadata a real folder would add."""
    return KV(
        "qwythos.plan.tokenizer_estimate",
        GGUFValueType.STRING,
        "x" * (cfg.n_vocab * TOKENIZER_BYTES_PER_TOKEN),
    )


def write_sparse_gguf(path: Path, kvs: list[KV], plans: list) -> int:
    """Write the header and leave the data region as a hole (sparse file: no blocks allocated)."""
    header = encode_header(normalize_kv(ARCH, kvs), plans)
    total = len(header) + sum(pad(p.nbytes) for p in plans)
    with open(path, "wb") as f:
        f.write(header)
        f.truncate(total)
    return total


@dataclass
class DryRunFile:
    """The GGUF llama.cpp's dry run reads for a source: the file itself, or a sparse header-only
    GGUF built from a checkpoint's headers or a bare config (removed when its `with` ends)."""

    gguf: Path
    cfg: qwen35.TextConfig
    n_nextn: int
    notes: list[str]
    temporary: bool

    def __enter__(self) -> DryRunFile:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.temporary:
            self.gguf.unlink(missing_ok=True)
            os.rmdir(self.gguf.parent)


def dry_run_file(source: Source, *, mtp: bool | None = None, tmpdir: Path | None = None) -> DryRunFile:
    """A GGUF the dry run can read: the GGUF source itself (its header view read once when the
    source was opened), or a sparse GGUF built from a checkpoint's headers or a config.json."""
    if source.kind == GGUF:
        return DryRunFile(source.path, qwen35.config_from_gguf(source.view), source.n_nextn, [], False)
    notes: list[str] = []
    config = source.config or {}
    if source.kind == CONFIG_FILE:
        p = source.path
        cfg = qwen35.text_config_from(config, where=str(p))
        want = cfg.mtp_layers > 0 if mtp is None else mtp
        ckpt_h = _config_checkpoint(config, cfg, want, p)
        plans = qwen35.plan_tensors(ckpt_h, cfg, include_mtp=want)
        n_nextn = max(1, cfg.mtp_layers) if want else 0
        kvs = [
            KV("general.architecture", GGUFValueType.STRING, ARCH),
            KV("general.type", GGUFValueType.STRING, "model"),
            KV("general.name", GGUFValueType.STRING, source.name),
            *qwen35.hparams_kv(cfg, n_nextn=n_nextn),
            KV("general.quantization_version", GGUFValueType.UINT32, 2),
            _tokenizer_estimate(cfg),
        ]
        notes.append(
            f"no tokenizer files: tokenizer metadata estimated at {TOKENIZER_BYTES_PER_TOKEN} bytes x "
            f"{cfg.n_vocab} tokens"
        )
    else:
        ckpt = source.checkpoint
        cfg = qwen35.text_config_from(config, where=str(source.path / "config.json"))
        in_files = qwen35.mtp_layer_count(ckpt)
        want = in_files > 0 if mtp is None else mtp
        if want and not in_files:
            ckpt_h = _config_checkpoint(config, cfg, True, source.path / "config.json")
            notes.append("the folder has no MTP tensors: the head is sized from config.json")
            plans = qwen35.plan_tensors(ckpt, cfg, include_mtp=False) + qwen35.plan_tensors(
                ckpt_h, cfg, mtp_only=True
            )
        else:
            plans = qwen35.plan_tensors(ckpt, cfg, include_mtp=want)
        n_nextn = max(1, cfg.mtp_layers) if want else 0
        kvs = qwen35.metadata(cfg, ckpt, n_nextn=n_nextn)
    tmp = Path(tempfile.mkdtemp(prefix="qwythos-plan-", dir=tmpdir))
    out = tmp / "header-only.gguf"
    write_sparse_gguf(out, kvs, plans)
    return DryRunFile(out, cfg, n_nextn, notes, True)


# ---------------------------------------------------------------- memory: core/model/memory.py


# ---------------------------------------------------------------- per type


def check_mtp_type(mtp_type: str) -> str:
    """`--mtp-type`: "same" (the file's mix) or any storable GGML type (bf16, q8_0, q4_0 ...), lower-cased.

    llama.cpp falls back per tensor where a row is not a multiple of the type's block (q6_K on a
    128-wide row gives q8_0), exactly as for the trunk: the dry run reports what each tensor gets.
    """
    m = mtp_type.strip().lower()
    if m == "same":
        return m
    try:
        parse_ggml_type(m, "--mtp-type")
    except QwythosError as e:
        others = (e.hint or "").removeprefix("valid types: ")
        raise QwythosError(e.message, "use " + ", ".join(MTP_TYPES) + ", or any of: " + others) from None
    return m


def mtp_overrides(n_layer: int, n_nextn: int, mtp_type: str, ftype: FType) -> list[tuple[str, GGMLType]]:
    """Per-tensor overrides that keep the MTP block (blk.{n_layer}.*) at `mtp_type`."""
    if n_nextn == 0 or mtp_type == "same":
        return []
    t = parse_ggml_type(mtp_type, "--mtp-type")
    blocks = "|".join(str(n_layer + k) for k in range(n_nextn))
    return [(rf"^blk\.({blocks})\.", t)]


def dry_run(
    gguf: Path,
    ftype: FType,
    *,
    overrides: list[tuple[str, GGMLType]] | None = None,
    output_tensor_type: GGMLType | None = None,
    token_embedding_type: GGMLType | None = None,
    imatrix: Imatrix | None = None,
) -> tuple[list[TensorChoice], int]:
    """llama.cpp's choice for every tensor, and the exact size of the file it would write."""
    call = llama_quantize(
        gguf,
        None,
        ftype,
        overrides=overrides,
        output_tensor_type=output_tensor_type,
        token_embedding_type=token_embedding_type,
        imatrix=imatrix,
        allow_requantize=True,
        dry_run=True,
    )
    if not call.ok:
        raise QwythosError(f"llama.cpp's quantizer rejected {gguf}: {call.error}", "check the input file")
    extra = IMATRIX_KV_BYTES if imatrix is not None or ftype.needs_imatrix else 0
    size = output_meta_size(gguf, ftype.id) + extra + sum(pad(t.nbytes()) for t in call.tensors)
    return call.tensors, size


def plan(
    src_or_config: str | Path | Source,
    types: list[str] | str = PLAN_TYPES,
    ctx: int = START_CONTEXT,
    kv_type: str = KV_TYPES[0],
    *,
    mtp_type: str = DEFAULT_MTP_TYPE,
    mtp: bool | None = None,
    output_tensor_type: str | None = None,
    token_embedding_type: str | None = None,
) -> Plan:
    """Sizes of each quantization of `src_or_config` (GGUF, HF folder or config.json, or a Source
    opened already) and memory at `ctx`."""
    ftypes_ = parse_types(list(types) if not isinstance(types, str) else types)
    mtp_type = check_mtp_type(mtp_type)
    if ctx <= 0:
        raise QwythosError(f"--ctx {ctx} must be positive", f"e.g. --ctx {START_CONTEXT}")
    ott = parse_ggml_type(output_tensor_type, "--output-tensor-type") if output_tensor_type else None
    tet = parse_ggml_type(token_embedding_type, "--token-embedding-type") if token_embedding_type else None
    source = open_plan_source(src_or_config)
    is_config = source.kind == CONFIG_FILE
    with ExitStack() as temporary:
        view = temporary.enter_context(dry_run_file(source, mtp=mtp))
        cfg, n_nextn = view.cfg, view.n_nextn
        # the trunk alone, for the file size the official repo ships (no head): a second dry run
        trunk_view = (
            temporary.enter_context(dry_run_file(source, mtp=False))
            if n_nextn and source.kind != GGUF
            else None
        )
        kv_b = kv_cache_bytes(cfg, ctx, kv_type, n_nextn if (not is_config or mtp) else 0)
        rs_b = recurrent_state_bytes(cfg)
        result = Plan(
            source=source.given,
            source_kind=source.kind,
            n_params=0,
            n_layer=cfg.n_layer,
            mtp_layers=n_nextn,
            ctx=ctx,
            kv_type=kv_type,
            kv_cache_bytes=kv_b,
            recurrent_state_bytes=rs_b,
            notes=list(view.notes),
        )
        mtp_prefix = tuple(f"blk.{cfg.n_layer + k}." for k in range(n_nextn))
        primary_with_head = bool(n_nextn) and (not is_config or mtp is True)
        for ft in ftypes_:
            ov = mtp_overrides(cfg.n_layer, n_nextn, mtp_type, ft)
            choices, size = dry_run(
                view.gguf, ft, overrides=ov, output_tensor_type=ott, token_embedding_type=tet
            )
            trunk_size = size if not n_nextn else None
            if trunk_view is not None:
                trunk_size = dry_run(trunk_view.gguf, ft, output_tensor_type=ott, token_embedding_type=tet)[1]
            n_params = sum(math.prod(c.ne) for c in choices if not c.name.startswith(mtp_prefix or ("\0",)))
            result.n_params = n_params
            head = [c for c in choices if c.name.startswith(mtp_prefix)] if mtp_prefix else []
            trunk_w = sum(c.nbytes() for c in choices if c not in head)
            weights = trunk_w + (sum(c.nbytes() for c in head) if primary_with_head else 0)
            counts: dict[str, int] = {}
            for c in choices:
                counts[c.new_type] = counts.get(c.new_type, 0) + 1
            head_types = sorted({c.new_type for c in head if len(c.ne) > 1})
            mem = weights + kv_b + rs_b
            file_bytes = size if primary_with_head or trunk_size is None else trunk_size
            result.types.append(
                TypePlan(
                    type=ft.name,
                    file_bytes=file_bytes,
                    file_gib=round(file_bytes / GIB, 3),
                    trunk_gib=round((trunk_size if trunk_size is not None else size) / GIB, 3),
                    with_mtp_gib=round(size / GIB, 3) if n_nextn else None,
                    bpw=round(8 * trunk_w / max(n_params, 1), 3),
                    mtp_type="/".join(head_types) if head else "-",
                    mtp_bytes=sum(c.nbytes() for c in head),
                    tensor_types=counts,
                    needs_imatrix=ft.needs_imatrix,
                    weights_bytes=weights,
                    memory_bytes=mem,
                    memory_gib=round(mem / GIB, 3),
                )
            )
    needs = [t.type for t in result.types if t.needs_imatrix]
    if needs:
        result.notes.append(
            f"{', '.join(needs)}: made only with an importance matrix (`qwythos quantize --imatrix auto` "
            "computes one)"
        )
    if is_config and n_nextn and mtp is not True:
        result.notes.append(
            "file size = trunk only, as the official GGUF repo ships its quants (the MTP head is a "
            "separate MTP-BF16 file); the +MTP column adds the head at --mtp-type"
        )
    projector = planned_projector(source.path, config=source.config)
    if projector is not None:
        result.mmproj_bytes = projector.bytes
        result.mmproj_type = projector.mmproj_type
        result.mmproj_source = projector.how
    return result
