"""`qwythos imatrix`: an importance matrix for a qwen35 GGUF, the MTP head included.

The text is tokenized once and cut into chunks of `ctx` tokens, as llama-imatrix cuts it (a BOS in
front of each chunk when the vocabulary asks for one; the remainder shorter than a chunk is
dropped). Each chunk is decoded from an empty cache by the trunk; a collector on the context's eval
callback sums the squared inputs of every weight matrix (quantize/imatrix_collect.py). The target
context outputs the post-norm hidden state of every row, so every layer, the last one too, sees
every row, as llama-imatrix's all-logits batches make it.

The head: llama-imatrix never runs the MTP (nextn) block (llama.cpp #22673). Here, when the file has
one, the MTP context then reads the same chunk the way decoding feeds it: row p is token x_p paired
with the trunk's hidden state h_{p-1} (zeros before the first token, as a fresh prompt starts), so
eh_proj, the head's attention and FFN get data under their GGUF names (blk.N.nextn.eh_proj.weight,
blk.N.attn_q.weight, ...).

The result is written in llama-imatrix's GGUF form (quantize/imatrix_file.py). Every minute, and
on Ctrl-C, the totals at the last finished chunk go to OUT.checkpoint, which a rerun of the same
command continues from; nothing is ever written under the final name before the last chunk.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qwythos.core.errors import QwythosError
from qwythos.core.fileio import atomic_output, check_output_path, read_text_input, register_inputs
from qwythos.core.gguf.view import read_view
from qwythos.core.llamacpp import interrupt
from qwythos.core.llamacpp.handles import load_model
from qwythos.core.llamacpp.log import llama_log_to
from qwythos.core.model.arch import check_arch
from qwythos.quantize.imatrix_checkpoint import (
    CHECKPOINT_SUFFIX,
    checkpoint_path,
    load_checkpoint,
    remove_checkpoint,
    save_checkpoint,
)
from qwythos.quantize.imatrix_collect import MIN_ROWS, Collector
from qwythos.quantize.imatrix_file import ImatrixData, write_imatrix
from qwythos.quantize.source import file_fingerprint

#: The bundled calibration text (chat, code, reasoning, several languages; written for qwythos).
CALIBRATION = Path(__file__).resolve().parents[1] / "data" / "imatrix-calibration.txt"
#: Tokens per chunk: llama-imatrix's default context.
DEFAULT_CTX = 512
MIN_CTX = 2 * MIN_ROWS
#: Seconds of work between checkpoints (and one on Ctrl-C).
CHECKPOINT_EVERY_S = 60.0
OUTPUT_SUFFIX = ".imatrix.gguf"

Progress = Callable[[int, int], None]  # (tokens done, tokens in all)


@dataclass
class ImatrixReport:
    model: str
    output: str
    datasets: list[str]
    chunk_size: int
    chunks: int  # chunks in the file
    text_tokens: int
    entries: int  # weight matrices with data
    head_entries: int  # ... of them in the MTP block
    head: bool  # the MTP block was run
    resumed_from: int  # chunks taken from a checkpoint
    seconds: float  # this run's work (after loading)
    tokens_per_s: float
    bytes: int
    notes: list[str] = field(default_factory=list)


def default_output(model: Path) -> Path:
    """MODEL.imatrix.gguf beside the model (MODEL without .gguf)."""
    stem = model.name[: -len(".gguf")] if model.name.endswith(".gguf") else model.name
    return model.with_name(stem + OUTPUT_SUFFIX)


def check_flags(ctx: int, chunks: int | None, threads: int | None) -> None:
    if ctx < MIN_CTX:
        raise QwythosError(
            f"--ctx {ctx} is too small: a chunk must have at least {MIN_CTX} tokens",
            f"use --ctx {DEFAULT_CTX} (llama-imatrix's default)",
        )
    if chunks is not None and chunks < 1:
        raise QwythosError(f"--chunks {chunks} must be at least 1", "leave it out to use the whole text")
    if threads is not None and threads < 1:
        raise QwythosError(f"-t {threads} must be at least 1", "leave it out to use every core")


def read_texts(texts: list[str | Path] | None) -> tuple[str, list[str]]:
    """The calibration text (files joined by blank lines) and the dataset names the file records."""
    paths = [Path(t) for t in texts] if texts else [CALIBRATION]
    parts = []
    for p in paths:
        s = read_text_input(p, "--text")
        if not s.strip():
            raise QwythosError(f"--text {p} is empty", "pass a text file with some content")
        parts.append(s)
    return "\n\n".join(parts), [p.name for p in paths]


def compute_imatrix(
    model: str | Path,
    out: str | Path | None = None,
    texts: list[str | Path] | None = None,
    *,
    chunks: int | None = None,
    ctx: int = DEFAULT_CTX,
    threads: int | None = None,
    head: bool = True,
    force: bool = False,
    progress: Progress | None = None,
    checkpoint_every_s: float = CHECKPOINT_EVERY_S,
) -> ImatrixReport:
    """Collect the importance matrix of `model` over `texts` (default: the bundled calibration text)
    and write it to `out`; see the module docstring."""
    model = Path(model)
    check_arch(read_view(model), "compute importance matrices for")
    check_flags(ctx, chunks, threads)
    out = Path(out) if out is not None else default_output(model)
    if out.name.endswith(CHECKPOINT_SUFFIX):
        raise QwythosError(f"-o {out} is a checkpoint's name", "name the output like imatrix.gguf")
    check_output_path(out, force=force, inputs=[model, *(texts or [])])
    text, datasets = read_texts(texts)
    register_inputs(model, *(texts or []))
    with llama_log_to(None):
        m = load_model(model, mtp=None if head else False)
        try:
            chunks_of = _chunking(m, model, text, ctx, chunks)
            return _run(m, chunks_of, out, datasets, threads, progress, checkpoint_every_s)
        finally:
            m.close()


@dataclass
class _Chunking:
    """The text as llama-imatrix cuts it, and the key a checkpoint of this run carries."""

    model: Path
    tokens: np.ndarray
    ctx: int
    n_chunk: int
    bos: int | None  # put in front of every chunk when the vocabulary asks for a BOS
    key: str

    def chunk(self, i: int) -> np.ndarray:
        seg = self.tokens[i * self.ctx : (i + 1) * self.ctx].copy()
        if self.bos is not None:
            seg[0] = self.bos
        return seg


def _chunking(m, model: Path, text: str, ctx: int, chunks: int | None) -> _Chunking:  # noqa: ANN001 - a handles.Model
    """llama-imatrix's tokenization (special tokens added, written ones not parsed) and chunks."""
    import llama_cpp

    toks = np.asarray(m.tokenize(text, add_special=True, parse_special=False), dtype=np.int32)
    n_chunk = len(toks) // ctx
    if n_chunk < 1:
        raise QwythosError(
            f"the text has {len(toks)} tokens, shorter than one chunk of {ctx}",
            f"pass a longer --text, or a smaller --ctx (at least {MIN_CTX})",
        )
    bos = int(llama_cpp.llama_vocab_bos(m.vocab)) if llama_cpp.llama_vocab_get_add_bos(m.vocab) else None
    key = json.dumps([file_fingerprint(model), hashlib.sha256(toks.tobytes()).hexdigest(), ctx, m.mtp_loaded])
    return _Chunking(model, toks, ctx, min(n_chunk, chunks or n_chunk), bos, key)


def _resume(ckpt: Path, plan: _Chunking, collector: Collector, notes: list[str]) -> int:
    """Chunks already summed by an interrupted run of the same command (their totals loaded)."""
    resumed = load_checkpoint(ckpt, plan.key)
    if resumed is not None and resumed[0] <= plan.n_chunk:
        collector.totals = resumed[1]
        notes.append(f"resumed after chunk {resumed[0]} from {ckpt.name}")
        return resumed[0]
    if resumed is not None:
        notes.append(
            f"{ckpt.name} holds {resumed[0]} chunks, more than --chunks {plan.n_chunk}: started over"
        )
    elif ckpt.exists():
        notes.append(f"{ckpt.name} belongs to another run (model, text or --ctx): started over")
    return 0


def _run(m, plan: _Chunking, out: Path, datasets, threads, progress, every) -> ImatrixReport:  # noqa: ANN001
    ctx, n_chunk = plan.ctx, plan.n_chunk
    notes: list[str] = []
    ckpt = checkpoint_path(out)
    collector = Collector()
    start = done = _resume(ckpt, plan, collector, notes)
    tgt = m.new_target(ctx, n_draft=1, n_batch=ctx, threads=threads, eval_callback=collector.callback)
    head = m.mtp_loaded
    mtp = m.new_draft(ctx, n_batch=ctx, threads=threads, eval_callback=collector.callback) if head else None
    zero = np.zeros((1, m.n_embd), dtype=np.float32)
    t0 = last_save = time.perf_counter()
    if progress is not None:
        progress(done * ctx, n_chunk * ctx)
    with atomic_output(out) as tmp:
        try:
            for i in range(start, n_chunk):
                seg = plan.chunk(i)
                with interrupt.deferred():  # a Ctrl-C never lands inside the Python callback
                    tgt.clear()
                    tgt.decode(seg, 0, outputs="last")  # every row reaches every layer (hidden states)
                    collector.check()
                    if mtp is not None:  # row p: token x_p with the trunk's h_{p-1}, as decoding pairs them
                        mtp.clear()
                        mtp.decode(
                            seg, 0, outputs="last", hidden=np.concatenate([zero, tgt.hidden(ctx)[:-1]])
                        )
                    collector.commit()  # all of the chunk's sums or none of them
                    done = i + 1
                if progress is not None:
                    progress(done * ctx, n_chunk * ctx)
                if done < n_chunk and time.perf_counter() - last_save >= every:
                    save_checkpoint(ckpt, plan.key, done, collector.totals)
                    last_save = time.perf_counter()
        except KeyboardInterrupt:
            collector.discard()
            if done > start:
                save_checkpoint(ckpt, plan.key, done, collector.totals)
            raise
        seconds = time.perf_counter() - t0
        data = ImatrixData(
            sums={n: s.sums for n, s in collector.totals.items()},
            counts={n: s.counts for n, s in collector.totals.items()},
            datasets=datasets,
            chunk_count=n_chunk,
            chunk_size=ctx,
        )
        size = write_imatrix(tmp, data)
    remove_checkpoint(ckpt)
    head_entries = sum(1 for n in data.sums if n.startswith(f"blk.{m.info.n_layer}."))
    if head and head_entries == 0:
        notes.append("the MTP block produced no data")
    return ImatrixReport(
        model=str(plan.model),
        output=str(out),
        datasets=datasets,
        chunk_size=ctx,
        chunks=n_chunk,
        text_tokens=len(plan.tokens),
        entries=len(data.sums),
        head_entries=head_entries,
        head=head,
        resumed_from=start,
        seconds=round(seconds, 3),
        tokens_per_s=round((n_chunk - start) * ctx / seconds, 1) if seconds > 0 else 0.0,
        bytes=size,
        notes=notes,
    )
