"""What an mmproj (vision projector) GGUF holds, read from its header, and finding one beside a model.

An mmproj is a GGUF of architecture `clip` (llama.cpp's libmtmd loads it next to the text model).
`read_mmproj_summary` describes one (encoder, projector, image size, patch size, bytes by type) and
refuses anything else with one message; `check_pair` refuses a projector made for another model
(its output width must equal the text model's embedding width); `find_mmproj` picks the
`mmproj*.gguf` lying beside a model file, as the exports and `run` do when no `--mmproj` is given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from qwythos.core.errors import QwythosError
from qwythos.core.gguf.file import GGUFHeader, file_type_name, ggml_type_name, read_header
from qwythos.core.gguf.view import GGUFView, _as_int

MMPROJ_ARCH = "clip"
MMPROJ_GLOB = "mmproj*.gguf"


@dataclass
class MmprojSummary:
    path: Path
    file_size: int
    name: str | None
    file_type: str | None  # "F16", "Q8_0", ...
    projector_type: str  # "qwen3vl_merger" for Qwen3.5
    has_vision_encoder: bool
    image_size: int | None
    patch_size: int | None
    spatial_merge_size: int | None
    embedding_length: int | None  # the tower's width
    feed_forward_length: int | None
    block_count: int | None
    head_count: int | None
    projection_dim: int | None  # the text model's width the projector outputs
    image_mean: list[float] = field(default_factory=list)
    image_std: list[float] = field(default_factory=list)
    n_tensors: int = 0
    tensors_by_type: dict[str, int] = field(default_factory=dict)
    bytes_by_type: dict[str, int] = field(default_factory=dict)

    @property
    def encoder(self) -> str:
        """One line: the vision encoder's shape."""
        return (
            f"ViT, {self.block_count} blocks, width {self.embedding_length}, "
            f"{self.head_count} heads, FFN {self.feed_forward_length}"
        )

    @property
    def tensor_bytes(self) -> int:
        return sum(self.bytes_by_type.values())


def is_mmproj(hdr: GGUFHeader) -> bool:
    return hdr.kv.get("general.architecture") == MMPROJ_ARCH


def summarize(hdr: GGUFHeader) -> MmprojSummary:
    """The description of an already-read clip header."""
    kv = hdr.kv

    def u(key: str) -> int | None:
        return _as_int(kv.get(key))

    by_count: dict[str, int] = {}
    by_bytes: dict[str, int] = {}
    for t in hdr.tensors:
        n = ggml_type_name(t.ggml_type)
        by_count[n] = by_count.get(n, 0) + 1
        by_bytes[n] = by_bytes.get(n, 0) + t.nbytes
    ft = kv.get("general.file_type")
    return MmprojSummary(
        path=hdr.path,
        file_size=hdr.file_size,
        name=kv.get("general.name"),
        file_type=file_type_name(ft) if isinstance(ft, int) else None,
        projector_type=str(kv.get("clip.projector_type") or kv.get("clip.vision.projector_type") or "?"),
        has_vision_encoder=bool(kv.get("clip.has_vision_encoder", False)),
        image_size=u("clip.vision.image_size"),
        patch_size=u("clip.vision.patch_size"),
        spatial_merge_size=u("clip.vision.spatial_merge_size"),
        embedding_length=u("clip.vision.embedding_length"),
        feed_forward_length=u("clip.vision.feed_forward_length"),
        block_count=u("clip.vision.block_count"),
        head_count=u("clip.vision.attention.head_count"),
        projection_dim=u("clip.vision.projection_dim"),
        image_mean=[float(x) for x in kv.get("clip.vision.image_mean") or []],
        image_std=[float(x) for x in kv.get("clip.vision.image_std") or []],
        n_tensors=len(hdr.tensors),
        tensors_by_type=dict(sorted(by_count.items())),
        bytes_by_type=dict(sorted(by_bytes.items(), key=lambda kv_: -kv_[1])),
    )


def read_mmproj_summary(path: str | Path) -> MmprojSummary:
    """Describe an mmproj file; a GGUF of another kind (or not a GGUF) gets one clear message."""
    path = Path(path)
    hdr = read_header(path)
    arch = hdr.kv.get("general.architecture")
    if arch != MMPROJ_ARCH:
        raise QwythosError(
            f"{path} is a {arch!r} GGUF, not a vision projector (an mmproj GGUF has architecture 'clip')",
            "pass the mmproj file (`qwythos convert SRC -o MODEL.gguf --mmproj MMPROJ.gguf` writes one)",
        )
    s = summarize(hdr)
    if not s.has_vision_encoder:
        raise QwythosError(
            f"{path} is a projector without a vision encoder (audio only?)", "pass a vision mmproj file"
        )
    return s


def model_embedding_length(model: str | Path) -> int | None:
    """The text model's embedding width from its GGUF header (None if it does not say)."""
    return GGUFView(read_header(model)).embedding_length


def check_pair(model: str | Path, mmproj: MmprojSummary) -> None:
    """Refuse a projector whose output width differs from the text model's embedding width."""
    width = model_embedding_length(model)
    if width is not None and mmproj.projection_dim is not None and width != mmproj.projection_dim:
        raise QwythosError(
            f"{mmproj.path} projects images to width {mmproj.projection_dim}, but {model} has embedding "
            f"width {width}: the projector belongs to another model",
            "use the mmproj converted from the same checkpoint as the model",
        )


def find_mmproj(model_path: str | Path) -> Path | None:
    """The `mmproj*.gguf` beside `model_path` that is a clip GGUF (None when there is none).

    More than one is a QwythosError naming them (pass --mmproj to choose)."""
    model_path = Path(model_path)
    folder = model_path.parent
    found = []
    for p in sorted(folder.glob(MMPROJ_GLOB)):
        if not p.is_file() or p.resolve() == model_path.resolve():
            continue
        try:
            if is_mmproj(read_header(p)):
                found.append(p)
        except QwythosError:  # not a GGUF, truncated: not a projector
            continue
    if not found:
        return None
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise QwythosError(
            f"{folder} holds {len(found)} vision projectors ({names}) beside {model_path.name}",
            "choose one with --mmproj FILE",
        )
    return found[0]


@dataclass
class ProjectorChoice:
    """The vision projector an export or a run uses, and how it was chosen."""

    path: Path
    how: str  # "--mmproj" | "found beside the model"
    summary: MmprojSummary

    @property
    def note(self) -> str:
        return f"vision projector: {self.path.name} ({self.how})"


def choose_mmproj(model: str | Path, explicit: str | Path | None = None) -> ProjectorChoice | None:
    """`explicit` (--mmproj), else the mmproj*.gguf beside `model`; checked against the model's width.
    None when no projector is given or found."""
    if explicit is not None:
        path, how = Path(explicit), "--mmproj"
    else:
        found = find_mmproj(model)
        if found is None:
            return None
        path, how = found, "found beside the model"
    summary = read_mmproj_summary(path)
    check_pair(model, summary)
    return ProjectorChoice(path, how, summary)
