"""Collect what the head learns from: the trunk's post-norm hidden states and next-token top-k.

llama.cpp runs the GGUF trunk over the text in fixed-length sequences (a fresh context each) and
gives, at every position, the post-norm hidden state h_t (the MTP head's input) and the logits. A
chunk of sequences is stored as .npy files in its own folder, written under a temporary name and
renamed when complete: tokens (int32), hidden (float16, float32 if a value would overflow), the
top-k logits (float16) with their token ids (int32), and the greedy token (int32, the full
vocabulary's argmax). Memory stays at one chunk whatever the text size, and an interrupted
collection resumes at the first missing chunk, as long as the manifest (model file, text tokens,
sequence length, k) still matches.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from qwythos.core.errors import QwythosError
from qwythos.core.fileio import ensure_writable_dir

FORMAT = 1
MANIFEST = "collect.json"
CHUNK_BYTES = 64 * 2**20  # hidden-state bytes per chunk
ARRAYS = ("tokens", "hidden", "topi", "topv", "greedy")


@dataclass
class CollectSpec:
    format: int
    model: str
    model_size: int
    model_mtime_ns: int
    n_embd: int
    n_vocab: int
    seq: int
    top_k: int
    n_seq: int
    seqs_per_chunk: int
    tokens_sha256: str


@dataclass
class CollectProgress:
    tokens_done: int
    tokens_total: int
    seconds: float


class ChunkStore:
    """The collected sequences of one work folder (chunks memory-mapped on demand)."""

    def __init__(self, folder: Path, spec: CollectSpec) -> None:
        self.folder = folder
        self.spec = spec
        self._open: dict[int, dict[str, np.ndarray]] = {}

    @property
    def n_seq(self) -> int:
        return self.spec.n_seq

    @property
    def n_chunks(self) -> int:
        return -(-self.spec.n_seq // self.spec.seqs_per_chunk)

    def chunk_dir(self, i: int) -> Path:
        return self.folder / f"chunk-{i:05d}"

    def complete(self, i: int) -> bool:
        return (self.chunk_dir(i) / "greedy.npy").is_file()

    def chunk(self, i: int) -> dict[str, np.ndarray]:
        if i not in self._open:
            d = self.chunk_dir(i)
            self._open[i] = {a: np.load(d / f"{a}.npy", mmap_mode="r") for a in ARRAYS}
        return self._open[i]

    def sequences(self, idx: list[int] | np.ndarray) -> dict[str, np.ndarray]:
        """Arrays of the sequences `idx` (global indices), stacked, float32 for hidden and topv."""
        per = self.spec.seqs_per_chunk
        parts = [{a: self.chunk(int(i) // per)[a][int(i) % per] for a in ARRAYS} for i in idx]
        out = {a: np.stack([p[a] for p in parts]) for a in ARRAYS}
        out["hidden"] = out["hidden"].astype(np.float32)
        out["topv"] = out["topv"].astype(np.float32)
        return out

    def nbytes(self) -> int:
        return sum(f.stat().st_size for f in self.folder.glob("chunk-*/*.npy"))


def tokens_for(model, docs, seq: int, max_tokens: int) -> np.ndarray:
    """(n_seq, seq) int32: the documents tokenized by the model, joined by an end-of-text token,
    cut into sequences (at most max_tokens tokens; shorter text gives one shorter sequence)."""
    sep = model.token_id("<|endoftext|>")
    stream: list[int] = []
    for d in docs:
        stream += model.tokenize(d.text, parse_special=True)
        if sep is not None:
            stream.append(sep)
        if len(stream) >= max_tokens:
            break
    stream = stream[:max_tokens]
    if len(stream) < 16:
        raise QwythosError(
            f"the text gives only {len(stream)} tokens",
            "pass longer --text files (a few thousand tokens at least)",
        )
    seq = min(seq, len(stream))
    n = len(stream) // seq
    return np.asarray(stream[: n * seq], dtype=np.int32).reshape(n, seq)


def _spec(model, model_path: Path, toks: np.ndarray, top_k: int) -> CollectSpec:
    st = model_path.stat()
    seq = toks.shape[1]
    per = max(1, min(len(toks), CHUNK_BYTES // (seq * model.n_embd * 2)))
    return CollectSpec(
        FORMAT,
        str(model_path.resolve()),
        st.st_size,
        st.st_mtime_ns,
        model.n_embd,
        model.n_vocab,
        seq,
        top_k,
        len(toks),
        per,
        hashlib.sha256(toks.tobytes()).hexdigest(),
    )


def open_store(folder: Path) -> ChunkStore | None:
    m = folder / MANIFEST
    if not m.is_file():
        return None
    try:
        spec = CollectSpec(**json.loads(m.read_text()))
    except (TypeError, ValueError):
        return None
    return ChunkStore(folder, spec)


def _top_k(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    part = np.argpartition(logits, -k, axis=1)[:, -k:]
    vals = np.take_along_axis(logits, part, 1)
    order = np.argsort(-vals, axis=1, kind="stable")
    return np.take_along_axis(part, order, 1).astype(np.int32), np.take_along_axis(vals, order, 1)


def _write_chunk(store: ChunkStore, i: int, arrays: dict[str, np.ndarray]) -> None:
    final = store.chunk_dir(i)
    tmp = final.with_name(final.name + f".{os.getpid()}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        for a in ARRAYS:  # greedy last: its presence marks a complete chunk
            np.save(tmp / f"{a}.npy", arrays[a])
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def collect(
    model_path: str | Path,
    docs,
    work: str | Path,
    *,
    seq: int = 512,
    top_k: int = 32,
    max_tokens: int = 200_000,
    threads: int | None = None,
    token_ids: np.ndarray | None = None,
    progress: Callable[[CollectProgress], None] | None = None,
) -> ChunkStore:
    """Run the trunk over `docs` (or the (n_seq, seq) `token_ids`) and store hidden states + top-k
    logits in `work` (resumable)."""
    from qwythos.core.llamacpp.handles import load_model

    model_path = Path(model_path)
    work = Path(work)
    ensure_writable_dir(work, "work folder")
    model = load_model(model_path, mtp=False)
    try:
        if top_k < 1 or top_k > model.n_vocab:
            raise QwythosError(f"--top-k {top_k} is out of range", f"use 1..{model.n_vocab}")
        toks = (
            tokens_for(model, docs, seq, max_tokens) if token_ids is None else np.asarray(token_ids, np.int32)
        )
        spec = _spec(model, model_path, toks, top_k)
        old = open_store(work)
        if old is not None and old.spec != spec:
            # another model, text or setting: the old chunks cannot be reused
            for d in work.glob("chunk-*"):
                shutil.rmtree(d, ignore_errors=True)
        (work / MANIFEST).write_text(json.dumps(asdict(spec), indent=2) + "\n")
        store = ChunkStore(work, spec)
        n_seq, seq = toks.shape
        t0 = time.perf_counter()
        done = (
            sum(
                min(spec.seqs_per_chunk, n_seq - i * spec.seqs_per_chunk)
                for i in range(store.n_chunks)
                if store.complete(i)
            )
            * seq
        )
        if progress:
            progress(CollectProgress(done, n_seq * seq, 0.0))
        ctx = None
        for c in range(store.n_chunks):
            if store.complete(c):
                continue
            if ctx is None:
                ctx = model.new_target(seq, n_draft=1, n_batch=min(512, seq), threads=threads)
            rows = range(c * spec.seqs_per_chunk, min(n_seq, (c + 1) * spec.seqs_per_chunk))
            n = len(rows)
            hidden = np.empty((n, seq, model.n_embd), dtype=np.float32)
            topi = np.empty((n, seq, top_k), dtype=np.int32)
            topv = np.empty((n, seq, top_k), dtype=np.float32)
            greedy = np.empty((n, seq), dtype=np.int32)
            for j, r in enumerate(rows):
                ctx.clear()
                for s in range(0, seq, ctx.n_batch):
                    part = toks[r, s : s + ctx.n_batch]
                    ctx.decode(part.tolist(), s, outputs="all")
                    lg = ctx.logits(len(part))
                    hidden[j, s : s + len(part)] = ctx.hidden(len(part))
                    greedy[j, s : s + len(part)] = lg.argmax(axis=1)
                    topi[j, s : s + len(part)], topv[j, s : s + len(part)] = _top_k(lg, top_k)
                done += seq
                if progress:
                    progress(CollectProgress(done, n_seq * seq, time.perf_counter() - t0))
            big = np.abs(hidden).max() > 60000
            _write_chunk(
                store,
                c,
                {
                    "tokens": toks[rows.start : rows.stop],
                    "hidden": hidden if big else hidden.astype(np.float16),
                    "topi": topi,
                    "topv": topv.astype(np.float16),
                    "greedy": greedy,
                },
            )
        return store
    finally:
        model.close()
