"""`qwythos quantize`: one BF16 GGUF -> every requested llama.cpp type, checked and recorded.

SRC is an HF folder / Hub id (converted to `<Name>-BF16.gguf` first; that intermediate is reused
while its recorded source fingerprint still matches) or a BF16/F16/F32 qwen35 GGUF; it is resolved
once into a `quantize.source.Source` (path, kind, header view) that every step below takes. Each output
goes to `<Name>-<Type>.gguf` through a temp name; a rerun skips outputs whose manifest entry
(source fingerprint + parameters + size) still matches. The MTP block keeps `mtp_type` through
llama.cpp's per-tensor overrides (default q8_0: drafts as well as bf16 with half the head's bytes,
see plan.DEFAULT_MTP_TYPE). `imatrix="auto"` computes the source's importance matrix once (MTP head
included) and caches it (quantize/imatrix_auto.py); IQ types are made only with an importance matrix,
and the head only gets one when the matrix has data for it. Every output is parsed, its `general.file_type` checked, and loaded by
llama-cpp-python to decode a few tokens before it is reported.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qwythos.convert.mmproj import place_projector
from qwythos.convert.text import convert
from qwythos.core.errors import QwythosError
from qwythos.core.fileio import (
    atomic_output,
    check_free_space,
    ensure_writable_dir,
    output_lock,
    register_inputs,
    sha256_file,
    write_text_atomic,
)
from qwythos.core.gguf.file import ggml_type_name
from qwythos.core.gguf.ftypes import FType, ggml_needs_imatrix, parse_ggml_type, parse_types
from qwythos.core.gguf.view import GGUFView, read_view
from qwythos.core.llamacpp.handles import load_model
from qwythos.core.llamacpp.log import llama_log_to
from qwythos.core.model.arch import check_arch
from qwythos.quantize.imatrix_auto import AutoImatrix, auto_imatrix, is_auto
from qwythos.quantize.llama_quant import Imatrix, llama_quantize, load_imatrix
from qwythos.quantize.plan import DEFAULT_MTP_TYPE, DEFAULT_TYPES, check_mtp_type, dry_run, mtp_overrides
from qwythos.quantize.source import GGUF, Source, file_fingerprint, open_source

MANIFEST = "quantize-manifest.json"
SUMS = "SHA256SUMS"
SOURCE_TYPES = ("f32", "f16", "bf16")
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
    imatrix: dict[str, Any] | None = None  # the importance matrix used (as the manifest records it)


def tool_version() -> str:
    import llama_cpp

    try:
        from importlib.metadata import version

        ours = version("qwythos")
    except Exception:  # noqa: BLE001
        ours = "0"
    return f"qwythos {ours} / llama-cpp-python {llama_cpp.__version__}"


def _load_manifest(out_dir: Path) -> dict[str, Any]:
    p = out_dir / MANIFEST
    if not p.is_file():
        return {}
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


# ---------------------------------------------------------------- the source


def check_source_gguf(view: GGUFView, requantize: bool) -> None:
    """A GGUF llama.cpp may quantize: not already quantized (qwen35 was checked when it was opened)."""
    quantized = sorted(
        {
            name
            for t in view.tensors
            if len(t.ne) >= 2 and (name := ggml_type_name(t.ggml_type).lower()) not in SOURCE_TYPES
        }
    )
    if quantized and not requantize:
        raise QwythosError(
            f"{view.path} is already quantized ({', '.join(quantized)})",
            "quantize from the BF16 GGUF or the safetensors; --requantize forces it (quality suffers)",
        )


def with_bf16_gguf(
    source: Source, out_dir: Path, progress: Callable | None
) -> tuple[Source, bool, list[str]]:
    """An HF source with the BF16 GGUF converted from it (`<Name>-BF16.gguf` in `out_dir`, reused
    while the checkpoint's fingerprint matches the one recorded beside it).
    -> (the source with that GGUF's view, converted in this run, notes)"""
    notes: list[str] = []
    inter = out_dir / f"{source.name}-BF16.gguf"
    marker = out_dir / f".{inter.name}.source"
    fp = source.checkpoint_fingerprint
    converted = False
    if inter.is_file() and marker.is_file() and marker.read_text().strip() == fp:
        notes.append(f"reused the BF16 intermediate {inter.name} (source unchanged)")
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        conv_progress = None
        if progress is not None:  # one bar for the whole conversion, not one per tensor

            def conv_progress(_tensor: str, done: int, total: int) -> None:
                progress("convert to BF16", done, total)

        res = convert(
            source.checkpoint, inter, outtype="bf16", force=True, name=source.name, progress=conv_progress
        )
        write_text_atomic(marker, fp + "\n")
        notes += res.notes
        converted = True
    view = read_view(inter)
    check_arch(view, "quantize")
    return source.with_view(view), converted, notes


# ---------------------------------------------------------------- verification


def verify_output(path: Path, ft: FType, source: Path | None = None) -> dict[str, Any]:
    """Parse it, check general.file_type, load it with llama-cpp-python and decode a few tokens.

    `path` is the temporary file (checked before it gets its final name). When it fails to load or
    decode, the source is put through the same probe so the message blames the right file.
    """
    got = read_view(path).file_type
    if got != ft.id:
        raise QwythosError(
            f"the {ft.name} output of {source or path} has general.file_type {got}, expected {ft.id}",
            "this is a bug in qwythos or llama.cpp; please report it",
        )
    try:
        tokens = decode_probe(path)
    except QwythosError as e:
        if source is not None and _source_fails(source):
            raise QwythosError(
                f"the source {source} fails the same check ({e.message.replace(str(path), 'the output')}): "
                f"its {ft.name} output was not kept",
                f"the source GGUF is broken: convert it again (`qwythos convert`) and check it with "
                f"`qwythos inspect {source.name}`",
            ) from None
        raise QwythosError(
            f"the {ft.name} output of {source or path} failed verification "
            f"({e.message.replace(str(path), 'the output')}); it was not kept",
            "the source decodes fine, so this is llama.cpp's quantizer: try another --types / "
            "--mtp-type, and report it if it persists",
        ) from None
    return {"parsed": True, "file_type": got, "decoded_tokens": tokens}


def _source_fails(source: Path) -> bool:
    try:
        decode_probe(source)
    except QwythosError:
        return True
    return False


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


# ---------------------------------------------------------------- checks before the work


def check_out_dir(out: Path) -> None:
    """-o is a folder (one file per type goes in it): refuse a file or a name that looks like one."""
    if out.exists() and not out.is_dir():
        raise QwythosError(
            f"-o {out} is a file; quantize writes one file per type into a folder",
            f"pass a folder with -o (e.g. -o {out.parent / 'quants'})",
        )
    if not out.exists() and out.suffix.lower() == ".gguf":
        raise QwythosError(
            f"-o {out} looks like a file name; quantize writes one file per type (<Name>-<Type>.gguf) "
            "into a folder",
            f"pass a folder with -o, e.g. -o {out.parent if str(out.parent) != '.' else 'quants'}",
        )


def _matrices(source: Source) -> dict[str, int]:
    """The weight matrices an importance matrix has data for (blk.*, not norms) -> row length."""
    return {
        t.name: t.ne[0]
        for t in source.view.tensors
        if len(t.ne) >= 2 and t.name.startswith("blk.") and "norm" not in t.name
    }


def _head_prefix(source: Source) -> tuple[str, ...]:
    return tuple(f"blk.{source.n_layer + k}." for k in range(source.n_nextn))


def check_imatrix(im: Imatrix, source: Source) -> None:
    """An importance matrix must be for this model: it covers most of the trunk's matrices llama.cpp
    would use it for, with the right row lengths (one from another model matches none of them); the
    head's entries, when it has them, fit too."""
    head = _head_prefix(source)
    every = _matrices(source)
    wanted = {n: ne0 for n, ne0 in every.items() if not (head and n.startswith(head))}
    covered = [n for n in wanted if n in im.entries]
    fix = f"it was made for another model: make one for this model with `qwythos imatrix {source.gguf.name}` or --imatrix auto"
    wrong = [
        n
        for n in every
        if n in im.entries and (im.entries[n].size % every[n] or im.entries[n].size < every[n])
    ]
    if wrong:
        n = wrong[0]
        raise QwythosError(
            f"the imatrix {im.path} does not fit {source.gguf}: {n} has {im.entries[n].size} values for rows of "
            f"{every[n]} ({len(wrong)} tensor(s) differ)",
            fix,
        )
    if wanted and len(covered) < 0.5 * len(wanted):
        missing = next(n for n in wanted if n not in im.entries)
        raise QwythosError(
            f"the imatrix {im.path} covers {len(covered)} of the {len(wanted)} matrices of {source.gguf} "
            f"(no data for {missing}, ...)",
            fix,
        )


def covers_head(im: Imatrix | None, source: Source) -> bool:
    """The importance matrix has data for every matrix of the MTP head (eh_proj, attention, FFN):
    `qwythos imatrix`'s do; llama-imatrix never runs the head, so its files have none."""
    head = _head_prefix(source)
    names = [n for n in _matrices(source) if head and n.startswith(head)]
    return bool(im is not None and names and all(im.has(n) for n in names))


def head_overrides(source: Source, ft: FType, mtp_type: str, im: Imatrix | None) -> tuple[list, str | None]:
    """The per-tensor overrides for the head of one output, and a note when the head was moved off
    an IQ type. An IQ type for the head needs the head's own importance data: with `--mtp-type same`
    a head without it gets q8_0 (and a note); an explicit `--mtp-type iq...` is refused."""
    ov = mtp_overrides(source.n_layer, source.n_nextn, mtp_type, ft)
    if not source.n_nextn or covers_head(im, source):
        return ov, None
    where = f"the imatrix {im.path.name}" if im is not None else "no --imatrix"
    fix = (
        f"make one that covers the head: `qwythos imatrix {source.gguf.name}` (or --imatrix auto) runs the "
        "MTP head, llama-imatrix never does"
    )
    if mtp_type != "same" and ggml_needs_imatrix(parse_ggml_type(mtp_type, "--mtp-type")):
        raise QwythosError(
            f"--mtp-type {mtp_type} needs importance data for the MTP head, and {where} has none",
            fix + "; or give the head another type (--mtp-type q8_0)",
        )
    if mtp_type == "same" and ft.needs_imatrix:
        note = (
            f"{ft.name}: {where} has no data for the MTP head (llama-imatrix never runs it): the head was "
            f"given q8_0; {fix}"
        )
        return mtp_overrides(source.n_layer, source.n_nextn, "q8_0", ft), note
    return ov, None


def imatrix_record(im: Imatrix, source: Source, auto: AutoImatrix | None) -> dict[str, Any]:
    """What the manifest says about the importance matrix an output was made with."""
    rec: dict[str, Any] = {
        "file": str(im.path),
        "sha256": sha256_file(im.path),
        "calibration": list(im.datasets),
        "chunks": im.chunk_count,
        "covers_head": covers_head(im, source),
        "auto": auto is not None,
    }
    if auto is not None:
        rec["calibration_sha256"] = auto.calibration_sha256
        rec["computed"] = auto.computed
    return rec


# ---------------------------------------------------------------- main


@dataclass
class Job:
    """One planned output: its type, per-tensor overrides and the dry run's choices and size."""

    ft: FType
    overrides: list
    choices: list
    size: int  # bytes, from llama.cpp's dry run
    path: Path
    params_key: str
    current: bool  # complete and current from an earlier run (or it is the source itself)
    is_source: bool


def _params_key(ft: FType, mtp_type: str, ott: str | None, tet: str | None, imatrix: Imatrix | None) -> str:
    im = file_fingerprint(imatrix.path) if imatrix else None
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
    src: str | Path | Source,
    out_dir: str | Path | None = None,
    types: list[str] | str = DEFAULT_TYPES,
    imatrix: str | Path | None = None,  # a file, or "auto" (computed once from `calib`, cached)
    # q8_0, not bf16: drafts as well with half the head's bytes (measured; see plan.DEFAULT_MTP_TYPE)
    mtp_type: str = DEFAULT_MTP_TYPE,
    output_tensor_type: str | None = None,
    token_embedding_type: str | None = None,
    threads: int | None = None,
    requantize: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
    verify: bool = True,
    mmproj_type: str | None = None,
    calib: str | Path | None = None,
) -> QuantizeReport:
    """Quantize `src` to every type in `types`; see the module docstring."""
    fts = parse_types(list(types) if not isinstance(types, str) else types)
    mtp_type = check_mtp_type(mtp_type)
    ott = parse_ggml_type(output_tensor_type, "--output-tensor-type") if output_tensor_type else None
    tet = parse_ggml_type(token_embedding_type, "--token-embedding-type") if token_embedding_type else None
    if threads is not None and threads < 0:
        raise QwythosError(f"--threads {threads} is negative", "pass a positive count, or leave it out (all)")
    auto = is_auto(imatrix)
    if calib is not None and not auto:
        raise QwythosError(
            "--calib is the text --imatrix auto computes its importance matrix from",
            "add --imatrix auto, or leave --calib out",
        )
    im = load_imatrix(imatrix) if imatrix and not auto else None
    needs = [f.name for f in fts if f.needs_imatrix]
    if needs and im is None and not auto:
        raise QwythosError(
            f"{', '.join(needs)} {'needs' if len(needs) == 1 else 'need'} an importance matrix "
            "(IQ types are made only with one)",
            "pass --imatrix auto (computed once with `qwythos imatrix` from the bundled calibration text "
            "and cached beside the source), or --imatrix FILE from `qwythos imatrix`",
        )
    out = Path(out_dir) if out_dir is not None else Path.cwd()
    check_out_dir(out)
    ensure_writable_dir(out, "output folder")
    given = src.path if isinstance(src, Source) else Path(src)
    register_inputs(given if given.exists() else None, None if auto else imatrix, calib)

    source = open_source(src, "quantize")
    converted, notes = False, []
    if source.kind != GGUF:
        source, converted, notes = with_bf16_gguf(source, out, progress)
    check_source_gguf(source.view, requantize)
    register_inputs(source.gguf)
    got = None
    if auto:

        def _iprog(done: int, total: int) -> None:
            if progress is not None:
                progress("imatrix", done, total)

        got = auto_imatrix(source, calib, threads=threads, progress=_iprog)
        im = load_imatrix(got.path)
        notes.append(
            f"importance matrix {'computed' if got.computed else 'reused (source and text unchanged)'}: "
            f"{got.path} ({got.calibration}, {im.chunk_count} chunks)"
        )
    if im is not None:
        check_imatrix(im, source)
    src_fp = source.fingerprint
    report = QuantizeReport(
        source=source.given,
        source_gguf=str(source.gguf),
        source_fingerprint=src_fp,
        converted=converted,
        out_dir=str(out),
        notes=notes,
        imatrix=imatrix_record(im, source, got) if im is not None else None,
    )
    entries = _load_entries(out)

    # plan every output first (exact sizes from the dry run) and check the disk once
    jobs: list[Job] = []
    for ft in fts:
        ov, note = head_overrides(source, ft, mtp_type, im)
        if note:
            report.notes.append(note)
        choices, size = dry_run(
            source.gguf, ft, overrides=ov, output_tensor_type=ott, token_embedding_type=tet, imatrix=im
        )
        path = out / f"{source.name}-{ft.name}.gguf"
        key = _params_key(ft, mtp_type, output_tensor_type, token_embedding_type, im)
        is_source = path.resolve() == source.gguf.resolve()
        current = is_source or _current(entries.get(path.name), path, src_fp, key)
        jobs.append(Job(ft, ov, choices, size, path, key, current, is_source))
    todo = [j for j in jobs if not j.current]
    if todo:
        check_free_space(out, sum(j.size + 2**20 for j in todo), what=f"{len(todo)} quantized file(s)")

    for job in jobs:
        ft, choices, path = job.ft, job.choices, job.path
        n_params = sum(math.prod(c.ne) for c in choices)
        t0 = time.perf_counter()
        prior = entries.get(path.name) or {}
        verified: dict[str, Any] = {}
        if job.current:
            size = path.stat().st_size
            sha = prior.get("sha256") if prior.get("bytes") == size and prior.get("sha256") else None
            sha = sha or sha256_file(path)
        else:

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
                    overrides=job.overrides,
                    imatrix=im,
                    allow_requantize=requantize,
                    progress=_prog,
                )
                if not call.ok:
                    raise _quantize_error(source.gguf, path, ft, call.error or "")
                # checked and hashed under the temporary name: a bad file never gets the final one
                verified = verify_output(tmp, ft, source.gguf) if verify else {}
                size = tmp.stat().st_size
                sha = sha256_file(tmp)
        if job.current and verify and not job.is_source and not prior.get("verified"):
            verified = verify_output(path, ft, source.gguf)
        elif job.current:
            verified = dict(prior.get("verified") or {})
        seconds = round(time.perf_counter() - t0, 2)
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
            seconds=seconds if not job.current else 0.0,
            sha256=sha,
            mtp_type="/".join(head) if source.n_nextn else "-",
            skipped=job.current,
            verified=verified,
        )
        report.outputs.append(rep)
        entry = {
            "type": ft.name,
            "file": path.name,
            "bytes": size,
            "sha256": sha,
            "source": str(source.gguf.name),
            "source_fingerprint": src_fp,
            "params": job.params_key,
            "mtp_type": rep.mtp_type,
            "imatrix": report.imatrix,
            "verified": verified,
            "tool_version": tool_version(),
        }
        entries = _record(out, entry)
    _place_projector(source, out, mmproj_type, report)
    report.manifest = str(out / MANIFEST)
    report.sums = str(out / SUMS)
    return report


def _place_projector(source: Source, out: Path, mmproj_type: str | None, report: QuantizeReport) -> None:
    """The vision projector next to the quants (converted from an HF source, or the mmproj*.gguf
    beside a GGUF source), recorded in the manifest and SHA256SUMS like a quant."""
    projector = place_projector(source.checkpoint or source.path, out, source.name, mmproj_type=mmproj_type)
    if projector is None:
        return
    entry = {
        "type": f"mmproj-{projector.mmproj_type.upper()}",
        "file": projector.path.name,
        "bytes": projector.path.stat().st_size,
        "sha256": sha256_file(projector.path),
        "source": Path(source.given).name,
        "source_fingerprint": source.fingerprint,
        "params": f"mmproj {projector.mmproj_type}",
        "mtp_type": "-",
        "imatrix": None,
        "verified": {},
        "tool_version": tool_version(),
    }
    _record(out, entry)
    report.notes.append(f"vision projector {projector.path.name}: {projector.how}")


def _load_entries(out: Path) -> dict[str, Any]:
    """The manifest's outputs keyed by file name (older manifests keyed them by type)."""
    raw = _load_manifest(out).get("outputs", {})
    entries: dict[str, Any] = {}
    if isinstance(raw, dict):
        for e in raw.values():
            if isinstance(e, dict) and isinstance(e.get("file"), str):
                entries[e["file"]] = e
    return entries


def _record(out: Path, entry: dict[str, Any]) -> dict[str, Any]:
    """Add one output to the manifest and SHA256SUMS. Both are re-read under the manifest's lock, so
    another quantize writing into the same folder (another model) keeps its entries."""
    with output_lock(out / (MANIFEST + ".update"), wait=60):
        entries = _load_entries(out)
        entries[entry["file"]] = entry
        entries = {k: e for k, e in entries.items() if (out / k).is_file()}
        manifest = {"tool_version": tool_version(), "outputs": entries}
        write_text_atomic(out / MANIFEST, json.dumps(manifest, indent=2) + "\n", lock_wait=60)
        lines = [f"{e['sha256']}  {name}" for name, e in sorted(entries.items())]
        write_text_atomic(out / SUMS, "\n".join(lines) + "\n", lock_wait=60)
    return entries


IOS_FAILURE = re.compile(r"basic_ios|iostream error|failed to write|No space", re.IGNORECASE)


def _quantize_error(source: Path, path: Path, ft: FType, error: str) -> QwythosError:
    """llama.cpp's one-line failure as a message that blames the right file."""
    if IOS_FAILURE.search(error):
        free = shutil.disk_usage(path.parent).free
        return QwythosError(
            f"llama.cpp could not write the {ft.name} output {path} ({error}): the disk is full, a quota "
            f"is reached or the device failed ({free / 2**30:.2f} GiB free in {path.parent})",
            f"free space in {path.parent} (or write elsewhere with -o) and run again; the source is fine",
        )
    return QwythosError(f"llama.cpp could not quantize {source} to {ft.name}: {error}", _hint_for(error))


def _hint_for(error: str) -> str:
    if "imatrix" in error:
        return "pass an --imatrix made for this model, or give the offending tensors a type (--mtp-type q8_0)"
    if "requantiz" in error:
        return "quantize from the BF16 GGUF, or pass --requantize"
    if "invalid data" in error:
        return "the source holds NaN/Inf values in that tensor: convert it again from an intact checkpoint"
    return "check the source GGUF (qwythos inspect)"
