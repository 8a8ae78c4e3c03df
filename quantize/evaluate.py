"""Quality of quantizations against their BF16 base, the way `llama-perplexity --kl-divergence` does it.

The text is tokenized once (with the base model's vocabulary), cut into windows of `n_ctx` tokens,
and each model scores every window; for each position after the first half of a window (as
llama-perplexity scores only the second half) we compare the next-token distributions: perplexity
of each model, mean KL(base || quant), and how often both pick the same top-1 token.
A PNG plot of size vs KLD is written with a small pure-numpy/zlib PNG encoder (no matplotlib).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qwythos.core.errors import QwythosError
from qwythos.core.fileio import atomic_output
from qwythos.core.ftypes import ftype_by_id
from qwythos.core.gguf_file import read_header
from qwythos.core.llama import load_model
from qwythos.core.llama_log import llama_log_to


@dataclass
class EvalRow:
    file: str
    type: str
    gib: float
    ppl: float
    mean_kld: float
    top1_agreement: float  # "Same top p" of llama-perplexity, as a fraction


@dataclass
class EvalReport:
    base: str
    n_tokens_scored: int
    n_ctx: int
    base_ppl: float
    rows: list[EvalRow] = field(default_factory=list)


class _Scorer:
    """One loaded model (trunk only, through the runtime backend): log-probabilities per position."""

    def __init__(self, path: Path, n_ctx: int, threads: int) -> None:

        self.model = load_model(path, mtp=False)
        try:
            self.ctx = self.model.new_target(n_ctx, n_batch=n_ctx, threads=threads)
        except BaseException:
            self.model.close()
            raise
        self.n_vocab = self.model.n_vocab

    def tokenize(self, text: str) -> list[int]:
        return self.model.tokenize(text, parse_special=False)

    def logprobs(self, tokens: list[int]) -> np.ndarray:
        self.ctx.clear()
        self.ctx.decode(tokens, 0, outputs="all")
        logits = self.ctx.logits(len(tokens)).astype(np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        return logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))

    def close(self) -> None:
        self.model.close()


def _type_name(path: Path) -> str:
    ft = ftype_by_id(int(read_header(path).kv.get("general.file_type", -1)))
    return ft.name if ft else "?"


def evaluate(
    base_gguf: str | Path,
    quant_ggufs: list[str | Path],
    text: str,
    *,
    n_ctx: int = 256,
    max_windows: int = 8,
    threads: int = 2,
) -> EvalReport:
    """PPL, mean KLD and top-1 agreement of each quantization against `base_gguf` on `text`."""
    base = Path(base_gguf)
    for p in [base, *map(Path, quant_ggufs)]:
        read_header(p)  # validates before llama.cpp sees it
    with llama_log_to(None):
        s = _Scorer(base, n_ctx, threads)
        try:
            toks = s.tokenize(text)
            if len(toks) < 2 * 16:
                raise QwythosError(
                    f"the text has only {len(toks)} tokens", "give at least a paragraph of text"
                )
            win = min(n_ctx, len(toks))
            windows = [toks[i : i + win] for i in range(0, len(toks) - win + 1, win)][:max_windows]
            base_lp = [s.logprobs(w) for w in windows]
            n_vocab = s.n_vocab
        finally:
            s.close()
        first = win // 2
        targets = [np.array(w[first + 1 :]) for w in windows]
        base_sel = [lp[first:-1] for lp in base_lp]
        n_scored = sum(len(t) for t in targets)
        base_nll = -sum(lp[np.arange(len(t)), t].sum() for lp, t in zip(base_sel, targets, strict=True))
        report = EvalReport(str(base), n_scored, win, float(np.exp(base_nll / n_scored)))
        for q in map(Path, quant_ggufs):
            qs = _Scorer(q, n_ctx, threads)
            try:
                if qs.n_vocab != n_vocab:
                    raise QwythosError(
                        f"{q} has a different vocabulary from {base}", "compare files of one model"
                    )
                nll = kld = same = 0.0
                for w, b, t in zip(windows, base_sel, targets, strict=True):
                    lq = qs.logprobs(w)[first:-1]
                    nll -= lq[np.arange(len(t)), t].sum()
                    kld += (np.exp(b) * (b - lq)).sum()
                    same += (b.argmax(axis=1) == lq.argmax(axis=1)).sum()
            finally:
                qs.close()
            report.rows.append(
                EvalRow(
                    file=str(q),
                    type=_type_name(q),
                    gib=round(q.stat().st_size / 2**30, 4),
                    ppl=float(np.exp(nll / n_scored)),
                    mean_kld=float(kld / n_scored),
                    top1_agreement=float(same / n_scored),
                )
            )
    return report


# ---------------------------------------------------------------- a PNG without matplotlib


def _png(pixels: np.ndarray) -> bytes:
    h, w, _ = pixels.shape
    raw = b"".join(b"\x00" + pixels[y].astype(np.uint8).tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def plot_png(report: EvalReport, out: str | Path, width: int = 480, height: int = 320) -> Path:
    """Size (x, GiB) against mean KLD (y, log scale): one dot per type, joined in size order."""

    img = np.full((height, width, 3), 255, dtype=np.uint8)
    m = 40
    img[height - m, m : width - m // 2] = 0  # x axis
    img[m // 2 : height - m + 1, m] = 0  # y axis
    rows = sorted(report.rows, key=lambda r: r.gib)
    if rows:
        xs = np.array([r.gib for r in rows])
        ys = np.log10(np.array([max(r.mean_kld, 1e-9) for r in rows]))
        x0, x1 = xs.min(), xs.max() if xs.max() > xs.min() else xs.min() + 1
        y0, y1 = ys.min(), ys.max() if ys.max() > ys.min() else ys.min() + 1
        px = (m + (xs - x0) / (x1 - x0) * (width - 2 * m)).astype(int)
        py = (height - m - (ys - y0) / (y1 - y0) * (height - 2 * m)).astype(int)
        for i in range(len(rows) - 1):
            for t in np.linspace(0, 1, 200):
                x = int(px[i] + t * (px[i + 1] - px[i]))
                y = int(py[i] + t * (py[i + 1] - py[i]))
                img[y, x] = (120, 120, 220)
        for x, y in zip(px, py, strict=True):
            img[max(0, y - 3) : y + 4, max(0, x - 3) : x + 4] = (200, 30, 30)
    out = Path(out)
    with atomic_output(out) as tmp:
        tmp.write_bytes(_png(img))
    return out
