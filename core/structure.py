"""What a qwen35 MTP (nextn) block must look like in a GGUF, and a structural check of a file's head.

The head is block `blk.{n_layer}` (n_layer = block_count - nextn_predict_layers): a full-attention
decoder block (gated Q) plus the nextn tensors. Shapes are numpy order (rows, cols), i.e. the reverse
of ggml's ne; llama.cpp's loader (src/models/qwen35.cpp, load_block_mtp) is the reference.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gguf import GGMLQuantizationType

from qwythos.core.errors import QwythosError
from qwythos.core.gguf_file import GGUFHeader, read_header

ARCH = "qwen35"


@dataclass(frozen=True)
class HeadDims:
    """The sizes a head must agree with (taken from a trunk or from the head itself)."""

    arch: str
    n_embd: int
    n_vocab: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int


# block-relative name -> (shape from dims, must stay F32 / 1-D, required)
def head_table(d: HeadDims) -> dict[str, tuple[tuple[int, ...], bool]]:
    """Block-relative tensor name -> (numpy shape, required). Optional ones may be absent."""
    h, hd = d.n_embd, d.head_dim
    return {
        "attn_norm.weight": ((h,), True),
        "post_attention_norm.weight": ((h,), True),
        "attn_q.weight": ((d.n_head * hd * 2, h), True),
        "attn_k.weight": ((d.n_head_kv * hd, h), True),
        "attn_v.weight": ((d.n_head_kv * hd, h), True),
        "attn_output.weight": ((h, d.n_head * hd), True),
        "attn_q_norm.weight": ((hd,), True),
        "attn_k_norm.weight": ((hd,), True),
        "ffn_gate.weight": ((d.n_ff, h), True),
        "ffn_up.weight": ((d.n_ff, h), True),
        "ffn_down.weight": ((h, d.n_ff), True),
        "nextn.eh_proj.weight": ((h, 2 * h), True),
        "nextn.enorm.weight": ((h,), True),
        "nextn.hnorm.weight": ((h,), True),
        "nextn.shared_head_norm.weight": ((h,), False),
        "nextn.embed_tokens.weight": ((d.n_vocab, h), False),
        "nextn.shared_head_head.weight": ((d.n_vocab, h), False),
    }


# tensors a stand-alone MTP GGUF carries besides the block (llama.cpp's convert --mtp keeps these)
STANDALONE_GLOBALS = ("output.weight", "token_embd.weight", "output_norm.weight")
# 1-D tensors are always F32 in llama.cpp's files
HEAD_MATRICES = frozenset(
    n for n in head_table(HeadDims("", 1, 1, 1, 1, 1, 1)) if not n.endswith("norm.weight")
)


def split_block_name(name: str) -> tuple[int, str] | None:
    """'blk.32.attn_q.weight' -> (32, 'attn_q.weight')."""
    if not name.startswith("blk."):
        return None
    idx, _, rest = name[4:].partition(".")
    return (int(idx), rest) if idx.isdecimal() and rest else None


def dims_from_header(hdr: GGUFHeader) -> HeadDims:
    """The trunk's sizes from a GGUF's metadata and token embedding."""
    kv = hdr.kv
    arch = str(kv.get("general.architecture", "?"))
    try:
        emb = next(t for t in hdr.tensors if t.name == "token_embd.weight")
        return HeadDims(
            arch=arch,
            n_embd=int(kv[f"{arch}.embedding_length"]),
            n_vocab=int(emb.shape[0]),
            n_head=int(kv[f"{arch}.attention.head_count"]),
            n_head_kv=int(kv[f"{arch}.attention.head_count_kv"]),
            head_dim=int(
                kv.get(f"{arch}.attention.key_length")
                or kv[f"{arch}.embedding_length"] // kv[f"{arch}.attention.head_count"]
            ),
            n_ff=int(kv[f"{arch}.feed_forward_length"]),
        )
    except (KeyError, StopIteration, TypeError) as e:
        raise QwythosError(
            f"{hdr.path} lacks the metadata or tensor {e} that a {ARCH} model has",
            "pass a GGUF converted from a Qwen3.5 checkpoint",
        ) from None


def n_trunk_layers(hdr: GGUFHeader) -> int:
    arch = hdr.kv.get("general.architecture")
    return int(hdr.kv[f"{arch}.block_count"]) - int(hdr.kv.get(f"{arch}.nextn_predict_layers", 0) or 0)


def has_trunk(hdr: GGUFHeader) -> bool:
    return any(t.name == "blk.0.attn_norm.weight" for t in hdr.tensors)


@dataclass
class HeadIssue:
    tensor: str
    problem: str


@dataclass
class StructureReport:
    path: str
    arch: str
    kind: str  # "trunk+head" | "stand-alone head" | "trunk only"
    block_count: int
    nextn_predict_layers: int
    head_block: int | None
    tensors: list[dict[str, Any]] = field(default_factory=list)  # name, shape, type
    issues: list[HeadIssue] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.issues and self.nextn_predict_layers > 0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def check_structure(path: str | Path, *, trunk: str | Path | None = None) -> StructureReport:
    """Check a GGUF's MTP head: metadata, every tensor's presence, shape and type.

    `trunk`: for a stand-alone head, the trunk it drafts for (its sizes must agree).
    """
    hdr = read_header(path)
    kv = hdr.kv
    arch = str(kv.get("general.architecture", "?"))
    issues: list[HeadIssue] = []
    if arch != ARCH:
        issues.append(HeadIssue("general.architecture", f"is {arch!r}, expected {ARCH!r}"))
        return StructureReport(str(path), arch, "?", 0, 0, None, issues=issues)
    block_count = int(kv.get(f"{arch}.block_count", 0))
    n_nextn = int(kv.get(f"{arch}.nextn_predict_layers", 0) or 0)
    trunk_present = has_trunk(hdr)
    kind = "trunk+head" if trunk_present and n_nextn else ("stand-alone head" if n_nextn else "trunk only")
    rep = StructureReport(str(path), arch, kind, block_count, n_nextn, None, issues=issues)
    if n_nextn == 0:
        issues.append(HeadIssue(f"{arch}.nextn_predict_layers", "is absent or 0: the file has no MTP head"))
        return rep
    if n_nextn != 1:
        issues.append(
            HeadIssue(f"{arch}.nextn_predict_layers", f"is {n_nextn}; llama.cpp's qwen35 runs exactly 1")
        )
    il = block_count - n_nextn
    rep.head_block = il
    rec = kv.get(f"{arch}.attention.recurrent_layers")
    if rec is not None:
        if len(rec) != block_count:
            issues.append(
                HeadIssue(
                    f"{arch}.attention.recurrent_layers", f"has {len(rec)} entries for {block_count} blocks"
                )
            )
        elif any(rec[il:]):
            issues.append(
                HeadIssue(f"{arch}.attention.recurrent_layers", f"marks MTP block {il} as recurrent")
            )
    dims = dims_from_header(read_header(trunk)) if trunk is not None else dims_from_header(hdr)
    own = dims_from_header(hdr)
    if trunk is not None and own != dims:
        issues.append(HeadIssue("metadata", f"sizes {asdict(own)} differ from the trunk's {asdict(dims)}"))
    by_name = {t.name: t for t in hdr.tensors}
    for rel, (shape, required) in head_table(dims).items():
        name = f"blk.{il}.{rel}"
        t = by_name.get(name)
        if t is None:
            if required:
                issues.append(HeadIssue(name, "is missing"))
            continue
        rep.tensors.append(
            {"name": name, "shape": list(t.shape), "type": GGMLQuantizationType(t.ggml_type).name}
        )
        if tuple(t.shape) != shape:
            issues.append(HeadIssue(name, f"has shape {list(t.shape)}, expected {list(shape)}"))
        if len(shape) == 1 and t.ggml_type != GGMLQuantizationType.F32:
            issues.append(HeadIssue(name, f"is {GGMLQuantizationType(t.ggml_type).name}; norms must be F32"))
    extra = [
        t.name
        for t in hdr.tensors
        if (sb := split_block_name(t.name)) and sb[0] >= il and sb[1] not in head_table(dims)
    ]
    for name in extra:
        issues.append(HeadIssue(name, "is not part of a qwen35 MTP block"))
    if not trunk_present:
        needed = ["token_embd.weight", "output_norm.weight"]
        if trunk is not None and any(t.name == "output.weight" for t in read_header(trunk).tensors):
            needed.append("output.weight")  # untied output: without it llama.cpp would use token_embd
        for g in needed:
            if g not in by_name:
                issues.append(HeadIssue(g, "is missing (a stand-alone head needs it)"))
    return rep
