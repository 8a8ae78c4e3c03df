"""Graft an MTP head into a converted (possibly quantized) qwen35 trunk GGUF, or write it alone.

Grafted: the trunk's metadata with `block_count` + 1, `nextn_predict_layers` = 1 and the recurrent
flags extended by one `false`; the trunk's tensors copied byte for byte, then the head's block as
`blk.{n_layer}.*` - what llama.cpp's converter writes when the checkpoint carries the head.
Separate (`--separate`): the same metadata with only `output`, `token_embd`, `output_norm` from the
trunk plus the block - llama.cpp's `--mtp` stand-alone draft (see mtp/sources.py).

The head's matrices get their own type (`--type`, default bf16); its norms stay F32.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType, Keys

from qwythos.core.errors import QwythosError
from qwythos.core.fileio import check_free_space, check_output_path, register_inputs
from qwythos.core.gguf.file import (
    KV,
    GGUFHeader,
    RawSource,
    TensorPlan,
    type_nbytes,
    write_gguf,
)
from qwythos.core.gguf.view import RECURRENT_LAYERS, GGUFView, read_view
from qwythos.core.model.arch import ARCH, check_arch
from qwythos.core.model.qwen35 import cast
from qwythos.core.model.structure import (
    HEAD_MATRICES,
    STANDALONE_GLOBALS,
    dims_from_header,
    head_table,
    n_trunk_layers,
    split_block_name,
)
from qwythos.mtp.sources import KIND_LABEL, HeadSource, HeadTensor, byte_loader, dequantize, open_head

T = GGMLQuantizationType
# --type -> GGML type of the head's matrices (types gguf-py can quantize to in Python)
HEAD_TYPES: dict[str, GGMLQuantizationType] = {
    "bf16": T.BF16,
    "f16": T.F16,
    "f32": T.F32,
    "q8_0": T.Q8_0,
    "q5_1": T.Q5_1,
    "q5_0": T.Q5_0,
    "q4_1": T.Q4_1,
    "q4_0": T.Q4_0,
    # k-quants: gguf-py cannot make them, llama.cpp's own quantizer does (ggml_quantize_chunk)
    "q6_k": T.Q6_K,
    "q5_k": T.Q5_K,
    "q4_k": T.Q4_K,
    "q3_k": T.Q3_K,
    "q2_k": T.Q2_K,
}
GGML_QUANTIZED = {T.Q6_K, T.Q5_K, T.Q4_K, T.Q3_K, T.Q2_K}
DEFAULT_HEAD_TYPE = "bf16"  # the head's matrices as the base model ships them


def ggml_quantize(x: np.ndarray, out: GGMLQuantizationType) -> np.ndarray:
    """Rows of float32 `x` in type `out` by llama.cpp's quantizer (ggml_quantize_chunk), as bytes."""
    import ctypes

    from llama_cpp import _ggml

    lib = _ggml.libggml
    fn = lib.ggml_quantize_chunk
    fn.restype = ctypes.c_size_t
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p] + [ctypes.c_int64] * 3 + [ctypes.c_void_p]
    src = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, x.shape[-1])
    dst = np.empty(type_nbytes(out, x.shape), dtype=np.uint8)
    n = fn(int(out), src.ctypes.data, dst.ctypes.data, 0, src.shape[0], src.shape[1], None)
    if n != dst.nbytes:
        raise QwythosError(
            f"llama.cpp's quantizer wrote {n} bytes for a {out.name} tensor, not {dst.nbytes}", None
        )
    return dst


@dataclass
class RestoreResult:
    output: Path
    trunk: Path
    source: str
    source_kind: str
    mode: str  # "grafted" | "separate"
    head_block: int
    head_type: str
    block_count: int
    n_tensors: int
    head_tensors: list[dict[str, Any]] = field(default_factory=list)  # name, shape, type, how
    bytes_written: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def _fmt(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def check_compatible(trunk: GGUFHeader, head: HeadSource, src: str) -> None:
    """Raise, naming the tensor and both shapes, if the head cannot run on this trunk."""
    dims = dims_from_header(trunk)
    if head.dims.arch != dims.arch:
        raise QwythosError(
            f"{src} is a {head.dims.arch} head, {trunk.path} a {dims.arch} model",
            "pair a qwen35 head with a qwen35 trunk",
        )
    table = head_table(dims)
    got = {t.name: t for t in head.tensors}
    il = n_trunk_layers(trunk)
    # the projection first: it carries the hidden size
    order = sorted(got, key=lambda n: (n != "nextn.eh_proj.weight", n))
    for name in order:
        t = got[name]
        if name not in table:
            raise QwythosError(
                f"{src}: tensor {t.source or name} is not part of a qwen35 MTP block",
                "use an unmodified head",
            )
        want = table[name][0]
        if tuple(t.shape) != want:
            raise QwythosError(
                f"head tensor blk.{il}.{name} (from {t.source or name} in {src}) has shape {_fmt(t.shape)}, "
                f"the trunk {trunk.path.name} needs {_fmt(want)}",
                "the head comes from a model of another size; take it from the same base model "
                f"(hidden {dims.n_embd}, {dims.n_head}/{dims.n_head_kv} heads of {dims.head_dim}, FFN {dims.n_ff})",
            )
    missing = [n for n, (_, req) in table.items() if req and n not in got]
    if missing:
        raise QwythosError(
            f"{src}: the head lacks blk.{il}.{missing[0]} ({len(missing)} missing)", "use a complete head"
        )
    for attr, what in (
        ("n_vocab", "vocabulary size (token_embd.weight rows)"),
        ("n_head", "attention head count"),
        ("n_head_kv", "KV head count"),
        ("head_dim", "head dimension"),
        ("n_embd", "hidden size"),
        ("n_ff", "FFN size"),
    ):
        a, b = getattr(head.dims, attr), getattr(dims, attr)
        if a != b:
            raise QwythosError(
                f"{src} has {what} {a}, the trunk {trunk.path.name} has {b}",
                "the head must come from the same base model as the trunk",
            )


def _convert(t: HeadTensor, out: GGMLQuantizationType) -> np.ndarray:
    x = dequantize(t)
    if out == T.F32:
        return x.astype(np.float32)
    if out == T.F16:
        return x.astype(np.float16)
    if out == T.BF16:
        return cast(x, "F32", out)
    if out in GGML_QUANTIZED:
        return ggml_quantize(x, out)
    from gguf.quants import quantize

    return quantize(x, out)


def head_plans(
    head: HeadSource,
    il: int,
    head_type: str,
    types: dict[str, GGMLQuantizationType] | None = None,
) -> tuple[list[TensorPlan], list[dict[str, Any]]]:
    """The head's tensors as `blk.{il}.*` plans in the requested type (raw copies where possible);
    `types` gives single matrices their own type (`mtp fit` keeps each one's type)."""
    if head_type.lower() not in HEAD_TYPES:
        raise QwythosError(f"unknown head --type {head_type}", f"use one of {', '.join(HEAD_TYPES)}")
    want = HEAD_TYPES[head_type.lower()]
    plans, rows = [], []
    for t in head.tensors:
        out = (types or {}).get(t.name, want) if t.name in HEAD_MATRICES else T.F32
        block = GGML_QUANT_SIZES[out][0]
        if t.shape[-1] % block:
            raise QwythosError(
                f"head tensor {t.name} has rows of {t.shape[-1]}, not a multiple of the {out.name} block ({block})",
                "choose --type bf16 or q8_0",
            )
        name = f"blk.{il}.{t.name}"
        if t.ggml_type == out:
            plan = TensorPlan(
                name, t.shape, out, t.nbytes, t.load, raw=t.raw, source=t.source, transform="copy"
            )
        else:
            plan = TensorPlan(
                name,
                t.shape,
                out,
                type_nbytes(out, t.shape),
                (lambda t=t, out=out: _convert(t, out)),
                source=t.source,
                transform=f"{t.ggml_type.name}->{out.name}",
            )
        plans.append(plan)
        rows.append({"name": name, "shape": list(t.shape), "type": out.name, "how": plan.transform})
    return plans, rows


def _kvs(hdr: GGUFHeader, n_layer: int) -> list[KV]:
    """The trunk's metadata with one nextn block added (keys in llama.cpp's converter order)."""
    v = GGUFView(hdr)
    nextn_key, block_key = v.key(Keys.LLM.NEXTN_PREDICT_LAYERS), v.key(Keys.LLM.BLOCK_COUNT)
    recurrent_key, conv_key = v.key(RECURRENT_LAYERS), v.key(Keys.SSM.CONV_KERNEL)
    out: list[KV] = []
    for key, value in hdr.kv.items():
        vtype, sub = hdr.kv_types[key]
        kv = KV(key, GGUFValueType(vtype), value, GGUFValueType(sub) if sub is not None else None)
        if key == nextn_key:
            continue
        if key == block_key:
            kv = KV(key, kv.vtype, n_layer + 1)
        elif key == recurrent_key:
            kv = KV(key, kv.vtype, list(value[:n_layer]) + [False], kv.sub_type)
        if key == conv_key:  # the converter writes nextn_predict_layers just before
            out.append(KV(nextn_key, GGUFValueType.UINT32, 1))
        out.append(kv)
    if not any(k.key == nextn_key for k in out):
        out.append(KV(nextn_key, GGUFValueType.UINT32, 1))
    return out


def _raw_plan(hdr: GGUFHeader, t: Any) -> TensorPlan:
    return TensorPlan(
        t.name,
        t.shape,
        T(t.ggml_type),
        t.nbytes,
        byte_loader(hdr.path, t.offset, t.nbytes),
        raw=RawSource(hdr.path, t.offset, t.nbytes),
        transform="copy",
    )


def default_output(trunk: Path, separate: bool) -> Path:
    stem = trunk.name[:-5] if trunk.name.endswith(".gguf") else trunk.name
    return trunk.with_name(f"mtp-{stem}.gguf" if separate else f"{stem}-MTP.gguf")


def restore(
    trunk: str | Path,
    src: str | Path | HeadSource,
    out: str | Path | None = None,
    *,
    separate: bool = False,
    head_type: str = DEFAULT_HEAD_TYPE,
    force: bool = False,
    replace: bool = False,
    types: dict[str, GGMLQuantizationType] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> RestoreResult:
    """Give `trunk` the MTP head found in `src` (grafted into a copy, or as a stand-alone draft).

    `src` may be an opened HeadSource (`mtp fit` passes its trained head); `replace` swaps a head
    the trunk already has without --force; `types` keeps single matrices in their own type."""
    t0 = time.perf_counter()
    view = read_view(trunk)
    hdr = view.header
    check_arch(view, "restore an MTP head into")
    if not view.has_trunk:
        raise QwythosError(
            f"{trunk} is a stand-alone MTP head, not a trunk", "pass the main model GGUF as TRUNK"
        )
    notes: list[str] = []
    n_layer = view.n_trunk or 0
    if view.n_nextn:
        if not (force or replace):
            raise QwythosError(
                f"{trunk} already has an MTP head (block {n_layer})", "pass --force to replace it"
            )
        notes.append(f"replaced the head already in {Path(trunk).name}")
    head = src if isinstance(src, HeadSource) else open_head(src)
    src = head.path if isinstance(src, HeadSource) else src
    check_compatible(hdr, head, str(src))
    plans_head, rows = head_plans(head, n_layer, head_type, types)
    trunk_tensors = [t for t in hdr.tensors if not ((sb := split_block_name(t.name)) and sb[0] >= n_layer)]
    if separate:
        trunk_tensors = [t for t in trunk_tensors if t.name in STANDALONE_GLOBALS]
    plans = [_raw_plan(hdr, t) for t in trunk_tensors] + plans_head
    kvs = _kvs(hdr, n_layer)
    out_path = Path(out) if out is not None else default_output(Path(trunk), separate)
    if out_path.resolve() == Path(trunk).resolve():
        raise QwythosError(f"{out_path} is the trunk itself", "write the result to another file with -o")
    register_inputs(trunk, src if Path(str(src)).exists() else None)
    check_output_path(out_path, force=force, inputs=[trunk])
    check_free_space(out_path.parent, sum(p.nbytes + 64 for p in plans) + 2**20, what=str(out_path))
    size = write_gguf(out_path, ARCH, kvs, plans, progress=progress, alignment=hdr.alignment)
    return RestoreResult(
        output=out_path,
        trunk=Path(trunk),
        source=str(src),
        source_kind=KIND_LABEL.get(head.kind, head.kind),
        mode="separate" if separate else "grafted",
        head_block=n_layer,
        head_type=head_type,
        block_count=n_layer + 1,
        n_tensors=len(plans),
        head_tensors=rows,
        bytes_written=size,
        seconds=round(time.perf_counter() - t0, 3),
        notes=notes,
    )
