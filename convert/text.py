"""safetensors checkpoint (folder or Hub id) -> GGUF, faithful to llama.cpp's converter, streaming."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from qwythos.core import qwen35
from qwythos.core.checkpoint import open_checkpoint
from qwythos.core.errors import QwythosError
from qwythos.core.fileio import check_free_space, check_output_path
from qwythos.core.gguf_file import encode_header, normalize_kv, write_gguf

RESTORE_HINT = "`qwythos mtp restore` can give the head back"


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


def default_output(name: str, outtype: str) -> Path:
    return Path.cwd() / f"{name}-{outtype.upper()}.gguf"


def _expected_names(cfg: qwen35.TextConfig, n_nextn: int) -> set[str]:
    """The GGUF tensors a complete qwen35 trunk (+ nextn blocks) must have."""
    names = {"token_embd.weight", "output_norm.weight"} | (set() if cfg.tie_embeddings else {"output.weight"})
    common = (
        "attn_norm.weight",
        "post_attention_norm.weight",
        "ffn_gate.weight",
        "ffn_up.weight",
        "ffn_down.weight",
    )
    full = (
        "attn_q.weight",
        "attn_k.weight",
        "attn_v.weight",
        "attn_output.weight",
        "attn_q_norm.weight",
        "attn_k_norm.weight",
    )
    linear = (
        "attn_qkv.weight",
        "attn_gate.weight",
        "ssm_beta.weight",
        "ssm_alpha.weight",
        "ssm_a",
        "ssm_dt.bias",
        "ssm_conv1d.weight",
        "ssm_norm.weight",
        "ssm_out.weight",
    )
    for i, kind in enumerate(cfg.layer_types):
        names |= {f"blk.{i}.{n}" for n in common + (linear if kind == "linear_attention" else full)}
    for k in range(n_nextn):
        names |= {f"blk.{cfg.n_layer + k}.{n}" for n in common + full}
    if n_nextn:
        names |= {
            f"blk.{cfg.n_layer}.nextn.{n}.weight" for n in ("eh_proj", "enorm", "hnorm", "shared_head_norm")
        }
    return names


def convert(
    src: str | Path,
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
    missing = sorted(_expected_names(cfg, n_nextn) - {p.name for p in plans})
    if missing:
        raise QwythosError(
            f"{ckpt.path} lacks {len(missing)} tensor(s) a Qwen3.5 model needs (first: {missing[0]})",
            "the checkpoint is incomplete; download all its safetensors shards",
        )
    skipped = sum(1 for n in ckpt.tensor_names() if qwen35.hf_text_name(n) is None)
    if skipped:
        notes.append(f"vision tower left out ({skipped} tensors): this is a text-only GGUF")

    base = name or (ckpt.hub_id.split("/")[-1] if ckpt.hub_id else ckpt.path.name)
    out_path = Path(out) if out is not None else default_output(base, outtype)
    check_output_path(out_path, force=force)
    kvs = qwen35.metadata(cfg, ckpt, n_nextn=n_nextn, outtype=outtype, name=name)
    header_len = len(encode_header(normalize_kv(qwen35.ARCH, kvs), plans))
    check_free_space(out_path.parent, header_len + sum(p.nbytes + 32 for p in plans), what=str(out_path))
    size = write_gguf(out_path, qwen35.ARCH, kvs, plans, progress=progress)
    return ConvertResult(
        output=out_path,
        source=ckpt.path,
        hub_id=ckpt.hub_id,
        outtype=outtype,
        arch=qwen35.ARCH,
        n_layer=cfg.n_layer,
        block_count=cfg.n_layer + n_nextn,
        nextn_layers=n_nextn,
        mtp=state,
        n_tensors=len(plans),
        tensors_copied=sum(1 for p in plans if p.raw is not None),
        skipped_vision_tensors=skipped,
        bytes_written=size,
        seconds=round(time.perf_counter() - t0, 3),
        notes=notes,
    )
