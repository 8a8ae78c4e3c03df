"""What an mmproj (vision projector) GGUF holds, read from its header, and finding one beside a model.

An mmproj is a GGUF of architecture `clip` (llama.cpp's libmtmd loads it next to the text model).
`read_mmproj_summary` describes one from its header view (encoder, projector, image size, patch
size, bytes by type) and refuses anything else with one message; `check_pair` refuses a projector
made for another model (its output width must equal the text model's embedding width);
`find_mmproj` picks the `mmproj*.gguf` lying beside a model file, as the exports and `run` do when
no `--mmproj` is given. Each takes a view already read, or a path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from gguf import Keys

from qwythos.core.errors import QwythosError
from qwythos.core.gguf.file import GGUFHeader
from qwythos.core.gguf.view import GGUFView, _as_int, as_view, read_view

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


def is_mmproj(src: GGUFView | GGUFHeader) -> bool:
    """The header is a vision projector's (architecture `clip`)."""
    return src.kv.get(Keys.General.ARCHITECTURE) == MMPROJ_ARCH


def read_mmproj_summary(src: GGUFView | str | Path) -> MmprojSummary:
    """Describe an mmproj file from its view (read from the path when given one); a GGUF of another
    kind (or not a GGUF) gets one clear message."""
    view = as_view(src)
    if not is_mmproj(view):
        raise QwythosError(
            f"{view.path} is a {view.kv.get(Keys.General.ARCHITECTURE)!r} GGUF, not a vision projector "
            "(an mmproj GGUF has architecture 'clip')",
            "pass the mmproj file (`qwythos convert SRC -o MODEL.gguf --mmproj MMPROJ.gguf` writes one)",
        )
    kv = view.kv

    def u(key: str) -> int | None:
        return _as_int(kv.get(key))

    s = MmprojSummary(
        path=view.path,
        file_size=view.file_size,
        name=view.name,
        file_type=view.file_type_name,
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
        n_tensors=len(view.tensors),
        tensors_by_type=dict(sorted(view.tensors_by_type.items())),
        bytes_by_type=dict(sorted(view.bytes_by_type.items(), key=lambda kv_: -kv_[1])),
    )
    if not s.has_vision_encoder:
        raise QwythosError(
            f"{view.path} is a projector without a vision encoder (audio only?)", "pass a vision mmproj file"
        )
    return s


def check_pair(model: GGUFView | str | Path, mmproj: MmprojSummary) -> None:
    """Refuse a projector whose output width differs from the text model's embedding width."""
    view = as_view(model)
    width = view.embedding_length
    if width is not None and mmproj.projection_dim is not None and width != mmproj.projection_dim:
        raise QwythosError(
            f"{mmproj.path} projects images to width {mmproj.projection_dim}, but {view.path} has embedding "
            f"width {width}: the projector belongs to another model",
            "use the mmproj converted from the same checkpoint as the model",
        )


def _projector_beside(model_path: Path) -> GGUFView | None:
    """The view of the `mmproj*.gguf` beside `model_path` that is a clip GGUF (None when none is)."""
    folder = model_path.parent
    found = []
    for p in sorted(folder.glob(MMPROJ_GLOB)):
        if not p.is_file() or p.resolve() == model_path.resolve():
            continue
        try:
            view = read_view(p)
        except QwythosError:  # not a GGUF, truncated: not a projector
            continue
        if is_mmproj(view):
            found.append(view)
    if not found:
        return None
    if len(found) > 1:
        names = ", ".join(v.path.name for v in found)
        raise QwythosError(
            f"{folder} holds {len(found)} vision projectors ({names}) beside {model_path.name}",
            "choose one with --mmproj FILE",
        )
    return found[0]


def find_mmproj(model_path: str | Path) -> Path | None:
    """The `mmproj*.gguf` beside `model_path` that is a clip GGUF (None when there is none).

    More than one is a QwythosError naming them (pass --mmproj to choose)."""
    view = _projector_beside(Path(model_path))
    return view.path if view is not None else None


@dataclass
class ProjectorChoice:
    """The vision projector an export or a run uses, and how it was chosen."""

    path: Path
    how: str  # "--mmproj" | "found beside the model"
    summary: MmprojSummary

    @property
    def note(self) -> str:
        return f"vision projector: {self.path.name} ({self.how})"


def choose_mmproj(model: GGUFView | str | Path, explicit: str | Path | None = None) -> ProjectorChoice | None:
    """`explicit` (--mmproj), else the mmproj*.gguf beside `model`; checked against the model's width
    (from its view when given one: no header is read twice). None when no projector is given or found."""
    if explicit is not None:
        view, how = read_view(explicit), "--mmproj"
    else:
        found = _projector_beside(model.path if isinstance(model, GGUFView) else Path(model))
        if found is None:
            return None
        view, how = found, "found beside the model"
    summary = read_mmproj_summary(view)
    check_pair(model, summary)
    return ProjectorChoice(view.path, how, summary)
