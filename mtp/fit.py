"""`qwythos mtp fit`: re-fit an MTP head to the trunk it now serves, the trunk frozen byte for byte.

1. collect (mtp/fit_data.py): llama.cpp runs the GGUF trunk over the text; its post-norm hidden
   states and top-k next-token logits go to chunks in a work folder (resumable);
2. train (mtp/fit_train.py): the head (mtp/fit_head.py, llama.cpp's MTP forward in torch) learns
   the trunk's own distributions, depth by depth on its own fed-back state; only eh_proj, the
   enorm/hnorm norms, the attention block and shared_head_norm change;
3. write (mtp/restore.py): the trained head goes back through the graft path, every matrix in the
   type it had (or --type), the trunk's tensors copied byte for byte; or a separate draft GGUF.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from gguf import GGMLQuantizationType

from qwythos.core.errors import QwythosError
from qwythos.core.fileio import check_output_path
from qwythos.core.gguf.file import read_header
from qwythos.core.model.arch import ARCH
from qwythos.core.model.structure import HEAD_MATRICES, dims_from_header, has_trunk

INSTALL_HINT = "pip install 'qwythos[fit]' (CPU-only machines: pip install torch==2.13.0)"


FIT_LR = 1e-3  # peak learning rate when the head starts trained
INIT_LR = 3e-3  # ... and when it starts fresh (--init)


@dataclass
class TrainSettings:
    """What training reads (mtp/fit_train.py); all of it goes into the resume key."""

    steps: int = 300
    batch: int = 4
    lr: float = FIT_LR
    depths: int = 3
    negatives: int = 1024
    seed: int = 0
    eval_every: int = 50
    save_every: int = 25
    full_vocab: bool | None = None  # None: whole vocabulary when it is small


@dataclass
class FitSettings(TrainSettings):
    """TrainSettings plus what collection reads; `lr` None picks FIT_LR or INIT_LR."""

    lr: float | None = None  # type: ignore[assignment]
    tokens: int = 200_000
    seq: int = 512
    top_k: int = 32

    def check(self) -> FitSettings:
        """Every number checked before any work: one message naming the flag."""
        for what, v, lo in (
            ("--steps", self.steps, 1),
            ("--tokens", self.tokens, 16),
            ("--depths", self.depths, 1),
            ("--seq", self.seq, 2),  # a sequence of one token has nothing after it to predict
            ("--batch", self.batch, 1),
        ):
            if v < lo:
                raise QwythosError(f"{what} {v} is too small", f"use at least {lo}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise QwythosError(
                f"--lr {self.lr} is not a learning rate", f"use a small positive number, e.g. --lr {FIT_LR}"
            )
        return self

    def train_settings(self, init: bool) -> TrainSettings:
        """The training part alone (the resume key must not change with collection settings)."""
        kw = {f.name: getattr(self, f.name) for f in fields(TrainSettings)}
        return TrainSettings(**{**kw, "lr": self.lr or (INIT_LR if init else FIT_LR)})


#: the numbers FitResult takes from the TrainResult as they are
FROM_TRAINING = (
    "steps",
    "resumed_from",
    "loss",
    "accept_before",
    "accept_after",
    "train_sequences",
    "held_out_sequences",
    "steps_per_s",
    "device",
)


@dataclass
class FitResult:
    output: Path
    model: str
    mode: str  # grafted | separate
    start: str  # "the head in MODEL", "--head SRC" or "fresh (--init)"
    work: str
    tokens: int
    sequences: int
    train_sequences: int
    held_out_sequences: int
    collect_seconds: float
    collect_tok_s: float
    steps: int
    resumed_from: int
    loss: float | None
    accept_before: list[float]
    accept_after: list[float]
    train_seconds: float
    steps_per_s: float
    device: str
    head_types: dict[str, str] = field(default_factory=dict)
    bytes_written: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["output"] = str(self.output)
        return d


def require_torch() -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise QwythosError(
            "`qwythos mtp fit` trains the head with PyTorch, which is not installed", INSTALL_HINT
        ) from None


def default_output(model: Path, separate: bool) -> Path:
    stem = model.name[:-5] if model.name.endswith(".gguf") else model.name
    return model.with_name(f"mtp-{stem}-fit.gguf" if separate else f"{stem}-fit.gguf")


def _start_head(model_hdr, head_src: str | Path | None, init: bool, seed: int, notes: list[str]):
    """(float32 tensors, per-matrix GGML types, description) of the head training starts from."""
    from qwythos.mtp.fit_head import TRAINED, init_tensors
    from qwythos.mtp.restore import check_compatible
    from qwythos.mtp.sources import dequantize, open_gguf_head, open_head

    dims = dims_from_header(model_hdr)
    if init:
        return init_tensors(dims, seed), {}, "fresh (--init)"
    if head_src is not None:
        head, what = open_head(head_src), f"--head {head_src}"
    elif int(model_hdr.kv.get(f"{ARCH}.nextn_predict_layers", 0) or 0):
        head, what = open_gguf_head(model_hdr.path), f"the head in {model_hdr.path.name}"
    else:
        raise QwythosError(
            f"{model_hdr.path} has no MTP head to fit",
            "restore one first (`qwythos mtp restore`), pass --head SRC, or start a fresh one with --init",
        )
    check_compatible(model_hdr, head, str(head_src or model_hdr.path))
    own = [
        t.name
        for t in head.tensors
        if t.name in ("nextn.embed_tokens.weight", "nextn.shared_head_head.weight")
    ]
    if own:
        raise QwythosError(
            f"the head carries its own {own[0]}; `mtp fit` trains heads that share the trunk's matrices",
            "use a Qwen3.5 head (no nextn.embed_tokens / shared_head_head)",
        )
    tensors = {t.name: dequantize(t) for t in head.tensors if t.name in TRAINED}
    types = {t.name: t.ggml_type for t in head.tensors if t.name in HEAD_MATRICES}
    return tensors, types, what


def _keep_types(types: dict[str, GGMLQuantizationType], notes: list[str]) -> dict[str, GGMLQuantizationType]:
    """Each matrix back in its own type where the graft path can write it (else q8_0, noted)."""
    from qwythos.mtp.restore import HEAD_TYPES

    writable = set(HEAD_TYPES.values())
    out = {}
    for name, t in types.items():
        if t in writable:
            out[name] = t
        else:
            out[name] = GGMLQuantizationType.Q8_0
            notes.append(f"{name} was {t.name}, which the graft path cannot write: written as Q8_0")
    return out


def fit(
    model: str | Path,
    *,
    texts: list[Path] | None = None,
    bundled: bool | None = None,
    out: str | Path | None = None,
    head: str | Path | None = None,
    init: bool = False,
    head_type: str | None = None,
    separate: bool = False,
    settings: FitSettings | None = None,
    threads: int | None = None,
    device: str | None = None,
    work: str | Path | None = None,
    force: bool = False,
    progress: Callable[[str, Any], None] | None = None,
) -> FitResult:
    """Collect, train, write (see the module docstring). Returns what was done and measured."""
    s = (settings or FitSettings()).check()
    require_torch()
    import torch

    from qwythos.mtp.fit_data import collect
    from qwythos.mtp.fit_text import documents
    from qwythos.mtp.fit_train import train
    from qwythos.mtp.restore import DEFAULT_HEAD_TYPE, HEAD_TYPES, restore
    from qwythos.mtp.sources import HeadSource, HeadTensor

    t0 = time.perf_counter()
    model = Path(model)
    hdr = read_header(model)
    if hdr.kv.get("general.architecture") != ARCH or not has_trunk(hdr):
        raise QwythosError(f"{model} is not a qwen35 model with its trunk", "pass the main model GGUF")
    if head_type is not None and head_type.lower() not in HEAD_TYPES:
        raise QwythosError(f"unknown head --type {head_type}", f"use one of {', '.join(HEAD_TYPES)}")
    out_path = Path(out) if out is not None else default_output(model, separate)
    if out_path.resolve() == model.resolve():
        raise QwythosError(
            f"{out_path} is the model itself", "write the fitted model to another file with -o"
        )
    check_output_path(out_path, force=force, inputs=[model])
    work_dir = Path(work) if work is not None else out_path.with_name(out_path.name + ".work")
    notes: list[str] = []
    tensors, types, start = _start_head(hdr, head, init, s.seed, notes)
    if threads:
        torch.set_num_threads(threads)
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")

    # 1. collect
    docs = documents(texts, hdr.kv.get("tokenizer.chat_template"), bundled=bundled)
    tc = time.perf_counter()
    store = collect(
        model,
        docs,
        work_dir,
        seq=s.seq,
        top_k=s.top_k,
        max_tokens=s.tokens,
        threads=threads,
        progress=(lambda p: progress("collect", p)) if progress else None,
    )
    collect_s = time.perf_counter() - tc
    n_tok = store.n_seq * store.spec.seq

    # 2. train
    mtp, vocab = build_head(hdr, tensors, dev)
    ts = s.train_settings(init)
    tr = train(
        mtp,
        vocab,
        store,
        ts,
        device=dev,
        state_dir=work_dir,
        progress=(lambda p: progress("train", p)) if progress else None,
    )

    # 3. write
    trained = mtp.tensors()
    dims_src = HeadSource(
        "fit",
        model,
        dims_from_header(hdr),
        [
            HeadTensor(n, a.shape, GGMLQuantizationType.F32, a.nbytes, (lambda a=a: a), None, "mtp fit")
            for n, a in trained.items()
        ],
    )
    keep = {} if head_type is not None else _keep_types(types, notes)
    r = restore(
        model,
        dims_src,
        out_path,
        separate=separate,
        head_type=head_type or DEFAULT_HEAD_TYPE,
        force=force,
        replace=True,
        types=keep,
        progress=(lambda name, i, n: progress("write", (name, i, n))) if progress else None,
    )
    notes += r.notes
    notes.append(
        f"work folder {work_dir} ({store.nbytes() / 2**20:.1f} MiB) lets a later run resume; delete it when done"
    )
    return FitResult(
        output=r.output,
        model=str(model),
        mode=r.mode,
        start=start,
        work=str(work_dir),
        tokens=n_tok,
        sequences=store.n_seq,
        collect_seconds=round(collect_s, 2),
        collect_tok_s=round(n_tok / collect_s, 1) if collect_s > 0 else 0.0,
        train_seconds=tr.seconds,
        **{k: getattr(tr, k) for k in FROM_TRAINING},
        head_types={row["name"]: row["type"] for row in r.head_tensors},
        bytes_written=r.bytes_written,
        seconds=round(time.perf_counter() - t0, 2),
        notes=notes,
    )


def build_head(hdr, tensors: dict, device: str = "cpu"):
    """(MTPHead, Vocab) for the model of `hdr`, starting from float32 `tensors` (GGUF names)."""
    import numpy as np
    import torch

    from qwythos.mtp.fit_head import MTPHead, rope_from_kv
    from qwythos.mtp.fit_vocab import Vocab

    dims = dims_from_header(hdr)
    eps = float(hdr.kv.get(f"{ARCH}.attention.layer_norm_rms_eps", 1e-6))
    mtp = MTPHead(dims, eps, rope_from_kv(hdr.kv, ARCH, dims.head_dim), tensors)
    if not mtp.has("nextn.shared_head_norm.weight"):
        mtp.output_norm = torch.from_numpy(np.asarray(_trunk_tensor(hdr, "output_norm.weight"))).to(device)
    return mtp.to(device), Vocab(hdr, device)


def load_head(
    model: str | Path,
    *,
    head: str | Path | None = None,
    init: bool = False,
    seed: int = 0,
    device: str = "cpu",
):
    """(MTPHead, Vocab, start description) of MODEL's head, another head, or a fresh one."""
    require_torch()
    hdr = read_header(model)
    tensors, _, start = _start_head(hdr, head, init, seed, [])
    mtp, vocab = build_head(hdr, tensors, device)
    return mtp, vocab, start


def _trunk_tensor(hdr, name: str):
    import numpy as np

    from qwythos.mtp.fit_vocab import dequantize_rows

    t = next(t for t in hdr.tensors if t.name == name)
    raw = np.fromfile(hdr.path, dtype=np.uint8, count=t.nbytes, offset=t.offset)
    return dequantize_rows(raw.reshape(1, -1), GGMLQuantizationType(t.ggml_type), t.shape[-1])[0]
