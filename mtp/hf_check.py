"""`qwythos mtp check DIR`: is a Hugging Face folder's MTP head what vLLM and SGLang will load?

Not `mtp validate` (a GGUF head's structure and measured acceptance, mtp/validate.py): nothing runs
here. Headers only (no torch, no weight matrices read; the folder is read with
core/model/checkpoint.py's `read_config` / `read_index`, every problem reported, not just the first): the config's promise (`mtp_num_hidden_layers`)
against the `mtp.*` tensors present, every name and shape against config.json, the index against
the files (every listed tensor where the index says, no tensor twice, no shard left out,
`metadata.total_size`), and the norms - the only data read, a few KB - against the trunk's own:
Qwen3.5 stores RMSNorm weights as w - 1, so a head written in GGUF form (1 + w) sits one above
the trunk's norms, and a head of zeros is an untrained one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qwythos.core.model import qwen35
from qwythos.core.model.checkpoint import (
    FLOAT_DTYPES,
    INDEX,
    TensorInfo,
    read_config,
    read_f32,
    read_index,
    read_safetensors_header,
    shard_path,
)

NORM_MARGIN = 0.25  # how far outside the trunk's norm range a head's norm may sit


@dataclass
class CheckIssue:
    where: str
    problem: str
    severity: str = "error"  # "error" | "warning"


@dataclass
class NormStat:
    name: str
    mean: float  # of the stored value (w - 1)
    trunk_range: tuple[float, float] | None  # min/max mean of the trunk's norms of the same width
    verdict: str  # "ok" | "untrained" | "+1 too much" | "-1 too much" | "not finite"


@dataclass
class HFCheckReport:
    path: Path
    mtp_promised: int
    mtp_found: int
    files: list[str] = field(default_factory=list)
    head: list[dict[str, Any]] = field(default_factory=list)  # name, shape, dtype, file
    norms: list[NormStat] = field(default_factory=list)
    issues: list[CheckIssue] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(i.severity == "error" for i in self.issues)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "path": str(self.path), "ok": self.ok}


def expected_head(cfg: qwen35.TextConfig) -> dict[str, tuple[int, ...]]:
    """HF name -> shape of the one MTP layer Qwen3.5 checkpoints carry (15 tensors)."""
    out = {n: tuple(r.shape(cfg)) for n, r in qwen35.MTP_RULES.items()}
    for n, r in qwen35.LAYER_RULES.items():
        if n.startswith(("self_attn.", "mlp.", "input_layernorm", "post_attention_layernorm")):
            out[f"mtp.layers.0.{n}"] = tuple(r.shape(cfg))
    return dict(sorted(out.items()))


def _files(
    folder: Path, issues: list[CheckIssue]
) -> tuple[dict[str, str] | None, list[str], int | None, set[str]]:
    """(weight_map or None, shard file names to read, metadata.total_size, names of the tensors the
    index places in missing shards). A shard that cannot be a safetensors file (a folder, a path
    out of the folder) raises: nothing in it can be checked."""
    on_disk = sorted(p.name for p in folder.glob("*.safetensors"))
    data = read_index(folder)
    if data is None:
        if len(on_disk) > 1:
            issues.append(CheckIssue(INDEX, f"is missing but the folder has {len(on_disk)} shards"))
        return None, on_disk, None, set()
    wmap: dict[str, str] = data["weight_map"]
    listed = sorted(set(wmap.values()))
    missing = set()
    for name in listed:
        path = shard_path(folder, name, folder / INDEX)
        if not path.exists():
            missing.add(name)
            issues.append(CheckIssue(name, f"is named in {INDEX} but missing"))
    for name in sorted(set(on_disk) - set(listed)):
        issues.append(
            CheckIssue(
                name,
                f"is not in {INDEX}: vLLM and SGLang skip it, so its tensors are never loaded",
                "warning",
            )
        )
    total = (data.get("metadata") or {}).get("total_size")
    unread = {t for t, f in wmap.items() if f in missing}
    return wmap, [n for n in listed if n not in missing], total, unread


def check_hf(folder: str | Path) -> HFCheckReport:
    """Check `folder`'s MTP head, config and index without loading any weight matrix. A file that
    cannot be read as what it claims to be (a corrupt shard, a shard that is a folder, an index
    naming a path out of the folder) ends the check with one QwythosError naming it."""
    folder = Path(folder).expanduser()
    cfg = qwen35.text_config_from(read_config(folder), where=str(folder / "config.json"))
    issues: list[CheckIssue] = []
    wmap, names, total_size, unread = _files(folder, issues)
    tensors: dict[str, TensorInfo] = {}
    for name in names:
        infos = read_safetensors_header(folder / name)
        for t, info in infos.items():
            if t in tensors:
                issues.append(CheckIssue(t, f"is in both {tensors[t].file.name} and {name}"))
            tensors[t] = info
            if wmap is not None and wmap.get(t) != name:
                where = f"lists it in {wmap[t]}" if t in wmap else "does not list it"
                issues.append(CheckIssue(t, f"is in {name} but {INDEX} {where}"))
    if wmap is not None:
        for t, f in wmap.items():
            if t not in tensors and t not in unread:
                issues.append(CheckIssue(t, f"is listed in {INDEX} under {f}, which does not hold it"))
        real = sum(i.nbytes for i in tensors.values())
        if total_size is not None and not unread and int(total_size) != real:
            issues.append(
                CheckIssue(
                    INDEX, f"metadata.total_size is {total_size}, the tensors hold {real} bytes", "warning"
                )
            )
    rep = HFCheckReport(folder, cfg.mtp_layers, 0, names, issues=issues)
    _check_head(rep, cfg, tensors, unread)
    return rep


def _check_head(
    rep: HFCheckReport, cfg: qwen35.TextConfig, tensors: dict[str, TensorInfo], unread: set[str]
) -> None:
    """The head against config.json; a tensor the index places in a missing shard is not named
    again (the missing shard is)."""
    issues = rep.issues
    want = expected_head(cfg)
    nested = sorted(n for n in tensors if n.startswith("model.mtp.") or ".mtp." in n)
    for n in nested:
        issues.append(CheckIssue(n, "is nested; vLLM and SGLang load only top-level mtp.* names"))
    head = {n: i for n, i in tensors.items() if n.startswith("mtp.")}
    rep.mtp_found = len(head)
    if not head:
        if cfg.mtp_layers and not any(n.startswith("mtp.") for n in unread):
            issues.append(
                CheckIssue(
                    "config.json",
                    f"promises mtp_num_hidden_layers {cfg.mtp_layers} but the folder has no mtp.* tensors: "
                    "vLLM refuses it (missing weights), SGLang accepts no draft. Fix: qwythos mtp restore "
                    "THIS_FOLDER --from Qwen/Qwen3.5-9B --hf NEW_FOLDER",
                )
            )
        return
    if cfg.mtp_layers == 0:
        issues.append(
            CheckIssue("config.json", "has no mtp_num_hidden_layers: vLLM and SGLang will not load the head")
        )
    elif cfg.mtp_layers != 1:
        issues.append(
            CheckIssue(
                "config.json", f"mtp_num_hidden_layers is {cfg.mtp_layers}; Qwen3.5 has exactly one MTP layer"
            )
        )
    for n, shape in want.items():
        info = head.get(n)
        if info is None:
            if n not in unread:
                issues.append(CheckIssue(n, "is missing"))
            continue
        rep.head.append({"name": n, "shape": list(info.shape), "dtype": info.dtype, "file": info.file.name})
        if info.shape != shape:
            issues.append(CheckIssue(n, f"has shape {list(info.shape)}, config.json implies {list(shape)}"))
        if info.dtype not in FLOAT_DTYPES:
            issues.append(CheckIssue(n, f"is {info.dtype}; the head must be BF16, F16 or F32"))
    for n in sorted(set(head) - set(want)):
        issues.append(CheckIssue(n, "is not part of Qwen3.5's MTP layer"))
    _check_norms(rep, cfg, tensors, {n: head[n] for n in want if n in head and head[n].shape == want[n]})


def _trunk_norm_means(tensors: dict[str, TensorInfo], width: int) -> list[float]:
    out = []
    for n, info in tensors.items():
        if n.startswith("mtp.") or "visual" in n or "linear_attn" in n:
            continue
        if n.endswith("norm.weight") and info.shape == (width,) and info.dtype in FLOAT_DTYPES:
            out.append(float(read_f32(info).mean()))
    return out


def _check_norms(
    rep: HFCheckReport, cfg: qwen35.TextConfig, tensors: dict[str, TensorInfo], head: dict[str, TensorInfo]
) -> None:
    refs: dict[int, tuple[float, float] | None] = {}
    for n, info in head.items():
        if len(info.shape) != 1 or info.dtype not in FLOAT_DTYPES:  # the norms are the 1-D ones
            continue
        width = info.shape[0]
        if width not in refs:
            means = _trunk_norm_means(tensors, width)
            refs[width] = (min(means), max(means)) if means else None
        ref = refs[width]
        x = read_f32(info)
        m = float(x.mean()) if x.size else 0.0
        lo, hi = (ref[0] - NORM_MARGIN, ref[1] + NORM_MARGIN) if ref else (-0.75, 0.75)
        if not np.isfinite(x).all():
            verdict = "not finite"
            rep.issues.append(CheckIssue(n, "holds NaN or infinite values"))
        elif not np.any(x):
            verdict = "untrained"
            rep.issues.append(
                CheckIssue(
                    n, "is all zeros (gain exactly 1, as initialised): the head looks untrained", "warning"
                )
            )
        elif lo <= m <= hi:
            verdict = "ok"
        elif lo <= m - 1 <= hi:
            verdict = "+1 too much"
            rep.issues.append(
                CheckIssue(
                    n,
                    f"mean {m:+.3f} sits one above the trunk's norms ({lo:+.2f}..{hi:+.2f}): stored as 1 + w "
                    "(GGUF form), so the engine adds 1 twice. Rewrite it with qwythos mtp restore --hf",
                )
            )
        elif lo <= m + 1 <= hi:
            verdict = "-1 too much"
            rep.issues.append(
                CheckIssue(
                    n,
                    f"mean {m:+.3f} sits one below the trunk's norms ({lo:+.2f}..{hi:+.2f}): 1 subtracted twice",
                )
            )
        else:
            verdict = "unusual"
            rep.issues.append(
                CheckIssue(
                    n, f"mean {m:+.3f} is outside the trunk's norm range {lo:+.2f}..{hi:+.2f}", "warning"
                )
            )
        rep.norms.append(NormStat(n, round(m, 4), (round(lo, 4), round(hi, 4)) if ref else None, verdict))
