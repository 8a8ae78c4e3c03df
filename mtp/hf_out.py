"""Give a Hugging Face checkpoint folder its MTP head back, for vLLM and SGLang.

The Qwythos release promises `mtp_num_hidden_layers: 1` but ships no `mtp.*` tensors: vLLM refuses
it (missing weights), SGLang loads it and rejects every draft. `restore_hf` writes a complete
folder: the trunk's shards linked (hard link, else symbolic) or copied, one new shard
`model-mtp.safetensors` with the 15 `mtp.*` tensors, an index whose `weight_map` and
`metadata.total_size` cover both, `config.json` with `mtp_num_hidden_layers` = 1, and the
tokenizer/side files copied.

The head comes from any source `mtp restore` reads (mtp/sources.py). From an HF source its bytes
are copied as they are; from a GGUF the converter's transforms are undone (core/model/qwen35.hf_value:
norm +1 offsets and any reordering) and the values are cast to the trunk's dtype, so converting
the written folder gives back the same GGUF.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType

from qwythos.core.errors import QwythosError
from qwythos.core.fileio import check_free_space, ensure_writable_dir
from qwythos.core.model import qwen35
from qwythos.core.model.arch import ARCH
from qwythos.core.model.checkpoint import INDEX, Checkpoint, TensorInfo, open_checkpoint, read_f32
from qwythos.core.model.safetensors_writer import (
    SafetensorsEntry,
    Writer,
    copy_bytes,
    write_pieces,
    write_safetensors,
)
from qwythos.core.model.structure import HeadDims, head_table
from qwythos.mtp.sources import KIND_LABEL, HeadSource, HeadTensor, dequantize, open_head

MTP_SHARD = "model-mtp.safetensors"
# head tensors llama.cpp allows that Qwen3.5's HF layout has no place for (vLLM/SGLang use the trunk's)
NO_HF_NAME = ("nextn.embed_tokens.weight", "nextn.shared_head_head.weight")


@dataclass
class OutFile:
    name: str
    how: str  # "hardlink" | "symlink" | "copy" | "written" | "rewritten"
    size_bytes: int


@dataclass
class HFRestoreResult:
    output: Path
    trunk: Path
    source: str
    source_kind: str
    shard: str
    dtype: str
    link_mode: str  # what the trunk's shards became: "hardlink", "symlink", "copy" (or mixed)
    files: list[OutFile] = field(default_factory=list)
    head_tensors: list[dict[str, Any]] = field(default_factory=list)  # name, shape, dtype, how
    n_tensors: int = 0
    total_size: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- the head in HF form


def _cast(x: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "BF16":
        return qwen35.cast(np.asarray(x, dtype=np.float32), "F32", GGMLQuantizationType.BF16)
    if dtype == "F16":
        return np.asarray(x, dtype=np.float16)
    if dtype == "F32":
        return np.asarray(x, dtype=np.float32)
    raise QwythosError(f"cannot write a head as {dtype}", "use a BF16, F16 or F32 trunk")


def _from_hf(info: TensorInfo, dtype: str) -> tuple[Writer, str]:
    if info.dtype == dtype:
        return copy_bytes(info.file, info.offset, info.nbytes), "copy"
    return write_pieces(lambda: [_cast(read_f32(info), dtype).tobytes()]), f"{info.dtype}->{dtype}"


def _from_gguf(t: HeadTensor, rule: qwen35.Rule, cfg: qwen35.TextConfig, dtype: str) -> tuple[Writer, str]:
    if not rule.transforms and t.ggml_type == GGMLQuantizationType.BF16 and dtype == "BF16":
        return write_pieces(lambda: [bytes(t.load())]), "copy"  # GGUF bf16 bits are safetensors' BF16

    def data() -> bytes:
        return _cast(qwen35.hf_value(dequantize(t), rule, cfg), dtype).tobytes()

    steps = [f"undo {x}" for x in reversed(rule.transforms)]
    return write_pieces(lambda: [data()]), ", ".join([f"{t.ggml_type.name}->{dtype}", *steps])


def head_entries(
    head: HeadSource, cfg: qwen35.TextConfig, dtype: str, src: str
) -> tuple[list[SafetensorsEntry], list[dict[str, Any]], list[str]]:
    """The head's tensors as `mtp.*` safetensors entries in `dtype`, checked against `cfg`."""
    notes: list[str] = []
    dims = HeadDims(ARCH, cfg.n_embd, cfg.n_vocab, cfg.n_head, cfg.n_head_kv, cfg.head_dim, cfg.n_ff)
    table = head_table(dims)
    hf_infos = head.checkpoint.tensors if head.checkpoint is not None else {}
    entries: list[SafetensorsEntry] = []
    rows: list[dict[str, Any]] = []
    for t in head.tensors:
        if t.name in NO_HF_NAME:
            notes.append(
                f"{t.source or t.name}: the head's own copy is left out (HF Qwen3.5 uses the trunk's)"
            )
            continue
        found = qwen35.mtp_hf_name(t.name)
        if found is None or t.name not in table:
            raise QwythosError(
                f"{src}: tensor {t.source or t.name} is not part of a qwen35 MTP block",
                "use an unmodified head",
            )
        hf_name, rule = found
        want = tuple(int(d) for d in rule.shape(cfg))
        gguf_shape = table[t.name][0]
        if tuple(t.shape) != gguf_shape:
            raise QwythosError(
                f"head tensor {t.source or t.name} in {src} has shape {list(t.shape)}, the trunk's config.json "
                f"needs {list(gguf_shape)} ({hf_name})",
                "the head comes from a model of another size; take it from the same base model "
                f"(hidden {cfg.n_embd}, {cfg.n_head}/{cfg.n_head_kv} heads of {cfg.head_dim}, FFN {cfg.n_ff})",
            )
        if head.kind == "hf":
            write, how = _from_hf(hf_infos[t.source], dtype)
        else:
            write, how = _from_gguf(t, rule, cfg, dtype)
        entries.append(SafetensorsEntry(hf_name, dtype, want, write))
        rows.append({"name": hf_name, "shape": list(want), "dtype": dtype, "how": how})
    missing = [qwen35.mtp_hf_name(n)[0] for n, (_, req) in table.items() if req and n not in head.names]
    if missing:
        raise QwythosError(
            f"{src}: the head lacks {missing[0]} ({len(missing)} missing)", "use a complete head"
        )
    entries.sort(key=lambda e: e.name)
    rows.sort(key=lambda r: r["name"])
    return entries, rows, notes


# ---------------------------------------------------------------- the folder


def _is_mtp(name: str) -> bool:
    return name.startswith(("mtp.", "model.mtp."))


def _trunk_dtype(ckpt: Checkpoint) -> str:
    for name, info in ckpt.tensors.items():
        if name.endswith("embed_tokens.weight") and "mtp" not in name:
            return info.dtype
    return next(iter(ckpt.tensors.values())).dtype


def _place(src: Path, dst: Path, copy: bool) -> str:
    src = src.resolve()
    if copy:
        shutil.copyfile(src, dst)
        return "copy"
    try:
        os.link(src, dst)
        return "hardlink"
    except OSError:
        os.symlink(src, dst)
        return "symlink"


def _with_mtp_layers(config: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """config.json with mtp_num_hidden_layers = 1 where the text config lives (key order kept)."""
    out = json.loads(json.dumps(config))
    target = out["text_config"] if isinstance(out.get("text_config"), dict) else out
    changed = target.get("mtp_num_hidden_layers") != 1
    target["mtp_num_hidden_layers"] = 1
    return out, changed


def _check_out_dir(out: Path, trunk: Path, force: bool) -> None:
    o, t = out.resolve(), trunk.resolve()
    if o == t or o in t.parents or t in o.parents:
        raise QwythosError(
            f"{out} overlaps the trunk folder {trunk}", "write the new checkpoint to another folder"
        )
    if out.exists() and not out.is_dir():
        raise QwythosError(f"{out} exists and is not a folder", "choose another --hf folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise QwythosError(
            f"{out} already exists and is not empty", "pass --force to replace it, or choose another folder"
        )
    if out.is_dir() and force and any(out.iterdir()) and not (out / MTP_SHARD).is_file():
        raise QwythosError(
            f"{out} was not written by `mtp restore --hf` (no {MTP_SHARD}); --force only replaces such a folder",
            "choose another folder",
        )


def restore_hf(
    trunk: str | Path,
    src: str | Path,
    out: str | Path,
    *,
    copy: bool = False,
    force: bool = False,
) -> HFRestoreResult:
    """Write `out`: the HF checkpoint `trunk` plus the MTP head found in `src`."""
    t0 = time.perf_counter()
    trunk_p, out_p = Path(trunk).expanduser(), Path(out).expanduser()
    if trunk_p.is_file():
        raise QwythosError(
            f"{trunk_p} is a file; --hf writes a Hugging Face folder from a Hugging Face folder",
            "pass the safetensors folder of the fine-tune as TRUNK (e.g. Qwythos-9B-Claude-Mythos-5-1M)",
        )
    ckpt = open_checkpoint(trunk_p)
    cfg = qwen35.text_config_from(ckpt.config, where=str(ckpt.path / "config.json"))
    _check_out_dir(out_p, ckpt.path, force)
    notes: list[str] = []
    old_mtp = sorted(n for n in ckpt.tensors if _is_mtp(n))
    if old_mtp:
        if not force:
            raise QwythosError(
                f"{ckpt.path} already has an MTP head ({len(old_mtp)} mtp.* tensors)",
                "pass --force to replace it",
            )
        notes.append(f"replaced the {len(old_mtp)} mtp.* tensors already in {ckpt.path.name}")
    head = open_head(src)
    dtype = _trunk_dtype(ckpt)
    entries, rows, head_notes = head_entries(head, cfg, dtype, str(src))
    notes += head_notes

    ensure_writable_dir(out_p.parent, "folder")
    head_bytes = sum(e.nbytes for e in entries)
    trunk_bytes = sum(f.stat().st_size for f in ckpt.files)
    check_free_space(out_p.parent, head_bytes + (trunk_bytes if copy else 0) + 2**20, what=str(out_p))
    tmp = out_p.with_name(out_p.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    files: list[OutFile] = []
    weight_map: dict[str, str] = {}
    by_file: dict[Path, dict[str, TensorInfo]] = {}  # open_checkpoint read every shard's header
    for n, i in ckpt.tensors.items():
        by_file.setdefault(i.file, {})[n] = i
    try:
        for f in ckpt.files:
            infos = by_file.get(f, {})
            if any(_is_mtp(n) for n in infos):
                keep = [i for n, i in infos.items() if not _is_mtp(n)]
                if keep and f.name == MTP_SHARD:
                    raise QwythosError(
                        f"{f} holds other tensors besides the head",
                        "rename that shard and its index entries first",
                    )
                if keep:
                    write_safetensors(
                        tmp / f.name,
                        [
                            SafetensorsEntry(i.name, i.dtype, i.shape, copy_bytes(i.file, i.offset, i.nbytes))
                            for i in keep
                        ],
                    )
                    files.append(OutFile(f.name, "rewritten", (tmp / f.name).stat().st_size))
                weight_map.update({i.name: f.name for i in keep})
                continue
            files.append(OutFile(f.name, _place(f, tmp / f.name, copy), f.stat().st_size))
            weight_map.update({n: f.name for n in infos})
        write_safetensors(tmp / MTP_SHARD, entries)
        files.append(OutFile(MTP_SHARD, "written", (tmp / MTP_SHARD).stat().st_size))
        weight_map.update({e.name: MTP_SHARD for e in entries})

        all_infos = {n: i for n, i in ckpt.tensors.items() if not _is_mtp(n)}
        total = sum(i.nbytes for i in all_infos.values()) + head_bytes
        index = ckpt.index or {}
        meta = dict(index.get("metadata") or {})
        meta["total_size"] = total
        if "total_parameters" in meta:
            numel = sum(i.numel for i in all_infos.values()) + sum(int(np.prod(e.shape)) for e in entries)
            meta["total_parameters"] = numel
        new_index = {**index, "metadata": meta, "weight_map": dict(sorted(weight_map.items()))}
        (tmp / INDEX).write_text(json.dumps(new_index, indent=2) + "\n")
        files.append(OutFile(INDEX, "written", (tmp / INDEX).stat().st_size))

        config, changed = _with_mtp_layers(ckpt.config)
        (tmp / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        files.append(OutFile("config.json", "written", (tmp / "config.json").stat().st_size))
        if changed:
            notes.append("config.json: mtp_num_hidden_layers set to 1")

        shard_names = {f.name for f in ckpt.files}
        for p in sorted(ckpt.path.iterdir()):
            if (
                p.is_file()
                and p.name not in shard_names
                and p.name not in (INDEX, "config.json")
                and not p.name.endswith((".safetensors", ".partial", ".lock", ".gguf"))
            ):
                shutil.copyfile(p, tmp / p.name)
                files.append(OutFile(p.name, "copy", p.stat().st_size))

        written = open_checkpoint(tmp)  # headers, index and shards agree
        if qwen35.mtp_layer_count(written) != 1 or len([n for n in written.tensors if _is_mtp(n)]) != len(
            entries
        ):
            raise QwythosError(f"{tmp}: the written folder does not hold the head", "report this as a bug")
        if out_p.exists():
            shutil.rmtree(out_p)
        os.replace(tmp, out_p)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    modes = sorted(
        {f.how for f in files if f.name in shard_names and f.how in ("hardlink", "symlink", "copy")}
    )
    return HFRestoreResult(
        output=out_p,
        trunk=ckpt.path,
        source=str(src),
        source_kind=KIND_LABEL[head.kind],
        shard=MTP_SHARD,
        dtype=dtype,
        link_mode="+".join(modes) or "rewritten",
        files=files,
        head_tensors=rows,
        n_tensors=len(weight_map),
        total_size=total,
        seconds=round(time.perf_counter() - t0, 3),
        notes=notes,
    )
