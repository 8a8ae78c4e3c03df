"""HF safetensors -> the mmproj vision projector GGUF (arch `clip`, projector `qwen3vl_merger`).

Qwen3.5 keeps Qwen3-VL's vision tower under `model.visual.*`: a conv3d patch embedding (temporal
patch 2), learned position embeddings (bilinearly interpolated by both runtimes), `depth` ViT
blocks with fused qkv and a GELU MLP, and a merger (LayerNorm, then fc1 -> GELU -> fc2) that turns
each 2x2 group of patches into one token of the text model's width.

The file is the one llama.cpp's `convert_hf_to_gguf.py --mmproj` writes for
`Qwen3_5ForConditionalGeneration` (tests/test_mmproj.py checks it byte for byte):
- the conv3d weight [D, C, 2, P, P] becomes two conv2d weights `v.patch_embd.weight` (t=0) and
  `v.patch_embd.weight.1` (t=1), stored F16 in an f16 file and F32 otherwise;
- 1-D tensors, biases and the position embeddings are F32;
- other matrices take the chosen type; q8_0 falls back to F16 for a row length that is not a
  multiple of 32 (the 9B tower's FFN width 4304 is one);
- metadata: the tower's shape, the merge size, the image mean/std of `preprocessor_config.json`,
  the text model's width (`clip.vision.projection_dim`) and its RMS-norm epsilon.
Tensors are written one at a time through core/gguf/file.write_gguf (bounded memory, atomic).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType
from gguf.quants import quantize as gguf_quantize

from qwythos.convert.text import check_room, default_output, written
from qwythos.core.errors import QwythosError
from qwythos.core.fileio import check_output_path
from qwythos.core.gguf.file import (
    KV,
    TensorPlan,
    encode_header,
    normalize_kv,
    pad,
    read_header,
    type_nbytes,
    write_gguf,
)
from qwythos.core.model import qwen35
from qwythos.core.model.checkpoint import (
    Checkpoint,
    TensorInfo,
    check_tensor,
    load_json,
    open_checkpoint,
    to_f32,
)

ARCH = "clip"
PROJECTOR_TYPE = "qwen3vl_merger"
PREPROCESSOR_FILE = "preprocessor_config.json"
DEFAULT_MMPROJ_TYPE = "f16"
# --mmproj-type -> (GGML type of the matrices, general.file_type)
MMPROJ_TYPES: dict[str, tuple[GGMLQuantizationType, int]] = {
    "f32": (GGMLQuantizationType.F32, 0),
    "f16": (GGMLQuantizationType.F16, 1),
    "bf16": (GGMLQuantizationType.BF16, 32),
    "q8_0": (GGMLQuantizationType.Q8_0, 7),
}
VISUAL_PREFIX = "model.visual."
Q8_BLOCK = 32
CHUNK_ROWS_ELEMS = 8 * 2**20

NO_TOWER_HINT = (
    "convert without --mmproj (the text model works alone), or convert the base model "
    "Qwen/Qwen3.5-9B, which has the same tower"
)


@dataclass(frozen=True)
class VisionConfig:
    """The tower's hyper-parameters, from config.json's `vision_config` (and the text width)."""

    depth: int
    n_embd: int
    n_ff: int
    n_head: int
    in_channels: int
    patch_size: int
    temporal_patch: int
    merge: int
    n_pos: int
    out_embd: int
    text_embd: int
    eps: float
    deepstack: tuple[int, ...] = ()

    @property
    def image_size(self) -> int:
        """The image side the position grid was trained on (llama.cpp: sqrt(n_pos) * patch)."""
        return int(self.n_pos**0.5 * self.patch_size)

    @property
    def merged(self) -> int:
        return self.n_embd * self.merge**2


def vision_config_from(config: dict[str, Any], *, where: str = "config.json") -> VisionConfig:
    """Read `vision_config` (Qwen3.5 keys); a config without one gets a clear message."""
    v = config.get("vision_config")
    if not isinstance(v, dict) or not v:
        raise QwythosError(
            f"{where} has no vision_config: this checkpoint has no vision tower", NO_TOWER_HINT
        )
    text_config = config.get("text_config") or {}
    if not isinstance(text_config, dict):
        raise QwythosError(
            f"{where}: text_config is not an object", "use the checkpoint's original config.json"
        )
    text = {**config, **text_config}
    try:
        cfg = VisionConfig(
            depth=int(v["depth"]),
            n_embd=int(v["hidden_size"]),
            n_ff=int(v["intermediate_size"]),
            n_head=int(v["num_heads"]),
            in_channels=int(v.get("in_channels", 3)),
            patch_size=int(v["patch_size"]),
            temporal_patch=int(v.get("temporal_patch_size", 2)),
            merge=int(v.get("spatial_merge_size", 2)),
            n_pos=int(v["num_position_embeddings"]),
            out_embd=int(v["out_hidden_size"]),
            text_embd=int(text["hidden_size"]),
            eps=float(text.get("rms_norm_eps", 1e-6)),
            deepstack=tuple(int(i) for i in v.get("deepstack_visual_indexes") or ()),
        )
    except (KeyError, TypeError, ValueError, OverflowError) as e:
        raise QwythosError(
            f"{where}: vision_config lacks or has a bad field: {e}",
            "use the checkpoint's original config.json",
        ) from e
    sizes = ("depth", "n_embd", "n_ff", "n_head", "in_channels", "patch_size", "merge", "n_pos", "out_embd")
    bad = [k for k in sizes if getattr(cfg, k) <= 0] + ["depth"] * (cfg.depth > qwen35.MAX_LAYERS)
    if bad:
        raise QwythosError(
            f"{where}: vision_config {bad[0]} is {getattr(cfg, bad[0])} (sizes are at least 1, depth at most "
            f"{qwen35.MAX_LAYERS})",
            "use the checkpoint's original config.json",
        )
    if cfg.temporal_patch != 2:
        raise QwythosError(
            f"{where}: vision_config.temporal_patch_size is {cfg.temporal_patch}; llama.cpp's Qwen3-VL "
            "projector only supports 2",
            "this is not a Qwen3.5 vision tower",
        )
    if cfg.deepstack:
        raise QwythosError(
            f"{where}: vision_config has deepstack layers {list(cfg.deepstack)} (a Qwen3-VL tower)",
            "qwythos converts Qwen3.5's tower, which has none; use llama.cpp's convert_hf_to_gguf.py --mmproj",
        )
    if cfg.out_embd != cfg.text_embd:
        raise QwythosError(
            f"{where}: vision_config.out_hidden_size {cfg.out_embd} differs from the text width {cfg.text_embd}",
            "use the checkpoint's original config.json",
        )
    return cfg


def read_preprocessor(folder: Path) -> dict[str, Any]:
    """`preprocessor_config.json` (image mean/std), merged with `processor_config.json` as llama.cpp does."""
    path = folder / PREPROCESSOR_FILE
    if not path.is_file():
        raise QwythosError(
            f"{folder} has no {PREPROCESSOR_FILE} (the image mean/std the projector stores)",
            f"download {PREPROCESSOR_FILE} of the base model (Qwen/Qwen3.5-9B) into {folder}",
        )
    out: dict[str, Any] = {}
    for p in (path, folder / "processor_config.json"):
        if not p.is_file():
            continue
        data = load_json(p, p.name)
        nested = "media_proc_cfg" if p == path else "image_processor"
        inner = data.get(nested) or {} if isinstance(data, dict) else None
        if not isinstance(inner, dict):
            raise QwythosError(f"{p} is not a JSON object of processor settings", f"re-download {p.name}")
        out.update({**data, **inner})
    for key in ("image_mean", "image_std"):
        vals = out.get(key)
        if not (isinstance(vals, list) and len(vals) == 3 and all(isinstance(x, (int, float)) for x in vals)):
            raise QwythosError(
                f"{path}: {key} must be a list of 3 numbers", f"re-download {PREPROCESSOR_FILE}"
            )
    return out


# ---------------------------------------------------------------- tensor table

_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")
# HF name under model.visual. (block part) -> GGUF name under v.blk.N.
_BLOCK_NAMES = {
    "norm1": "ln1",
    "norm2": "ln2",
    "attn.qkv": "attn_qkv",
    "attn.proj": "attn_out",
    "mlp.linear_fc1": "ffn_up",
    "mlp.linear_fc2": "ffn_down",
}
_GLOBAL_NAMES = {
    "patch_embed.proj.bias": "v.patch_embd.bias",
    "pos_embed.weight": "v.position_embd.weight",
    "merger.norm.weight": "v.post_ln.weight",
    "merger.norm.bias": "v.post_ln.bias",
    "merger.linear_fc1.weight": "mm.0.weight",
    "merger.linear_fc1.bias": "mm.0.bias",
    "merger.linear_fc2.weight": "mm.2.weight",
    "merger.linear_fc2.bias": "mm.2.bias",
}
PATCH_WEIGHT = "patch_embed.proj.weight"


def _block_shapes(v: VisionConfig) -> dict[str, tuple[int, ...]]:
    d, f = v.n_embd, v.n_ff
    return {
        "norm1.weight": (d,),
        "norm1.bias": (d,),
        "norm2.weight": (d,),
        "norm2.bias": (d,),
        "attn.qkv.weight": (3 * d, d),
        "attn.qkv.bias": (3 * d,),
        "attn.proj.weight": (d, d),
        "attn.proj.bias": (d,),
        "mlp.linear_fc1.weight": (f, d),
        "mlp.linear_fc1.bias": (f,),
        "mlp.linear_fc2.weight": (d, f),
        "mlp.linear_fc2.bias": (d,),
    }


def hf_shapes(v: VisionConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of the tower (names under model.visual.) with its HF shape."""
    d, p = v.n_embd, v.patch_size
    out: dict[str, tuple[int, ...]] = {
        PATCH_WEIGHT: (d, v.in_channels, v.temporal_patch, p, p),
        "patch_embed.proj.bias": (d,),
        "pos_embed.weight": (v.n_pos, d),
        "merger.norm.weight": (d,),
        "merger.norm.bias": (d,),
        "merger.linear_fc1.weight": (v.merged, v.merged),
        "merger.linear_fc1.bias": (v.merged,),
        "merger.linear_fc2.weight": (v.out_embd, v.merged),
        "merger.linear_fc2.bias": (v.out_embd,),
    }
    for i in range(v.depth):
        out.update({f"blocks.{i}.{k}": s for k, s in _block_shapes(v).items()})
    return out


def gguf_name(short: str) -> str | None:
    """model.visual.<short> -> GGUF name (None: unknown). The patch weight maps to two tensors."""
    if short in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[short]
    m = _BLOCK_RE.match(short)
    if m:
        part, _, kind = m.group(2).rpartition(".")
        if part in _BLOCK_NAMES and kind in ("weight", "bias"):
            return f"v.blk.{m.group(1)}.{_BLOCK_NAMES[part]}.{kind}"
    return None


def tensor_type(name: str, shape: tuple[int, ...], mmproj_type: str) -> GGMLQuantizationType:
    """The GGML type llama.cpp's converter gives GGUF tensor `name` of numpy `shape`."""
    big = MMPROJ_TYPES[mmproj_type][0]
    if name.startswith("v.patch_embd.weight"):
        return GGMLQuantizationType.F16 if big == GGMLQuantizationType.F16 else GGMLQuantizationType.F32
    if len(shape) <= 1 or not name.endswith(".weight") or name == "v.position_embd.weight":
        return GGMLQuantizationType.F32
    if big == GGMLQuantizationType.Q8_0 and shape[-1] % Q8_BLOCK:
        return GGMLQuantizationType.F16
    return big


@dataclass(frozen=True)
class ProjectorTensor:
    name: str
    shape: tuple[int, ...]  # numpy order
    ggml_type: GGMLQuantizationType
    nbytes: int


def projector_tensors(v: VisionConfig, mmproj_type: str = DEFAULT_MMPROJ_TYPE) -> list[ProjectorTensor]:
    """The projector's GGUF tensors from the config alone (for `plan`): names, shapes, types, bytes."""
    _check_type(mmproj_type)
    out = []
    for short, shape in hf_shapes(v).items():
        if short == PATCH_WEIGHT:
            pieces = [
                ("v.patch_embd.weight", shape[:2] + shape[3:]),
                ("v.patch_embd.weight.1", shape[:2] + shape[3:]),
            ]
        else:
            pieces = [(gguf_name(short) or short, shape)]
        for name, s in pieces:
            t = tensor_type(name, s, mmproj_type)
            out.append(ProjectorTensor(name, s, t, type_nbytes(t, s)))
    return out


def _check_type(mmproj_type: str) -> None:
    if mmproj_type not in MMPROJ_TYPES:
        raise QwythosError(f"unknown --mmproj-type {mmproj_type}", f"use one of {', '.join(MMPROJ_TYPES)}")


# ---------------------------------------------------------------- encoding


def encode(x: np.ndarray, t: GGMLQuantizationType) -> np.ndarray:
    """float32 data in the on-disk form of GGML type `t` (gguf-py's encoders, as llama.cpp's converter)."""
    return gguf_quantize(np.ascontiguousarray(x, dtype=np.float32), t)


def _rows_chunks(
    ckpt: Checkpoint, info: TensorInfo, t: GGMLQuantizationType, select: Callable[[np.ndarray], np.ndarray]
) -> Iterator[np.ndarray]:
    """The tensor's bytes a block of rows at a time (the 9B merger fc1 is 21M values)."""
    a = ckpt.read(info.name)
    rows = max(1, CHUNK_ROWS_ELEMS // max(1, info.numel // max(1, info.shape[0])))
    for r0 in range(0, info.shape[0], rows):
        yield encode(select(to_f32(np.asarray(a[r0 : r0 + rows]), info.dtype)), t)


@dataclass
class MmprojResult:
    output: Path
    source: Path
    hub_id: str | None
    mmproj_type: str
    projector: str
    depth: int
    embedding_length: int
    projection_dim: int
    image_size: int
    patch_size: int
    n_tensors: int
    bytes_written: int
    seconds: float
    notes: list[str] = field(default_factory=list)


def plan_mmproj(ckpt: Checkpoint, v: VisionConfig, mmproj_type: str) -> list[TensorPlan]:
    """The projector's tensors in llama.cpp's order (checkpoint order), each with its loader."""
    _check_type(mmproj_type)
    shapes = hf_shapes(v)
    visual = [n for n in ckpt.tensor_names() if n.startswith(VISUAL_PREFIX)]
    if not visual:
        raise QwythosError(
            f"{ckpt.path}: the safetensors carry no {VISUAL_PREFIX}* tensors (a text-only checkpoint)",
            NO_TOWER_HINT,
        )
    missing = sorted(set(shapes) - {n[len(VISUAL_PREFIX) :] for n in visual})
    if missing:
        raise QwythosError(
            f"{ckpt.path} lacks {len(missing)} vision tensor(s) config.json implies (first: {VISUAL_PREFIX}{missing[0]})",
            "the checkpoint is incomplete; download all its safetensors shards",
        )
    plans: list[TensorPlan] = []
    for hf in visual:
        info = ckpt.tensor_info(hf)
        short = hf[len(VISUAL_PREFIX) :]
        if short not in shapes:
            raise QwythosError(
                f"{info.file}: tensor {hf} is not part of a Qwen3.5 vision tower of this config",
                "check that this is an unmodified Qwen3.5 checkpoint and its config.json",
            )
        check_tensor(info, shapes[short])
        if short == PATCH_WEIGHT:
            pieces = [("v.patch_embd.weight", 0), ("v.patch_embd.weight.1", 1)]
        else:
            pieces = [(gguf_name(short) or short, None)]
        for name, t_idx in pieces:
            shape = info.shape if t_idx is None else info.shape[:2] + info.shape[3:]
            gtype = tensor_type(name, shape, mmproj_type)

            def select(x: np.ndarray, t_idx: int | None = t_idx) -> np.ndarray:
                return x if t_idx is None else np.ascontiguousarray(x[:, :, t_idx])

            def chunks(info: TensorInfo = info, gtype: GGMLQuantizationType = gtype, select=select):
                return _rows_chunks(ckpt, info, gtype, select)

            plans.append(
                TensorPlan(
                    name=name,
                    shape=shape,
                    ggml_type=gtype,
                    nbytes=type_nbytes(gtype, shape),
                    load=lambda c=chunks: b"".join(bytes(x) for x in c()),
                    chunks=chunks,
                    source=hf,
                    transform="" if t_idx is None else f"conv3d temporal slice {t_idx}",
                )
            )
    return plans


def mmproj_metadata(v: VisionConfig, pre: dict[str, Any], mmproj_type: str, name: str) -> list[KV]:
    """The projector's metadata, in llama.cpp's key order."""
    u32, f32, s = GGUFValueType.UINT32, GGUFValueType.FLOAT32, GGUFValueType.STRING
    arr = GGUFValueType.ARRAY
    return [
        KV("general.architecture", s, ARCH),
        KV("general.type", s, "mmproj"),
        KV("general.name", s, name),
        KV("general.file_type", u32, MMPROJ_TYPES[mmproj_type][1]),
        KV("clip.has_vision_encoder", GGUFValueType.BOOL, True),
        KV("clip.vision.projection_dim", u32, v.text_embd),
        KV("clip.vision.image_size", u32, v.image_size),
        KV("clip.vision.patch_size", u32, v.patch_size),
        KV("clip.vision.embedding_length", u32, v.n_embd),
        KV("clip.vision.feed_forward_length", u32, v.n_ff),
        KV("clip.vision.block_count", u32, v.depth),
        KV("clip.vision.attention.head_count", u32, v.n_head),
        KV("clip.vision.image_mean", arr, [float(x) for x in pre["image_mean"]], f32),
        KV("clip.vision.image_std", arr, [float(x) for x in pre["image_std"]], f32),
        KV("clip.projector_type", s, PROJECTOR_TYPE),
        KV("clip.use_gelu", GGUFValueType.BOOL, True),
        KV("clip.vision.spatial_merge_size", u32, v.merge),
        KV("clip.vision.attention.layer_norm_epsilon", f32, v.eps),
        KV("clip.vision.is_deepstack_layers", arr, [False] * v.depth, GGUFValueType.BOOL),
        KV("general.quantization_version", u32, 2),
    ]


def convert_mmproj(
    src: str | Path | Checkpoint,
    out: str | Path | None = None,
    *,
    mmproj_type: str = DEFAULT_MMPROJ_TYPE,
    force: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
    name: str | None = None,
) -> MmprojResult:
    """Write the vision projector of a Qwen3.5 checkpoint as llama.cpp's mmproj GGUF."""
    t0 = time.perf_counter()
    _check_type(mmproj_type)
    ckpt = open_checkpoint(src)
    qwen35.text_config_from(ckpt.config, where=str(ckpt.path / "config.json"))
    v = vision_config_from(ckpt.config, where=str(ckpt.path / "config.json"))
    plans = plan_mmproj(ckpt, v, mmproj_type)
    pre = read_preprocessor(ckpt.path)
    base = name or ckpt.short_name
    out_path = Path(out) if out is not None else default_output(base, mmproj_type, prefix="mmproj-")
    check_output_path(out_path, force=force)
    kvs = mmproj_metadata(v, pre, mmproj_type, name or ckpt.hub_id or ckpt.path.name)
    check_room(out_path, ARCH, kvs, plans)
    size = write_gguf(out_path, ARCH, kvs, plans, progress=progress)
    notes = []
    fallback = [p.name for p in plans if mmproj_type == "q8_0" and p.ggml_type == GGMLQuantizationType.F16]
    if fallback:
        notes.append(
            f"{len(fallback)} matrices kept at F16 (row length not a multiple of 32, as llama.cpp does): "
            f"{', '.join(fallback[:3])}{' ...' if len(fallback) > 3 else ''}"
        )
    return MmprojResult(
        **written(ckpt, out_path, len(plans), size, t0),
        mmproj_type=mmproj_type,
        projector=PROJECTOR_TYPE,
        depth=v.depth,
        embedding_length=v.n_embd,
        projection_dim=v.text_embd,
        image_size=v.image_size,
        patch_size=v.patch_size,
        notes=notes,
    )


def preflight(src: str | Path | Checkpoint, mmproj_type: str = DEFAULT_MMPROJ_TYPE) -> None:
    """Every check convert_mmproj makes before writing (tower, shapes, preprocessor_config.json), so
    `convert --mmproj` fails before spending minutes on the text model."""
    _check_type(mmproj_type)
    ckpt = open_checkpoint(src)
    v = vision_config_from(ckpt.config, where=str(ckpt.path / "config.json"))
    plan_mmproj(ckpt, v, mmproj_type)
    read_preprocessor(ckpt.path)


def projector_file_bytes(
    config: dict[str, Any], mmproj_type: str = DEFAULT_MMPROJ_TYPE, name: str = "model"
) -> int:
    """The size of the mmproj file a config's tower converts to: header + padded tensors."""
    v = vision_config_from(config)
    tensors = projector_tensors(v, mmproj_type)
    plans = [TensorPlan(t.name, t.shape, t.ggml_type, t.nbytes, load=lambda: b"") for t in tensors]
    pre = {"image_mean": [0.5] * 3, "image_std": [0.5] * 3}
    header = encode_header(normalize_kv(ARCH, mmproj_metadata(v, pre, mmproj_type, name)), plans)
    return len(header) + sum(pad(t.nbytes) for t in tensors)


@dataclass
class ProjectorSize:
    bytes: int
    mmproj_type: str
    how: str  # "planned from config.json" | "the file beside the GGUF: NAME"


def planned_projector(
    src: str | Path, mmproj_type: str = DEFAULT_MMPROJ_TYPE, *, config: dict[str, Any] | None = None
) -> ProjectorSize | None:
    """The vision projector's file size for `plan`: from a config / HF folder's vision_config (`config`
    when the caller has read it already), or the mmproj*.gguf found beside a GGUF. None when there is
    no tower (or no projector beside the GGUF)."""
    from qwythos.core.gguf.mmproj import find_mmproj

    p = Path(src)
    if config is None and p.suffix == ".gguf":
        try:
            found = find_mmproj(p)
        except QwythosError:
            return None
        if found is None:
            return None
        ft = read_header(found).kv.get("general.file_type")
        kind = next((k for k, (_, f) in MMPROJ_TYPES.items() if f == ft), "?")
        return ProjectorSize(found.stat().st_size, kind, f"the file beside the GGUF: {found.name}")
    if config is None:
        try:
            config = json.loads((p / "config.json" if p.is_dir() else p).read_text())
        except (OSError, ValueError):
            return None
    if not isinstance(config, dict) or not isinstance(config.get("vision_config"), dict):
        return None
    return ProjectorSize(projector_file_bytes(config, mmproj_type), mmproj_type, "planned from config.json")


@dataclass
class PlacedProjector:
    path: Path
    how: str  # "converted from SRC" | "copied from FILE" | "already current"
    mmproj_type: str


def place_projector(
    src: str | Path | Checkpoint,
    out_dir: str | Path,
    name: str,
    *,
    mmproj_type: str | None = None,
    mmproj: str | Path | None = None,
) -> PlacedProjector | None:
    """The vision projector that goes next to the quants in `out_dir`, as `mmproj-<name>-<TYPE>.gguf`.

    An HF source (folder or repo id) with a tower is converted (F16 unless `mmproj_type`); a GGUF
    source brings `mmproj` or the mmproj*.gguf beside it, copied as it is (another type needs the
    checkpoint: convert it with --mmproj-type). None when there is no tower / no projector. An
    opened checkpoint is used as it is (its headers are not read again)."""
    import filecmp
    import shutil

    from qwythos.core.fileio import atomic_output
    from qwythos.core.gguf.mmproj import find_mmproj, read_mmproj_summary

    out_dir = Path(out_dir)
    p = None if isinstance(src, Checkpoint) else Path(src)
    if p is not None and p.suffix == ".gguf" and p.is_file():
        found = Path(mmproj) if mmproj is not None else find_mmproj(p)
        if found is None:
            return None
        s = read_mmproj_summary(found)
        kind = (s.file_type or "?").lower()
        if mmproj_type is not None and mmproj_type != kind:
            raise QwythosError(
                f"{found} is {kind.upper()}; --mmproj-type {mmproj_type} needs the checkpoint",
                f"convert it: `qwythos convert SRC --mmproj FILE --mmproj-type {mmproj_type}`",
            )
        dest = out_dir / f"mmproj-{name}-{kind.upper()}.gguf"
        if dest.is_file() and filecmp.cmp(dest, found, shallow=False):
            return PlacedProjector(dest, "already current", kind)
        with atomic_output(dest) as tmp:
            shutil.copyfile(found, tmp)
        return PlacedProjector(dest, f"copied from {found}", kind)
    kind = mmproj_type or DEFAULT_MMPROJ_TYPE
    _check_type(kind)
    ckpt = open_checkpoint(src)
    if not ckpt.config.get("vision_config") or not any(
        n.startswith(VISUAL_PREFIX) for n in ckpt.tensor_names()
    ):
        return None
    dest = out_dir / f"mmproj-{name}-{kind.upper()}.gguf"
    res = convert_mmproj(ckpt, dest, mmproj_type=kind, force=True)
    return PlacedProjector(res.output, f"converted from {ckpt.path}", kind)
