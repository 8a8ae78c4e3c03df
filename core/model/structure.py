"""What a qwen35 GGUF must hold, tensor by tensor, and a structural check of a file from its header.

Structural only: names, shapes and types read from the header; nothing is loaded or measured
(the measured acceptance gate is mtp/validate.py; an HF folder's head is mtp/hf_check.py).

The expected tensors come from the qwen35 table (core/model/qwen35.py): the trunk's blocks by
`layer_types` (read back from `attention.recurrent_layers`), and the MTP (nextn) block
`blk.{n_layer}` (n_layer = block_count - nextn_predict_layers): a full-attention decoder block (gated
Q) plus the nextn tensors. Shapes are numpy order (rows, cols), the reverse of ggml's ne;
llama.cpp's loader (src/models/qwen35.cpp) is the reference for what is required.

- `check_model(path)`: the whole file, as `qwythos inspect` and a failed llama.cpp load report it.
- `check_structure(path)`: the MTP head only, as `qwythos mtp validate` reports it.
Both run one per-tensor check (present, shape, known type, F32 norms).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gguf import GGMLQuantizationType, Keys

from qwythos.core.errors import QwythosError
from qwythos.core.gguf.file import GGUFHeader
from qwythos.core.gguf.view import RECURRENT_LAYERS, GGUFView, read_view
from qwythos.core.model import qwen35
from qwythos.core.model.arch import ARCH, ARCHS, describe_arch
from qwythos.core.model.hparams import HeadIssue, check_hparams


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


def head_table(d: HeadDims) -> dict[str, tuple[tuple[int, ...], bool]]:
    """Block-relative tensor name -> (numpy shape, required), from the qwen35 table's nextn block."""
    return {n: (qwen35.gguf_shape(r, d), r.required) for n, r in qwen35.block_rules("nextn").items()}


# tensors a stand-alone MTP GGUF carries besides the block (llama.cpp's convert --mtp keeps these)
STANDALONE_GLOBALS = ("output.weight", "token_embd.weight", "output_norm.weight")
# the head's matrices (they take the head's type); everything else in the block stays F32
HEAD_MATRICES = frozenset(
    n
    for n, r in qwen35.block_rules("nextn").items()
    if not qwen35.stays_f32(n, r, qwen35.gguf_shape(r, HeadDims("", 2, 2, 2, 2, 2, 2)))
)


def split_block_name(name: str) -> tuple[int, str] | None:
    """'blk.32.attn_q.weight' -> (32, 'attn_q.weight')."""
    if not name.startswith("blk."):
        return None
    idx, _, rest = name[4:].partition(".")
    return (int(idx), rest) if idx.isdecimal() and rest else None


def _view(src: GGUFHeader | GGUFView | str | Path) -> GGUFView:
    if isinstance(src, GGUFView):
        return src
    if isinstance(src, GGUFHeader):
        return GGUFView(src)
    return read_view(src)


def dims_from_header(hdr: GGUFHeader | GGUFView) -> HeadDims:
    """The trunk's sizes from a GGUF's metadata and token embedding."""
    v = _view(hdr)
    try:
        emb = v.by_name["token_embd.weight"]
        n_embd, n_head = v.get_int(Keys.LLM.EMBEDDING_LENGTH), v.get_int(Keys.Attention.HEAD_COUNT)
        fields = {
            Keys.LLM.EMBEDDING_LENGTH: n_embd,
            Keys.Attention.HEAD_COUNT: n_head,
            Keys.Attention.HEAD_COUNT_KV: v.get_int(Keys.Attention.HEAD_COUNT_KV),
            Keys.LLM.FEED_FORWARD_LENGTH: v.get_int(Keys.LLM.FEED_FORWARD_LENGTH),
        }
        absent = [v.key(k) for k, val in fields.items() if val is None]
        if absent:
            raise KeyError(absent[0])
        return HeadDims(
            arch=v.arch,
            n_embd=n_embd,  # type: ignore[arg-type]
            n_vocab=int(emb.shape[0]),
            n_head=n_head,  # type: ignore[arg-type]
            n_head_kv=fields[Keys.Attention.HEAD_COUNT_KV],  # type: ignore[arg-type]
            head_dim=v.get_int(Keys.Attention.KEY_LENGTH) or n_embd // n_head,  # type: ignore[operator]
            n_ff=fields[Keys.LLM.FEED_FORWARD_LENGTH],  # type: ignore[arg-type]
        )
    except (KeyError, TypeError, ZeroDivisionError) as e:
        raise QwythosError(
            f"{v.path} lacks the metadata or tensor {e} that a {ARCH} model has",
            "pass a GGUF converted from a Qwen3.5 checkpoint",
        ) from None


def n_trunk_layers(hdr: GGUFHeader | GGUFView) -> int:
    """block_count minus the nextn layers (the index of the first nextn block)."""
    return _view(hdr).n_trunk or 0


def has_trunk(hdr: GGUFHeader | GGUFView) -> bool:
    return _view(hdr).has_trunk


Issue = HeadIssue


def _type_name(t: int) -> str | None:
    try:
        return GGMLQuantizationType(t).name
    except ValueError:
        return None


def _check_tensors(
    v: GGUFView,
    expected: dict[str, tuple[tuple[int, ...], bool]],
    issues: list[HeadIssue],
    rows: list[dict[str, Any]] | None = None,
) -> None:
    """Each expected tensor (full name -> (shape, required)): present, of that shape, of a type
    llama.cpp knows, and F32 when 1-D (norms, biases)."""
    for name, (shape, required) in expected.items():
        t = v.by_name.get(name)
        if t is None:
            if required:
                issues.append(HeadIssue(name, "is missing", absent=True))
            continue
        tname = _type_name(t.ggml_type)
        if rows is not None:
            rows.append({"name": name, "shape": list(t.shape), "type": tname or f"type{t.ggml_type}"})
        if tname is None:
            issues.append(HeadIssue(name, f"has unknown GGML type id {t.ggml_type}"))
        if tuple(t.shape) != shape:
            issues.append(HeadIssue(name, f"has shape {list(t.shape)}, expected {list(shape)}"))
        elif len(shape) == 1 and tname is not None and t.ggml_type != GGMLQuantizationType.F32:
            issues.append(HeadIssue(name, f"is {tname}; norms must be F32"))


# ---------------------------------------------------------------- the whole file


def check_model(src: GGUFHeader | GGUFView | str | Path) -> list[HeadIssue]:
    """Everything llama.cpp's qwen35 loader needs, checked from the header: the architecture, the
    metadata every shape is read against, every trunk tensor (and the nextn block's when declared)
    present with its shape and a known type, and no tensor the loader would not take. [] = sound.

    A stand-alone MTP GGUF (no `blk.0.attn_norm.weight`) is checked for its globals and block only,
    as llama.cpp marks the trunk optional there.
    """
    v = _view(src)
    issues: list[HeadIssue] = []
    if v.arch not in ARCHS:
        issues.append(
            HeadIssue(Keys.General.ARCHITECTURE, f"says {describe_arch(v)}, expected {' / '.join(ARCHS)}")
        )
        return issues
    issues = check_hparams(v)  # the sizes first: nothing below is built from an unchecked count
    if issues:
        return issues
    try:
        cfg = qwen35.config_from_gguf(v)
    except QwythosError as e:
        issues.append(HeadIssue("metadata", e.message.removeprefix(f"{v.path} "), absent=True))
        return issues
    n_nextn, il = v.n_nextn, cfg.n_layer
    if n_nextn and not v.nextn_tensors:
        issues.append(
            HeadIssue(
                v.key(Keys.LLM.NEXTN_PREDICT_LAYERS),
                f"is {n_nextn} but the file has no blk.{il}.nextn.* tensors (llama.cpp refuses it; "
                "`qwythos mtp restore` gives the head back, or convert with --no-mtp)",
                absent=True,
            )
        )
    elif not n_nextn and v.nextn_tensors:
        issues.append(
            HeadIssue(
                v.key(Keys.LLM.NEXTN_PREDICT_LAYERS),
                f"is 0 but the file has nextn tensors ({v.nextn_tensors[0]} ...)",
                absent=True,
            )
        )
    table = qwen35.gguf_table(cfg, n_nextn if v.nextn_tensors else 0)
    standalone = bool(n_nextn) and not v.has_trunk
    expected: dict[str, tuple[tuple[int, ...], bool]] = {}
    for name, rule in table.items():
        sb = split_block_name(name)
        if standalone and sb is not None and sb[0] < il:
            continue  # a stand-alone head: llama.cpp marks the trunk's tensors optional
        expected[name] = (qwen35.gguf_shape(rule, cfg), rule.required)
    _check_tensors(v, expected, issues)
    for t in v.tensors:
        if t.name not in table:
            issues.append(
                HeadIssue(
                    t.name, f"is not part of a {ARCH} model of {il} layers (llama.cpp would refuse the file)"
                )
            )
    return issues


# ---------------------------------------------------------------- the MTP head


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
    v = read_view(path)
    arch = v.arch or "?"
    issues: list[HeadIssue] = []
    if v.arch not in ARCHS:
        issues.append(
            HeadIssue(Keys.General.ARCHITECTURE, f"says {describe_arch(v)}, expected {' / '.join(ARCHS)}")
        )
        return StructureReport(str(path), arch, "?", 0, 0, None, issues=issues)
    issues += check_hparams(v)
    if issues:
        return StructureReport(str(path), arch, "?", v.block_count or 0, v.n_nextn, None, issues=issues)
    block_count = v.block_count or 0
    n_nextn = v.n_nextn
    trunk_present = v.has_trunk
    kind = "trunk+head" if trunk_present and n_nextn else ("stand-alone head" if n_nextn else "trunk only")
    rep = StructureReport(str(path), arch, kind, block_count, n_nextn, None, issues=issues)
    nextn_key = v.key(Keys.LLM.NEXTN_PREDICT_LAYERS)
    if n_nextn == 0:
        issues.append(HeadIssue(nextn_key, "is absent or 0: the file has no MTP head"))
        return rep
    if n_nextn != 1:
        issues.append(HeadIssue(nextn_key, f"is {n_nextn}; llama.cpp's qwen35 runs exactly 1"))
    il = block_count - n_nextn
    rep.head_block = il
    rec = v.recurrent_layers
    rec_key = v.key(RECURRENT_LAYERS)
    if rec is not None:
        if len(rec) != block_count:
            issues.append(HeadIssue(rec_key, f"has {len(rec)} entries for {block_count} blocks"))
        elif any(rec[il:]):
            issues.append(HeadIssue(rec_key, f"marks MTP block {il} as recurrent"))
    trunk_view = read_view(trunk) if trunk is not None else None
    own = dims_from_header(v)
    dims = dims_from_header(trunk_view) if trunk_view is not None else own
    if trunk_view is not None and own != dims:
        issues.append(HeadIssue("metadata", f"sizes {asdict(own)} differ from the trunk's {asdict(dims)}"))
    table = head_table(dims)
    _check_tensors(v, {f"blk.{il}.{rel}": spec for rel, spec in table.items()}, issues, rep.tensors)
    for t in v.tensors:
        sb = split_block_name(t.name)
        if sb and sb[0] >= il and sb[1] not in table:
            issues.append(HeadIssue(t.name, "is not part of a qwen35 MTP block"))
    if not trunk_present:
        needed = ["token_embd.weight", "output_norm.weight"]
        if trunk_view is not None and "output.weight" in trunk_view.by_name:
            needed.append("output.weight")  # untied output: without it llama.cpp would use token_embd
        for g in needed:
            if g not in v.by_name:
                issues.append(HeadIssue(g, "is missing (a stand-alone head needs it)", absent=True))
    return rep
