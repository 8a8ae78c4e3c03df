"""safetensors checkpoint (folder or Hub id) -> GGUF, faithful to llama.cpp's converter, streaming."""

from __future__ import annotations

import mmap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFValueType, Keys

from qwythos.core.errors import QwythosError
from qwythos.core.fileio import check_free_space, check_output_path, register_inputs
from qwythos.core.gguf.file import KV, TensorPlan, encode_header, normalize_kv, write_gguf
from qwythos.core.model import qwen35
from qwythos.core.model.arch import ARCH
from qwythos.core.model.checkpoint import Checkpoint, TensorInfo, open_checkpoint

RESTORE_HINT = "`qwythos mtp restore` can give the head back"
#: Metadata key listing what convert warned about (NaN/Inf weights, no chat template), one string
#: each; absent when there was nothing to say, so a clean file equals llama.cpp's converter's.
WARNINGS_KEY = "qwythos.convert.warnings"
NO_TEMPLATE_WARNING = (
    "the checkpoint has no chat template (tokenizer_config.json chat_template or chat_template.jinja): "
    "chat front-ends cannot format turns; copy the template from the base model's tokenizer files"
)
# safetensors dtype -> (unsigned view, exponent mask): all exponent bits set = NaN or Inf
NONFINITE_MASK: dict[str, tuple[type, int]] = {
    "BF16": (np.uint16, 0x7F80),
    "F16": (np.uint16, 0x7C00),
    "F32": (np.uint32, 0x7F800000),
}
SCAN_CHUNK = 16 * 2**20


@dataclass
class ConvertResult:
    output: Path
    source: Path
    hub_id: str | None
    outtype: str
    arch: str
    n_layer: int
    block_count: int
    nextn_layers: int
    mtp: str  # "included" | "left out (--no-mtp)" | "absent" | "promised by config, absent from the files"
    n_tensors: int
    tensors_copied: int  # copied byte-for-byte from the safetensors (no transform)
    skipped_vision_tensors: int
    bytes_written: int
    seconds: float
    notes: list[str] = field(default_factory=list)


def default_output(name: str, outtype: str, prefix: str = "") -> Path:
    """llama.cpp's naming, in the current folder: `<name>-<TYPE>.gguf` (the projector's with the
    prefix "mmproj-")."""
    return Path.cwd() / f"{prefix}{name}-{outtype.upper()}.gguf"


def check_room(out_path: Path, arch: str, kvs: list[KV], plans: list[TensorPlan], spare: int = 0) -> None:
    """Refuse before writing when `out_path`'s folder cannot hold the header (plus `spare` bytes)
    and every tensor."""
    header_len = len(encode_header(normalize_kv(arch, kvs), plans)) + spare
    check_free_space(out_path.parent, header_len + sum(p.nbytes + 32 for p in plans), what=str(out_path))


def written(ckpt: Checkpoint, out_path: Path, n_tensors: int, size: int, t0: float) -> dict[str, Any]:
    """The fields every conversion's result shares: the file, its checkpoint, its tensors and bytes,
    and the seconds since `t0`."""
    return {
        "output": out_path,
        "source": ckpt.path,
        "hub_id": ckpt.hub_id,
        "n_tensors": n_tensors,
        "bytes_written": size,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def count_nonfinite(info: TensorInfo) -> int:
    """NaN and Inf values in one safetensors tensor, read straight from its file.

    A value is NaN or Inf exactly when its exponent bits are all ones, so the test is one mask and
    a max per chunk (about 0.3 s of CPU per GiB from the page cache). The file is mapped, not read,
    and each chunk's pages are released after it, so memory stays at one chunk.
    """
    dtype, mask = NONFINITE_MASK[info.dtype]
    if info.numel == 0:
        return 0
    item = np.dtype(dtype).itemsize
    start = info.offset - info.offset % mmap.ALLOCATIONGRANULARITY
    base = info.offset - start
    bad = 0
    scratch = np.empty(min(SCAN_CHUNK, info.numel), dtype=dtype)
    with (
        open(info.file, "rb") as f,
        mmap.mmap(f.fileno(), base + info.numel * item, offset=start, access=mmap.ACCESS_READ) as mm,
    ):
        for i in range(0, info.numel, SCAN_CHUNK):
            part = scratch[: min(SCAN_CHUNK, info.numel - i)]
            chunk = np.frombuffer(mm, dtype=dtype, count=len(part), offset=base + i * item)
            np.bitwise_and(chunk, mask, out=part)
            del chunk  # no view may outlive the mapping
            lo, hi = base + i * item, base + (i + len(part)) * item
            lo -= lo % mmap.PAGESIZE
            if hi - hi % mmap.PAGESIZE > lo:  # drop this chunk's pages from our RSS (the cache keeps them)
                mm.madvise(mmap.MADV_DONTNEED, lo, hi - hi % mmap.PAGESIZE - lo)
            if part.max() == mask:
                bad += int(np.count_nonzero(part == mask))
    return bad


class _Rewrite(Exception):
    """Raised after the last tensor when the header must gain a warning (it is written first)."""


def convert(
    src: str | Path | Checkpoint,
    out: str | Path | None = None,
    *,
    outtype: str = "bf16",
    mtp: bool = True,
    force: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
    name: str | None = None,
) -> ConvertResult:
    """Convert a Qwen3.5 safetensors checkpoint to GGUF. The vision tower is always left out."""
    t0 = time.perf_counter()
    if outtype not in qwen35.OUTTYPES:
        raise QwythosError(f"unknown --outtype {outtype}", "use bf16, f16 or f32")
    ckpt = open_checkpoint(src)
    cfg = qwen35.text_config_from(ckpt.config, where=str(ckpt.path / "config.json"))
    if cfg.lin_k_dim != cfg.lin_v_dim:  # llama.cpp sizes both from ssm.state_size: such a GGUF never loads
        raise QwythosError(
            f"{ckpt.path / 'config.json'}: linear_key_head_dim {cfg.lin_k_dim} differs from "
            f"linear_value_head_dim {cfg.lin_v_dim}, and llama.cpp's qwen35 loader needs them equal",
            "convert a checkpoint whose key and value heads are equally wide (scripts/pad_linear_keys.py "
            "zero-pads the key heads of such a folder)",
        )
    in_files = qwen35.mtp_layer_count(ckpt)
    notes: list[str] = []
    if not mtp:
        n_nextn, state = 0, "left out (--no-mtp)" if in_files else "absent"
    elif in_files:
        n_nextn, state = in_files, "included"
    elif cfg.mtp_layers:
        n_nextn, state = 0, "promised by config, absent from the files"
        notes.append(
            f"config.json promises {cfg.mtp_layers} MTP layer(s) but the safetensors carry no mtp.* tensors: "
            f"wrote a trunk-only GGUF (as llama.cpp's --no-mtp does); {RESTORE_HINT}"
        )
    else:
        n_nextn, state = 0, "absent"
    plans = qwen35.plan_tensors(ckpt, cfg, outtype=outtype, include_mtp=n_nextn > 0)
    _check_coverage(plans, cfg, n_nextn, ckpt.path)
    skipped = sum(1 for n in ckpt.tensor_names() if qwen35.hf_text_name(n) is None)
    if skipped:
        notes.append(
            f"vision tower left out ({skipped} tensors): this is a text-only GGUF "
            "(`--mmproj FILE` also writes the vision projector)"
        )

    base = name or ckpt.short_name
    out_path = Path(out) if out is not None else default_output(base, outtype)
    inputs = [*ckpt.files, ckpt.path / "config.json"]
    register_inputs(*inputs)  # no output of this process may replace them (core/fileio.py)
    check_output_path(out_path, force=force, inputs=inputs)
    kvs = qwen35.metadata(cfg, ckpt, n_nextn=n_nextn, outtype=outtype, name=name)
    warnings = [] if any(k.key == Keys.Tokenizer.CHAT_TEMPLATE for k in kvs) else [NO_TEMPLATE_WARNING]
    nonfinite: dict[str, int] = {}

    def with_warnings() -> list[KV]:
        return (
            kvs + [KV(WARNINGS_KEY, GGUFValueType.ARRAY, warnings, GGUFValueType.STRING)] if warnings else kvs
        )

    check_room(out_path, ARCH, with_warnings(), plans, spare=1024)  # + a NaN note

    def scan(plan: TensorPlan) -> None:  # each tensor's source, right after it was copied (hot cache)
        if n := count_nonfinite(ckpt.tensor_info(plan.source)):
            nonfinite[plan.source] = n
        if plan is plans[-1] and nonfinite:
            raise _Rewrite

    try:
        size = write_gguf(out_path, ARCH, with_warnings(), plans, progress=progress, after_tensor=scan)
    except _Rewrite:  # NaN/Inf found: the header (written first) must say so; write once more
        warnings.append(_nonfinite_warning(nonfinite))
        size = write_gguf(out_path, ARCH, with_warnings(), plans, progress=progress)
    notes += warnings
    return ConvertResult(
        **written(ckpt, out_path, len(plans), size, t0),
        outtype=outtype,
        arch=ARCH,
        n_layer=cfg.n_layer,
        block_count=cfg.n_layer + n_nextn,
        nextn_layers=n_nextn,
        mtp=state,
        tensors_copied=sum(1 for p in plans if p.raw is not None),
        skipped_vision_tensors=skipped,
        notes=notes,
    )


def _check_coverage(plans: list[TensorPlan], cfg: qwen35.TextConfig, n_nextn: int, where: Path) -> None:
    """The planned tensors are exactly the qwen35 table's for this config: none missing, none that
    the config's layer kinds do not have (a full-attention tensor in a linear-attention layer)."""
    table = qwen35.gguf_table(cfg, n_nextn)
    missing = sorted(qwen35.required_tensors(cfg, n_nextn) - {p.name for p in plans})
    if missing:
        raise QwythosError(
            f"{where} lacks {len(missing)} tensor(s) a Qwen3.5 model needs (first: {missing[0]})",
            "the checkpoint is incomplete; download all its safetensors shards",
        )
    extra = [p for p in plans if p.name not in table]
    if extra:
        raise QwythosError(
            f"{where}: tensor {extra[0].source} does not fit config.json's layer_types "
            f"({len(extra)} such tensor(s); it would be {extra[0].name})",
            "use the config.json that came with these weights",
        )


def _nonfinite_warning(found: dict[str, int]) -> str:
    first, n = next(iter(found.items()))
    return (
        f"{len(found)} tensor(s) hold NaN or Inf values ({sum(found.values())} in all; first {first}, {n}): "
        "llama.cpp will compute NaN wherever they are used; check the checkpoint's download or training run"
    )
