"""`qwythos quantize`: one BF16 GGUF -> every requested llama.cpp type, checked and recorded.

SRC is an HF folder / Hub id (converted to `<Name>-BF16.gguf` first; that intermediate is reused
while its recorded source fingerprint still matches) or a BF16/F16/F32 qwen35 GGUF. Each output
goes to `<Name>-<Type>.gguf` through a temp name; a rerun skips outputs whose manifest entry
(source fingerprint + parameters + size) still matches. The MTP block keeps `mtp_type` through
llama.cpp's per-tensor overrides (default q8_0: drafts as well as bf16 with half the head's bytes,
see plan.DEFAULT_MTP_TYPE). Every output is parsed, its `general.file_type` checked, and loaded by
llama-cpp-python to decode a few tokens before it is reported.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qwythos.convert.text import convert
from qwythos.core import qwen35
from qwythos.core.checkpoint import resolve_source as resolve_ckpt
from qwythos.core.errors import QwythosError
from qwythos.core.fileio import (
    atomic_output,
    check_free_space,
    ensure_writable_dir,
    sha256_file,
    write_text_atomic,
)
from qwythos.core.ftypes import FType, ggml_type_by_id, parse_ggml_type, parse_types
from qwythos.core.gguf_file import read_header
from qwythos.core.llama import load_model
from qwythos.core.llama_log import llama_log_to
from qwythos.core.llama_quant import Imatrix, llama_quantize, load_imatrix
from qwythos.quantize.plan import DEFAULT_MTP_TYPE, DEFAULT_TYPES, check_mtp_type, dry_run, mtp_overrides

MANIFEST = "quantize-manifest.json"
SUMS = "SHA256SUMS"
SOURCE_TYPES = ("f32", "f16", "bf16")
TYPE_SUFFIX = re.compile(r"-(BF16|F16|F32)$", re.IGNORECASE)
VERIFY_TOKENS = 4


@dataclass
class OutputReport:
    type: str
    path: str
    bytes: int
    gib: float
    bpw: float
    seconds: float
    sha256: str
    mtp_type: str
    skipped: bool  # complete and current from an earlier run
    verified: dict[str, Any] = field(default_factory=dict)


@dataclass
class QuantizeReport:
    source: str
    source_gguf: str
    source_fingerprint: str
    converted: bool  # an HF source was converted in this run
    out_dir: str
    outputs: list[OutputReport] = field(default_factory=list)
    manifest: str = ""
    sums: str = ""
    notes: list[str] = field(default_factory=list)


def tool_version() -> str:
    import llama_cpp

    try:
        from importlib.metadata import version

        ours = version("qwythos")
    except Exception:  # noqa: BLE001
        ours = "0"
    return f"qwythos {ours} / llama-cpp-python {llama_cpp.__version__}"


def fingerprint(path: Path) -> str:
    """A cheap identity of a (possibly 17 GB) file: size, mtime and its first and last MiB."""
    st = path.stat()
    h = hashlib.sha256(f"{st.st_size}:{st.st_mtime_ns}".encode())
    with open(path, "rb") as f:
        h.update(f.read(2**20))
        if st.st_size > 2**20:
            f.seek(max(0, st.st_size - 2**20))
            h.update(f.read(2**20))
    return h.hexdigest()


def _load_manifest(out_dir: Path) -> dict[str, Any]:
    p = out_dir / MANIFEST
    if not p.is_file():
        return {}
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


# ---------------------------------------------------------------- the source


@dataclass
class _Source:
    gguf: Path
    name: str
    n_layer: int
    n_nextn: int
    converted: bool
    notes: list[str]


def check_source_gguf(path: Path, requantize: bool) -> tuple[int, int]:
    """Validate a GGUF before llama.cpp sees it: qwen35, not already quantized. -> (n_layer, n_nextn)."""
    hdr = read_header(path)
    arch = hdr.kv.get("general.architecture")
    if arch != qwen35.ARCH:
        raise QwythosError(
            f"{path} is a GGUF of architecture {arch!r}, not {qwen35.ARCH}",
            "qwythos quantizes Qwen3.5 (qwen35) models; pass a Qwythos/Qwen3.5 GGUF",
        )
    quantized = sorted(
        {
            ggml_type_name(t.ggml_type)
            for t in hdr.tensors
            if len(t.ne) >= 2 and ggml_type_name(t.ggml_type) not in SOURCE_TYPES
        }
    )
    if quantized and not requantize:
        raise QwythosError(
            f"{path} is already quantized ({', '.join(quantized)})",
            "quantize from the BF16 GGUF or the safetensors; --requantize forces it (quality suffers)",
        )
    n_nextn = int(hdr.kv.get(f"{arch}.nextn_predict_layers", 0) or 0)
    return int(hdr.kv[f"{arch}.block_count"]) - n_nextn, n_nextn


def ggml_type_name(type_id: int) -> str:
    try:
        return ggml_type_by_id(type_id).name.lower()
    except KeyError:
        return f"type{type_id}"


def _hf_fingerprint(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.iterdir()):
        if p.suffix in (".json", ".safetensors", ".txt", ".model", ".jinja") and p.is_file():
            st = p.stat()
            h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()


def resolve_source(src: str | Path, out_dir: Path, requantize: bool, progress: Callable | None) -> _Source:
    p = Path(src)
    if p.is_file():
        if p.suffix != ".gguf":
            raise QwythosError(
                f"{p} is neither a GGUF nor a model folder", "pass a .gguf, an HF folder or a repo id"
            )
        n_layer, n_nextn = check_source_gguf(p, requantize)
        name = TYPE_SUFFIX.sub("", p.stem)
        return _Source(p, name, n_layer, n_nextn, False, [])

    folder, hub_id = resolve_ckpt(src)
    name = hub_id.split("/")[-1] if hub_id else folder.name
    inter = out_dir / f"{name}-BF16.gguf"
    marker = out_dir / f".{inter.name}.source"
    fp = _hf_fingerprint(folder)
    notes: list[str] = []
    converted = False
    if inter.is_file() and marker.is_file() and marker.read_text().strip() == fp:
        notes.append(f"reused the BF16 intermediate {inter.name} (source unchanged)")
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        conv_progress = None
        if progress is not None:  # one bar for the whole conversion, not one per tensor

            def conv_progress(_tensor: str, done: int, total: int) -> None:
                progress("convert to BF16", done, total)

        res = convert(folder, inter, outtype="bf16", force=True, name=name, progress=conv_progress)
        write_text_atomic(marker, fp + "\n")
        notes += res.notes
        converted = True
    n_layer, n_nextn = check_source_gguf(inter, requantize)
    return _Source(inter, name, n_layer, n_nextn, converted, notes)


# ---------------------------------------------------------------- verification


def verify_output(path: Path, ft: FType) -> dict[str, Any]:
    """Parse it, check general.file_type, load it with llama-cpp-python and decode a few tokens."""
    hdr = read_header(path)
    got = hdr.kv.get("general.file_type")
    if got != ft.id:
        raise QwythosError(f"{path}: general.file_type is {got}, expected {ft.id} ({ft.name})", "run again")
    tokens = decode_probe(path)
    return {"parsed": True, "file_type": got, "decoded_tokens": tokens}


def decode_probe(path: Path, n: int = VERIFY_TOKENS) -> int:
    """Load the model (with its MTP layer when it has one) through the runtime and greedily decode
    `n` tokens one at a time; returns how many were produced. NaN logits or a failed decode mean a
    broken file."""
    import numpy as np

    with llama_log_to(None):
        try:
            model = load_model(path)
        except QwythosError as e:
            raise QwythosError(
                f"{path} does not load: {e.message}", "the output is broken; run again"
            ) from None
        try:
            ctx = model.new_target(64, n_batch=8, threads=max(1, min(4, os.cpu_count() or 1)))
            tok = 0
            for i in range(n):
                ctx.decode([tok], i)
                logits = ctx.logits(1)[0]
                if not np.isfinite(logits).all():
                    raise QwythosError(f"{path} produces NaN or infinite logits", "the output is broken")
                tok = int(logits.argmax())
            return n
        finally:
            model.close()


# ---------------------------------------------------------------- main


def _params_key(ft: FType, mtp_type: str, ott: str | None, tet: str | None, imatrix: Imatrix | None) -> str:
    im = fingerprint(imatrix.path) if imatrix else None
    return json.dumps([ft.name, mtp_type, ott, tet, im])


def _current(entry: dict[str, Any] | None, path: Path, src_fp: str, key: str) -> bool:
    return bool(
        entry
        and path.is_file()
        and entry.get("source_fingerprint") == src_fp
        and entry.get("params") == key
        and entry.get("bytes") == path.stat().st_size
    )


def quantize(
    src: str | Path,
    out_dir: str | Path | None = None,
    types: list[str] | str = DEFAULT_TYPES,
    imatrix: str | Path | None = None,
    # q8_0, not bf16: drafts as well with half the head's bytes (measured; see plan.DEFAULT_MTP_TYPE)
    mtp_type: str = DEFAULT_MTP_TYPE,
    output_tensor_type: str | None = None,
    token_embedding_type: str | None = None,
    threads: int | None = None,
    requantize: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
    verify: bool = True,
) -> QuantizeReport:
    """Quantize `src` to every type in `types`; see the module docstring."""
    fts = parse_types(list(types) if not isinstance(types, str) else types)
    mtp_type = check_mtp_type(mtp_type)
    ott = parse_ggml_type(output_tensor_type, "--output-tensor-type") if output_tensor_type else None
    tet = parse_ggml_type(token_embedding_type, "--token-embedding-type") if token_embedding_type else None
    im = load_imatrix(imatrix) if imatrix else None
    needs = [f.name for f in fts if f.needs_imatrix]
    if needs and im is None:
        raise QwythosError(
            f"{', '.join(needs)} need an importance matrix", "pass --imatrix FILE (from llama-imatrix)"
        )
    out = Path(out_dir) if out_dir is not None else Path.cwd()
    ensure_writable_dir(out, "output folder")

    source = resolve_source(src, out, requantize, progress)
    src_fp = fingerprint(source.gguf)
    report = QuantizeReport(
        source=str(src),
        source_gguf=str(source.gguf),
        source_fingerprint=src_fp,
        converted=source.converted,
        out_dir=str(out),
        notes=list(source.notes),
    )
    manifest = _load_manifest(out)
    entries: dict[str, Any] = dict(manifest.get("outputs", {}))

    # plan every output first (exact sizes from the dry run) and check the disk once
    jobs = []
    for ft in fts:
        ov = mtp_overrides(source.n_layer, source.n_nextn, mtp_type, ft)
        if source.n_nextn and mtp_type == "same" and ft.needs_imatrix:
            head = [f"blk.{source.n_layer + k}.attn_q.weight" for k in range(source.n_nextn)]
            if im is None or not all(im.has(h) for h in head):
                ov = mtp_overrides(source.n_layer, source.n_nextn, "q8_0", ft)
                report.notes.append(
                    f"{ft.name}: the imatrix has no data for the MTP block (llama-imatrix never runs it): "
                    "the head was given q8_0"
                )
        choices, size = dry_run(
            source.gguf, ft, overrides=ov, output_tensor_type=ott, token_embedding_type=tet, imatrix=im
        )
        path = out / f"{source.name}-{ft.name}.gguf"
        key = _params_key(ft, mtp_type, output_tensor_type, token_embedding_type, im)
        is_source = path.resolve() == source.gguf.resolve()
        current = is_source or _current(entries.get(ft.name), path, src_fp, key)
        jobs.append((ft, ov, choices, size, path, key, current, is_source))
    need = sum(size + 2**20 for (_, _, _, size, _, _, cur, _) in jobs if not cur)
    if need:
        check_free_space(out, need, what=f"{sum(1 for j in jobs if not j[6])} quantized file(s)")

    n_params = 0
    for ft, ov, choices, _size, path, key, current, _is_source in jobs:
        n_params = sum(_numel(c.ne) for c in choices)
        t0 = time.perf_counter()
        if not current:

            def _prog(i: int, n: int, name: str, _t: str = ft.name) -> None:
                if progress is not None:
                    progress(_t, i, n)

            with atomic_output(path) as tmp:
                call = llama_quantize(
                    source.gguf,
                    tmp,
                    ft,
                    nthread=threads or 0,
                    output_tensor_type=ott,
                    token_embedding_type=tet,
                    overrides=ov,
                    imatrix=im,
                    allow_requantize=requantize,
                    progress=_prog,
                )
                if not call.ok:
                    raise QwythosError(
                        f"llama.cpp could not quantize {source.gguf} to {ft.name}: {call.error}",
                        _hint_for(call.error or ""),
                    )
        seconds = round(time.perf_counter() - t0, 2)
        size = path.stat().st_size
        prior = entries.get(ft.name) or {}
        sha = prior.get("sha256") if current and prior.get("bytes") == size and prior.get("sha256") else None
        sha = sha or sha256_file(path)
        verified = verify_output(path, ft) if verify else {}
        if progress is not None:
            progress(ft.name, 1, 1)
        head = sorted(
            {c.new_type for c in choices if c.name.startswith(f"blk.{source.n_layer}.") and len(c.ne) > 1}
        )
        rep = OutputReport(
            type=ft.name,
            path=str(path),
            bytes=size,
            gib=round(size / 2**30, 3),
            bpw=round(8 * sum(c.nbytes() for c in choices) / max(n_params, 1), 3),
            seconds=seconds if not current else 0.0,
            sha256=sha,
            mtp_type="/".join(head) if source.n_nextn else "-",
            skipped=current,
            verified=verified,
        )
        report.outputs.append(rep)
        entries[ft.name] = {
            "type": ft.name,
            "file": path.name,
            "bytes": size,
            "sha256": sha,
            "source": str(source.gguf.name),
            "source_fingerprint": src_fp,
            "params": key,
            "mtp_type": rep.mtp_type,
            "imatrix": str(im.path) if im else None,
            "tool_version": tool_version(),
        }
        _write_manifest(out, entries)
    report.manifest = str(out / MANIFEST)
    report.sums = str(out / SUMS)
    return report


def _write_manifest(out: Path, entries: dict[str, Any]) -> None:
    manifest = {"tool_version": tool_version(), "outputs": entries}
    write_text_atomic(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    lines = [f"{e['sha256']}  {e['file']}" for e in entries.values() if (out / e["file"]).is_file()]
    write_text_atomic(out / SUMS, "\n".join(lines) + "\n")


def _hint_for(error: str) -> str:
    if "imatrix" in error:
        return "pass an --imatrix made for this model, or give the offending tensors a type (--mtp-type q8_0)"
    if "requantiz" in error:
        return "quantize from the BF16 GGUF, or pass --requantize"
    return "check the source GGUF (qwythos inspect)"


def _numel(ne: tuple[int, ...]) -> int:
    n = 1
    for d in ne:
        n *= d
    return n
