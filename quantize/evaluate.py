"""Quality of quantizations against their BF16 base, the way `llama-perplexity --kl-divergence` does it.

The text is tokenized once (with the base model's vocabulary), cut into windows of `n_ctx` tokens,
and each model scores every window; for each position after the first half of a window (as
llama-perplexity scores only the second half) we compare the next-token distributions: perplexity
of each model, mean KL(base || quant), and how often both pick the same top-1 token.
`plot_png` draws bits per weight against mean KLD (log axis), one named point per type, with
matplotlib (the optional `plot` extra: `pip install 'qwythos[plot]'`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qwythos.core.errors import QwythosError
from qwythos.core.fileio import atomic_output
from qwythos.core.gguf.file import GGUFHeader
from qwythos.core.gguf.ftypes import ftype_by_id
from qwythos.core.gguf.view import GGUFView, read_view
from qwythos.core.llamacpp.handles import load_model
from qwythos.core.llamacpp.log import llama_log_to
from qwythos.core.model.release import CALIBRATION_TEXT
from qwythos.core.model.structure import check_model

EVAL_CTX = 256  # tokens per window (the second half is scored)
EVAL_MAX_WINDOWS = 8
EVAL_THREADS = 2


def default_text() -> Path:
    """The text `qwythos eval` scores by default: the bundled calibration text."""
    return CALIBRATION_TEXT


@dataclass
class EvalRow:
    file: str
    type: str
    gib: float
    bpw: float  # bits per weight: file tensor bytes * 8 / weights (all tensors)
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
    text: str = ""  # where the scored text came from (a file name), for titles


class _Scorer:
    """One loaded model (trunk only, through the runtime backend): log-probabilities per position."""

    def __init__(self, path: Path, n_ctx: int, threads: int) -> None:

        self.model = load_model(path, mtp=False, n_ctx=n_ctx)
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


def _type_name(view: GGUFView) -> str:
    ft = ftype_by_id(view.file_type if view.file_type is not None else -1)
    return ft.name if ft else "?"


def bits_per_weight(view: GGUFView | GGUFHeader) -> float:
    """Tensor bytes * 8 over the number of weights, over every tensor of the file."""
    tensors = view.tensors
    n = sum(math.prod(t.ne) for t in tensors)
    return 8 * sum(t.nbytes for t in tensors) / n if n else 0.0


def evaluate(
    base_gguf: str | Path | GGUFView,
    quant_ggufs: list[str | Path] | list[GGUFView],
    text: str,
    *,
    n_ctx: int = EVAL_CTX,
    max_windows: int = EVAL_MAX_WINDOWS,
    threads: int = EVAL_THREADS,
    text_name: str = "",
) -> EvalReport:
    """PPL, mean KLD and top-1 agreement of each quantization against `base_gguf` on `text`.
    Paths or header views (read once by the caller, as `qwythos eval` does) are taken."""
    base = as_view(base_gguf).path  # every header read (and so validated) before llama.cpp sees it
    views = [as_view(g) for g in quant_ggufs]
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
        report = EvalReport(str(base), n_scored, win, float(np.exp(base_nll / n_scored)), text=text_name)
        for q_view in views:
            q = q_view.path
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
                    type=_type_name(q_view),
                    gib=round(q.stat().st_size / 2**30, 4),
                    bpw=round(bits_per_weight(q_view), 4),
                    ppl=float(np.exp(nll / n_scored)),
                    mean_kld=float(kld / n_scored),
                    top1_agreement=float(same / n_scored),
                )
            )
    return report


# ---------------------------------------------------------------- the plot (matplotlib, optional)

PLOT_HINT = "pip install 'qwythos[plot]' (or pip install matplotlib), then run it again"


def plot_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def require_plotting() -> None:
    """Refuse early (before minutes of scoring) when matplotlib is missing."""
    if not plot_available():
        raise QwythosError("--plot needs matplotlib, which is not installed", PLOT_HINT)


def plot_png(report: EvalReport, out: str | Path) -> Path:
    """`plot_figure` written as a PNG (temp name, then renamed)."""
    fig = plot_figure(report)
    out = Path(out)
    with atomic_output(out) as tmp:
        fig.savefig(tmp, format="png")
    return out


def plot_figure(report: EvalReport):  # noqa: ANN201 - a matplotlib Figure (optional dependency)
    """Bits per weight (x) against mean KLD (y, log scale), each point named by its type and size;
    the base model and the text in the title."""
    require_plotting()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = sorted(report.rows, key=lambda r: r.bpw)
    if not rows:
        raise QwythosError("nothing to plot: no quantized files were scored", "pass at least one quant")
    positive = [r.mean_kld for r in rows if r.mean_kld > 0]
    floor = min(positive) / 10 if positive else 1e-6  # a KLD of 0 (identical files) sits on the floor
    xs = [r.bpw for r in rows]
    ys = [max(r.mean_kld, floor) for r in rows]

    fig = Figure(figsize=(8, 5.2), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(xs, ys, "-", color="#9aa7c7", linewidth=1.2, zorder=1)
    ax.scatter(xs, ys, s=36, color="#c0392b", zorder=2)
    # Files that score the same (a small model's k-quant falling back to q8_0) share one label.
    groups: list[list[int]] = []
    for i in range(len(rows)):
        g = groups[-1] if groups else None
        if g and abs(xs[i] - xs[g[0]]) < 1e-3 and abs(ys[i] - ys[g[0]]) <= 1e-9 + 1e-6 * ys[g[0]]:
            g.append(i)
        else:
            groups.append([i])
    span = (max(xs) - min(xs)) or 1.0
    prev_x = None
    below = False
    for g in groups:
        r, x, y = rows[g[0]], xs[g[0]], ys[g[0]]
        size = f"{r.gib:.2f} GiB" if r.gib >= 0.1 else f"{r.gib * 1024:.1f} MiB"
        label = " = ".join(rows[i].type for i in g) + f"\n{size}"
        if r.mean_kld <= 0:
            label += " (KLD 0)"
        below = prev_x is not None and x - prev_x < 0.06 * span and not below  # neighbours alternate
        ax.annotate(label, (x, y), xytext=(6, -22 if below else 6), textcoords="offset points", fontsize=8)
        prev_x = x
    ax.set_yscale("log")
    ax.set_xlabel("bits per weight (tensor bytes × 8 / weights)")
    ax.set_ylabel("mean KL divergence from the base (nats per token, log scale)")
    lo, hi = min(xs), max(xs)
    pad = max(0.5, 0.08 * (hi - lo))
    ax.set_xlim(lo - pad, hi + 2 * pad)
    ax.set_ylim(min(ys) / 1.5, max(ys) * 1.8)  # room for the labels above the points
    ax.grid(True, which="major", linestyle=":", linewidth=0.6)
    base = Path(report.base).name
    text = report.text or "the given text"
    ax.set_title(
        f"Quantization quality against {base}\n"
        f"text: {text}, {report.n_tokens_scored} tokens scored (windows of {report.n_ctx}), "
        f"base PPL {report.base_ppl:.3f}",
        fontsize=10,
    )
    return fig


# ---------------------------------------------------------------- before the work


def check_same_model(base: Path | GGUFView, quants: list[Path] | list[GGUFView]) -> None:
    """eval compares files of one model: same vocabulary and the same trunk tensors and shapes.
    Paths or header views (read once by the caller) are taken."""

    def shape(view: GGUFView) -> tuple[list, dict[str, tuple[int, ...]]]:
        n_nextn, n_layer = view.n_nextn, (view.n_trunk or 0)
        head = tuple(f"blk.{n_layer + k}." for k in range(n_nextn))
        tensors = {t.name: tuple(t.ne) for t in view.tensors if not (head and t.name.startswith(head))}
        return list(view.tokens or []), tensors

    base_v = as_view(base)
    for v, role, fix in (
        (base_v, "the base", "convert the BF16 base again (`qwythos convert`)"),
        *((as_view(q), "the quantization", "quantize it again from the base") for q in quants),
    ):  # a damaged file is named as such, before any comparison blames the other one
        issues = check_model(v)
        if issues:
            more = f" (and {len(issues) - 1} more problems)" if len(issues) > 1 else ""
            raise QwythosError(f"{role} {v.path} is damaged: {issues[0]}{more}", fix)
    b_vocab, b_tensors = shape(base_v)
    for q_v in map(as_view, quants):
        q = q_v.path
        if q.resolve() == base_v.path.resolve():
            raise QwythosError(
                f"{q} is the base itself", "pass the BF16 GGUF as BASE and its quantizations after it"
            )
        q_vocab, q_tensors = shape(q_v)
        if q_vocab != b_vocab:
            raise QwythosError(
                f"{q} has another vocabulary than the base {base_v.path} ({len(q_vocab)} vs {len(b_vocab)} tokens)",
                "compare quantizations of the same model as BASE",
            )
        diff = sorted(set(b_tensors) ^ set(q_tensors)) or [
            n for n in b_tensors if b_tensors[n] != q_tensors[n]
        ]
        if diff:
            n = diff[0]
            what = (
                f"{n} is {list(q_tensors[n])} there, {list(b_tensors[n])} in the base"
                if n in b_tensors and n in q_tensors
                else f"{n} is in only one of them"
            )
            raise QwythosError(
                f"{q} is not a quantization of {base_v.path}: {what}",
                "compare quantizations of the same model as BASE",
            )


def as_view(gguf: str | Path | GGUFView) -> GGUFView:
    """A header view: the one given, or the file's header read now."""
    return gguf if isinstance(gguf, GGUFView) else read_view(gguf)
