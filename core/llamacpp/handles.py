"""The one place that builds llama-cpp-python handles: models, target contexts, MTP draft contexts.

Everything goes through llama-cpp-python's low-level (ctypes) API. A GGUF is read and checked in
Python first (`read_model_info`), so llama.cpp never sees a file we have not validated.

- `load_model(path, mtp=None)` loads the weights, with the nextn (MTP) layer when the file has one,
  its layers where `-ngl` says (`auto` by default: core/llamacpp/placement.py decides from the GPUs'
  free memory at the run's context; no GPU device: every layer on the CPU). The MTP context runs
  where its layer was placed (llama.cpp computes each layer on the device holding its weights).
- `Model.new_target(n_ctx, n_draft)` is the target context: it outputs the post-norm hidden state
  of every token (the MTP head's input) and keeps `n_draft` recurrent-state snapshots so a verify
  batch can be rolled back past a rejected draft (`n_rs_seq`).
- `Model.new_draft(n_ctx)` is the MTP context (`LLAMA_CONTEXT_TYPE_MTP`): its own KV cache for the
  one nextn block; each input row is a token plus the hidden state of the position before it.
- `Batch` owns numpy arrays that a `llama_batch` struct points into: filling a batch is numpy
  slicing, not a Python loop per field.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qwythos.core import limits
from qwythos.core.drafting.lengths import MAX_DRAFT
from qwythos.core.errors import QwythosError
from qwythos.core.gguf.view import GGUFView, read_view
from qwythos.core.llamacpp import interrupt
from qwythos.core.llamacpp import placement as _placement
from qwythos.core.llamacpp import repack as _repack
from qwythos.core.llamacpp import rpc as _rpc
from qwythos.core.llamacpp.devices import Device, list_devices, note_missing_gpu
from qwythos.core.llamacpp.log import _ext, _llama, llama_log_to, quiet_llama_logs  # noqa: F401 - llama_log_to re-exported
from qwythos.core.llamacpp.probe import safe_model_kwargs
from qwythos.core.model.arch import check_arch
from qwythos.core.model.memory import KV_TYPES, model_memory
from qwythos.core.model.release import START_CONTEXT
from qwythos.core.model.structure import check_model
from qwythos.core.model.vocab import special_texts

#: The KV cache type of every context built here (llama.cpp's default), as placement counts it.
KV_TYPE = KV_TYPES[0]


_BACKEND_READY = False


def _init_backend() -> None:
    global _BACKEND_READY
    if not _BACKEND_READY:
        quiet_llama_logs()
        note_missing_gpu()  # a GPU build without its GPU here: one note that the CPU runs everything
        _llama().llama_backend_init()
        _BACKEND_READY = True


def default_threads() -> int:
    """Threads for llama.cpp: QWYTHOS_THREADS (checked: a bad value is one message naming it), else
    the CPUs this process may run on."""
    return limits.env_threads() or limits.cpu_count()


@dataclass
class ModelInfo:
    """What the runtime needs to know about a GGUF, read from its header before loading."""

    path: Path
    arch: str
    n_layer: int  # trunk layers (block_count minus nextn layers)
    n_nextn: int  # nextn (MTP) layers declared by the metadata
    has_mtp_tensors: bool  # the declared nextn block's tensors are actually in the file
    n_embd: int
    n_vocab: int
    context_length: int
    chat_template: str | None
    name: str = ""
    file_type: int | None = None
    kv: dict = field(default_factory=dict, repr=False)
    control_texts: tuple[str, ...] = ()  # the vocabulary's control and user-defined token texts
    markup_texts: tuple[str, ...] = ()

    @property
    def has_mtp(self) -> bool:
        return self.n_nextn > 0 and self.has_mtp_tensors


def read_model_info(path: str | Path | GGUFView) -> ModelInfo:
    """Parse (or take the parsed) GGUF header and check it; raise QwythosError naming the file when it
    is unusable."""
    view = path if isinstance(path, GGUFView) else read_view(path)
    path = view.path
    check_arch(view, "run")
    arch = view.arch
    n_nextn, n_layer = view.n_nextn, view.n_trunk or 0
    if n_nextn > 0 and not view.has_mtp:
        raise QwythosError(
            f"{path} declares {n_nextn} MTP (nextn) layer(s) but has no blk.{n_layer}.nextn.* tensors",
            "llama.cpp cannot load it: restore the head with `qwythos mtp restore`, or convert again "
            "with --no-mtp",
        )
    if not view.vocab_size or "token_embd.weight" not in view.by_name:
        raise QwythosError(f"{path} has no vocabulary or token embedding", "convert the model again")
    control, markup = special_texts(view.kv)
    return ModelInfo(
        path=path,
        arch=arch,
        n_layer=n_layer,
        n_nextn=n_nextn,
        has_mtp_tensors=view.has_mtp,
        n_embd=view.embedding_length or 0,
        n_vocab=view.vocab_size,
        context_length=view.context_length or 0,
        chat_template=view.chat_template,
        name=view.name or path.stem,
        file_type=view.file_type,
        kv={k: v for k, v in view.kv.items() if not k.startswith("tokenizer.ggml.")},
        control_texts=control,
        markup_texts=markup,
    )


def check_draft_compatible(target: ModelInfo, draft: ModelInfo) -> None:
    """A separate draft GGUF must come from the same model: same vocabulary and hidden size."""
    if not draft.has_mtp:
        raise QwythosError(
            f"{draft.path} has no MTP (nextn) layer, so it cannot be an MTP draft",
            "pass a GGUF that carries blk.N.nextn.* tensors (`qwythos mtp restore TRUNK --from SRC --separate` writes one)",
        )
    for what, a, b in (
        ("vocabulary size", target.n_vocab, draft.n_vocab),
        ("hidden size", target.n_embd, draft.n_embd),
    ):
        if a != b:
            raise QwythosError(
                f"{draft.path} does not belong to {target.path}: {what} {b} != {a}",
                "use the MTP draft GGUF made from the same model",
            )


class Batch:
    """A `llama_batch` whose arrays are numpy buffers we own (one sequence, id 0)."""

    def __init__(self, capacity: int, n_embd: int = 0) -> None:
        lc = _llama()
        self.capacity = capacity
        self.n_embd = n_embd
        self.tokens = np.zeros(capacity, dtype=np.int32)
        self.pos = np.zeros(capacity, dtype=np.int32)
        self.n_seq_id = np.ones(capacity, dtype=np.int32)
        self.seq_ids = np.zeros(capacity, dtype=np.int32)
        self.logits = np.zeros(capacity, dtype=np.int8)
        self.embd = np.zeros((capacity, n_embd), dtype=np.float32) if n_embd else None
        seq_ptr_t = ctypes.POINTER(lc.llama_seq_id)
        base = self.seq_ids.ctypes.data
        self._seq_ptrs = (seq_ptr_t * capacity)(
            *[ctypes.cast(base + 4 * i, seq_ptr_t) for i in range(capacity)]
        )
        self.struct = lc.llama_batch()
        s = self.struct
        s.token = self.tokens.ctypes.data_as(ctypes.POINTER(lc.llama_token))
        s.embd = self.embd.ctypes.data_as(ctypes.POINTER(ctypes.c_float)) if n_embd else None
        s.pos = self.pos.ctypes.data_as(ctypes.POINTER(lc.llama_pos))
        s.n_seq_id = self.n_seq_id.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
        s.seq_id = self._seq_ptrs
        s.logits = self.logits.ctypes.data_as(ctypes.POINTER(ctypes.c_int8))
        s.n_tokens = 0

    def set(self, tokens, pos0: int, *, outputs: str = "last", hidden: np.ndarray | None = None) -> int:
        """Fill the batch with consecutive positions from pos0; outputs: 'last' or 'all'."""
        n = len(tokens)
        if n > self.capacity:
            raise ValueError(f"batch of {n} tokens over capacity {self.capacity}")
        self.tokens[:n] = tokens
        self.pos[:n] = np.arange(pos0, pos0 + n, dtype=np.int32)
        if outputs == "all":
            self.logits[:n] = 1
        else:
            self.logits[:n] = 0
            self.logits[n - 1] = 1
        if hidden is not None:
            self.embd[:n] = hidden
        self.struct.n_tokens = n
        return n


class Context:
    """A llama context plus a reusable batch and numpy views of its outputs."""

    def __init__(self, model: Model, handle, n_ctx: int, n_batch: int, kind: str) -> None:
        lc = _llama()
        self.model = model
        self.handle = handle
        self.n_ctx = n_ctx
        self.n_batch = n_batch
        self.kind = kind
        self.mem = lc.llama_get_memory(handle)
        self.n_vocab = model.n_vocab
        self.n_embd = model.n_embd
        self.batch = Batch(n_batch, model.n_embd if kind == "mtp" else 0)
        self.n_past = 0  # positions held in this context's memory
        self.n_last = 0  # rows in the last llama_decode call
        self._closed = False
        self.eval_callback = None  # the cb_eval it was built with: alive as long as the context
        interrupt.attach(handle)  # Ctrl-C / SIGTERM stop llama.cpp at its next graph node

    def decode(self, tokens, pos0: int, *, outputs: str = "last", hidden: np.ndarray | None = None) -> None:
        """Decode tokens at positions pos0.. (all in one llama_decode call)."""
        n = self.batch.set(tokens, pos0, outputs=outputs, hidden=hidden)
        interrupt.clear()
        rc = _llama().llama_decode(self.handle, self.batch.struct)
        if rc == 2 and interrupt.requested():  # aborted by Ctrl-C / SIGTERM (core/llamacpp/interrupt.py)
            interrupt.clear()
            raise KeyboardInterrupt
        if rc != 0:
            if rc == 1:
                raise QwythosError(
                    f"{self.model.path}: the context of {self.n_ctx} tokens is full",
                    "raise --ctx or shorten the prompt / --max-tokens",
                )
            raise QwythosError(f"{self.model.path}: llama_decode failed with code {rc}", None)
        self.n_past = pos0 + n
        self.n_last = n

    def decode_rows(self, tokens, pos0: int, hidden: np.ndarray) -> None:
        """Decode (token, hidden-state) rows from pos0 in batches of n_batch (the MTP context's input);
        only the last row's output is kept."""
        for s in range(0, len(tokens), self.n_batch):
            self.decode(
                tokens[s : s + self.n_batch], pos0 + s, outputs="last", hidden=hidden[s : s + self.n_batch]
            )

    def logits(self, n_rows: int) -> np.ndarray:
        """(n_rows, n_vocab) float32 view of the last decode's output rows (batch order)."""
        ptr = _llama().llama_get_logits(self.handle)
        return np.ctypeslib.as_array(ptr, shape=(n_rows, self.n_vocab))

    def hidden(self, n_rows: int) -> np.ndarray:
        """(n_rows, n_embd) view of the post-norm hidden states the MTP head consumes."""
        ptr = _ext().llama_get_embeddings_nextn(self.handle)
        if not ptr:
            raise QwythosError(f"{self.model.path}: llama.cpp returned no hidden states", None)
        return np.ctypeslib.as_array(ptr, shape=(n_rows, self.n_embd))

    def last_hidden(self) -> np.ndarray:
        """The hidden state of the last row of the last decode (a copy).

        Both context kinds output hidden states unmasked (one row per input token, whatever the
        logits flags say): in masked mode llama.cpp's qwen35 MTP graph hands back the *first* row
        of a batch, not the output row, so a multi-row decode's last hidden state would be wrong.
        """
        return self.hidden(self.n_last)[self.n_last - 1].copy()

    # -- state checkpoints (chat sessions) ----------------------------------------------------
    def save_state(self, *, partial: bool = True) -> bytes:
        """Sequence 0's state; partial=True: only the recurrent (non-KV) part, like llama-server's
        checkpoints (the KV cache is truncated with `truncate` instead of restored)."""
        lc = _llama()
        flags = lc.LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY if partial else 0
        size = int(lc.llama_state_seq_get_size_ext(self.handle, 0, flags))
        buf = (ctypes.c_uint8 * size)()
        got = int(lc.llama_state_seq_get_data_ext(self.handle, buf, size, 0, flags))
        if got != size:
            raise QwythosError(f"{self.model.path}: saving the context state failed", None)
        return bytes(buf)

    def load_state(self, data: bytes, n_past: int, *, partial: bool = True) -> None:
        """Restore what `save_state` returned when the context held n_past positions."""
        lc = _llama()
        flags = lc.LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY if partial else 0
        buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        if int(lc.llama_state_seq_set_data_ext(self.handle, buf, len(data), 0, flags)) != len(data):
            raise QwythosError(f"{self.model.path}: restoring the context state failed", None)
        self.n_past = n_past

    def truncate(self, n_keep: int) -> bool:
        """Drop every position >= n_keep (KV cache and, with snapshots, recurrent state)."""
        ok = bool(_llama().llama_memory_seq_rm(self.mem, 0, n_keep, -1))
        if ok:
            self.n_past = min(self.n_past, n_keep)
        return ok

    def clear(self) -> None:
        _llama().llama_memory_clear(self.mem, True)
        self.n_past = 0

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            _llama().llama_free(self.handle)
            if self in self.model._contexts:
                self.model._contexts.remove(self)


class Model:
    """A loaded GGUF (weights + vocabulary), optionally with a separate MTP draft model."""

    def __init__(self, info: ModelInfo, handle, mtp: bool, draft: Model | None = None) -> None:
        lc = _llama()
        self.info = info
        self.path = info.path
        self.handle = handle
        self.vocab = lc.llama_model_get_vocab(handle)
        self.n_vocab = int(lc.llama_vocab_n_tokens(self.vocab))
        n_out = int(lc.llama_model_n_embd_out(handle))
        self.n_embd = n_out if n_out > 0 else int(lc.llama_model_n_embd(handle))
        self.mtp_loaded = mtp
        self.draft_model = draft
        self.eog = np.array(
            [t for t in range(self.n_vocab) if lc.llama_vocab_is_eog(self.vocab, t)], dtype=np.int32
        )
        self._eog_set = set(int(t) for t in self.eog)
        self._contexts: list[Context] = []
        self._closed = False
        self.workers: list = []  # core/llamacpp/rpc.WorkerInfo of the rpc-servers holding layers
        self.repacked = True  # llama.cpp's repacked CPU weights in use (see check_batched_logits)
        self.plain_weights: tuple[str, ...] = ()  # tensor patterns kept out of them (core/llamacpp/repack.py)
        self.gpu_layers = 0  # layers offloaded (to GPUs or the workers)
        self.placed: _placement.Placement | None = None  # which device holds what, and why

    @property
    def placement(self) -> str:
        """Where the layers run: "" on this CPU alone, else the offload, the GPUs' shares and the
        workers (part of the measured-costs key: drafting pays differently on each placement)."""
        if not self.workers and not self.gpu_layers:
            return ""
        gpus = self.placed.key if self.placed is not None else ""
        return (
            f"ngl={self.gpu_layers}"
            + (f"|gpu={gpus}" if gpus else "")
            + "".join(f"|rpc={w.endpoint}" for w in self.workers)
        )

    @property
    def has_mtp(self) -> bool:
        return self.mtp_loaded or self.draft_model is not None

    # -- vocabulary -------------------------------------------------------------------------
    def tokenize(self, text: str, *, add_special: bool = False, parse_special: bool = True) -> list[int]:
        lc = _llama()
        data = text.encode("utf-8")
        cap = len(data) + 16
        buf = (lc.llama_token * cap)()
        n = lc.llama_tokenize(self.vocab, data, len(data), buf, cap, add_special, parse_special)
        if n < 0:
            cap = -n
            buf = (lc.llama_token * cap)()
            n = lc.llama_tokenize(self.vocab, data, len(data), buf, cap, add_special, parse_special)
        return list(buf[:n])

    def piece(self, token: int, *, special: bool = True) -> bytes:
        lc = _llama()
        buf = ctypes.create_string_buffer(64)
        n = lc.llama_token_to_piece(self.vocab, int(token), buf, 64, 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = lc.llama_token_to_piece(self.vocab, int(token), buf, -n, 0, special)
        return buf.raw[:n]

    def detokenize(self, tokens, *, special: bool = True) -> str:
        return b"".join(self.piece(t, special=special) for t in tokens).decode("utf-8", errors="replace")

    def is_eog(self, token: int) -> bool:
        return int(token) in self._eog_set

    def is_special(self, token: int) -> bool:
        """A control or user-defined token (what only a template may write: <|im_end|>, <think> ...)."""
        lc = _llama()
        attr = int(lc.llama_vocab_get_attr(self.vocab, int(token)))
        return bool(attr & (lc.LLAMA_TOKEN_ATTR_CONTROL | lc.LLAMA_TOKEN_ATTR_USER_DEFINED))

    def token_id(self, text: str) -> int | None:
        """The id of a special token spelled `text` (e.g. '<think>'), or None."""
        ids = self.tokenize(text, parse_special=True)
        return ids[0] if len(ids) == 1 else None

    # -- contexts ---------------------------------------------------------------------------
    def _context_params(self, n_ctx: int, n_batch: int, threads: int | None, eval_callback=None):
        lc = _llama()
        cp = lc.llama_context_default_params()
        cp.n_ctx = n_ctx
        cp.n_batch = n_batch
        cp.n_ubatch = n_batch
        cp.n_seq_max = 1
        t = threads or default_threads()
        cp.n_threads = cp.n_threads_batch = t
        cp.no_perf = True
        if eval_callback is not None:  # the scheduler's per-node callback (quantize/imatrix_collect.py)
            cp.cb_eval = eval_callback
            cp.cb_eval_user_data = None
        return cp

    def new_target(
        self,
        n_ctx: int,
        *,
        n_draft: int = 0,
        n_batch: int = 512,
        threads: int | None = None,
        eval_callback=None,
        snapshots: int | None = None,
        hidden: bool | None = None,
    ) -> Context:
        """The target context: logits + hidden states, `n_draft` recurrent snapshots for rollback.
        eval_callback: a ggml_backend_sched_eval_callback that sees every graph node (kept alive by
        the context). snapshots / hidden: the snapshot count and the hidden-state output apart from
        n_draft (bench/bench_auto_overhead.py times each alone); by default n_draft and n_draft > 0."""
        lc = _llama()
        if not 0 <= n_draft <= MAX_DRAFT:
            raise QwythosError(f"draft length {n_draft} is out of range", f"use 0..{MAX_DRAFT}")
        snapshots = n_draft if snapshots is None else snapshots
        hidden = n_draft > 0 if hidden is None else hidden
        cp = self._context_params(n_ctx, max(n_batch, snapshots + 1), threads, eval_callback)
        cp.n_rs_seq = snapshots
        handle = lc.llama_init_from_model(self.handle, cp)
        if not handle:
            raise QwythosError(
                f"{self.path}: llama.cpp could not create a context of {n_ctx} tokens",
                "lower --ctx (the KV cache may not fit in memory)",
            )
        ctx = Context(self, handle, n_ctx, cp.n_batch, "target")
        ctx.eval_callback = eval_callback
        if hidden:
            _ext().llama_set_embeddings_nextn(handle, True, False)
        if snapshots > 0:
            if lc.llama_n_rs_seq(handle) < snapshots:
                ctx.close()
                raise QwythosError(f"{self.path}: this llama.cpp cannot roll back recurrent state", None)
        self._contexts.append(ctx)
        return ctx

    def new_draft(
        self, n_ctx: int, *, n_batch: int = 64, threads: int | None = None, eval_callback=None
    ) -> Context:
        """The MTP draft context (own KV for the nextn block), on this model or the draft GGUF.
        eval_callback: as for `new_target`."""
        lc = _llama()
        owner = self.draft_model or self
        if not (self.mtp_loaded or self.draft_model):
            raise QwythosError(
                f"{self.path} was loaded without an MTP layer",
                "use a GGUF with the MTP head (blk.N.nextn.*) or run with --no-mtp",
            )
        cp = owner._context_params(n_ctx, n_batch, threads, eval_callback)
        cp.ctx_type = lc.LLAMA_CONTEXT_TYPE_MTP
        cp.n_rs_seq = 0
        handle = lc.llama_init_from_model(owner.handle, cp)
        if not handle:
            raise QwythosError(f"{owner.path}: llama.cpp could not create the MTP draft context", None)
        _ext().llama_set_embeddings_nextn(handle, True, False)  # unmasked: see Context.last_hidden
        ctx = Context(owner, handle, n_ctx, n_batch, "mtp")
        ctx.eval_callback = eval_callback
        owner._contexts.append(ctx)
        return ctx

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for c in list(self._contexts):
            c.close()
        self._contexts.clear()
        if self.draft_model is not None:
            self.draft_model.close()
        _llama().llama_model_free(self.handle)

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _load_handle(
    info: ModelInfo,
    *,
    load_mtp: bool,
    n_gpu_layers: int,
    workers: list[int] | None = None,
    repacked: bool = True,
    tensor_split: list[float] | None = None,
    plain: tuple[str, ...] = (),
):
    """repacked=False: no repacked CPU weights at all; plain: tensor-name patterns kept out of them
    while the rest stay repacked (core/llamacpp/repack.py)."""
    lc = _llama()
    _init_backend()
    mp = lc.llama_model_default_params()
    for k, v in safe_model_kwargs().items():
        setattr(mp, k, v)
    if not repacked:
        mp.use_extra_bufts = False
    mp.n_gpu_layers = n_gpu_layers
    mp.load_mtp = load_mtp
    devices = _rpc.model_devices(workers)  # kept alive until the load returns
    if devices is not None:
        mp.devices = ctypes.addressof(devices)
    split = None  # kept alive until the load returns
    if tensor_split and len(tensor_split) > 1:
        split = (ctypes.c_float * max(len(tensor_split), int(lc.llama_max_devices())))(*tensor_split)
        mp.tensor_split = split
    overrides = _repack.plain_overrides(plain) if repacked else None  # kept alive until the load returns
    if overrides is not None:
        mp.tensor_buft_overrides = ctypes.addressof(overrides)
    handle = lc.llama_model_load_from_file(str(info.path).encode(), mp)
    if not handle:  # name the reason when the structural check finds one (core/model/structure.py)
        issues = check_model(info.path)
        reason = (
            f": {issues[0]}" + (f" (and {len(issues) - 1} more)" if len(issues) > 1 else "") if issues else ""
        )
        raise QwythosError(
            f"llama.cpp failed to load {info.path}{reason}", "check the file with `qwythos inspect`"
        )
    return handle


def choose_placement(
    info: ModelInfo,
    setting: int | str,
    *,
    n_ctx: int = START_CONTEXT,
    load_mtp: bool = True,
    rpc: bool = False,
    devices: list[Device] | None = None,
    view: GGUFView | None = None,
) -> _placement.Placement:
    """Where the layers go: -ngl auto places them from the GPUs' free memory at n_ctx (every layer
    with rpc workers); a number is used as given. devices: this build's (list_devices) by default.
    view: the file's parsed header when the caller has it (else it is read again)."""
    setting = _placement.parse_gpu_layers(setting)
    found = list_devices() if devices is None else devices
    n_mtp = info.n_nextn if info.has_mtp_tensors else 0
    if setting != _placement.AUTO:
        return _placement.given(int(setting), found, info.n_layer, n_mtp, rpc=rpc)
    if rpc:
        return _placement.given(_placement.ALL_LAYERS, found, info.n_layer, n_mtp, rpc=True, auto=True)
    memory = model_memory(view or info.path, n_ctx, KV_TYPE)
    if not load_mtp:  # the MTP block's index still counts in llama.cpp's layers, its bytes are not loaded
        memory.mtp = [0] * len(memory.mtp)
    return _placement.place(found, memory)


def load_model(
    path: str | Path,
    *,
    mtp: bool | None = None,
    draft_path: str | Path | None = None,
    n_gpu_layers: int | str | None = _placement.AUTO,
    rpc: str | list[_rpc.Endpoint] | None = None,
    n_ctx: int = START_CONTEXT,
) -> Model:
    """Load a qwen35 GGUF. mtp=None: load the MTP layer when the file has one; True: insist.

    n_gpu_layers: "auto" (the default; None too): every layer that fits in the GPUs' free memory
    with contexts of n_ctx tokens, else as many as fit, none without a GPU device, all of them with
    rpc (core/llamacpp/placement.py); a number: layers offloaded to GPUs or RPC workers, as given.
    rpc: llama.cpp rpc-server workers, "HOST:PORT[,HOST:PORT]" or parsed endpoints; each is
    checked over the protocol before llama.cpp sees it (core/llamacpp/rpc.py)."""
    view = read_view(path)  # parsed once: the checks and the placement's memory both read it
    info = read_model_info(view)
    setting = _placement.parse_gpu_layers(n_gpu_layers)
    workers, devices = [], None
    if rpc:
        workers, devices = _rpc.connect_workers(
            _rpc.parse_endpoints(rpc) if isinstance(rpc, str) else list(rpc)
        )
    dinfo = None
    if draft_path is not None and mtp is not False:
        dinfo = read_model_info(draft_path)
        check_draft_compatible(info, dinfo)
    if mtp and not info.has_mtp and dinfo is None:
        raise QwythosError(
            f"{info.path} has no MTP (nextn) layer, so it cannot draft tokens",
            "restore the head (`qwythos mtp restore`), pass --draft-model FILE, or run with --no-mtp",
        )
    load_mtp = info.has_mtp and mtp is not False and dinfo is None
    _init_backend()  # the registry up (a GPU backend initialised) before its devices are listed
    placed = choose_placement(info, setting, n_ctx=n_ctx, load_mtp=load_mtp, rpc=bool(rpc), view=view)
    del view  # the tokenizer's arrays are not kept for the model's lifetime
    ngl, split = placed.n_gpu_layers, placed.tensor_split
    where = dict(n_gpu_layers=ngl, workers=devices, tensor_split=split)

    def load(repacked: bool, plain: tuple[str, ...] = ()) -> Model:
        draft = None
        if dinfo is not None:  # the draft GGUF goes where the target's top layers go
            h = _load_handle(dinfo, load_mtp=True, repacked=repacked, plain=plain, **where)
            draft = Model(dinfo, h, True)
        try:
            handle = _load_handle(info, load_mtp=load_mtp, repacked=repacked, plain=plain, **where)
        except BaseException:
            if draft is not None:
                draft.close()
            raise
        model = Model(info, handle, load_mtp, draft)
        model.workers, model.gpu_layers, model.repacked = workers, ngl, repacked
        model.plain_weights = plain if repacked else ()
        model.placed = placed
        return model

    verdict = _repacked_verdict(info.path)
    if isinstance(verdict, tuple):
        return load(repacked=True, plain=verdict)
    model = load(repacked=verdict is not False)
    if verdict is None and not _repacked_logits_ok(model):  # llama.cpp's repacked kernels fail here
        model.close()
        model = _narrowed_load(info.path, load)
    return model


#: Weights kept plain first when a file fails the batched check: the one kind whose repacked kernel
#: alone returned the empty rows (bench/bench_repack_fault.py; core/llamacpp/probe.py).
SUSPECT_WEIGHTS: tuple[str, ...] = (r"\.ssm_out\.weight$",)


def _narrowed_load(path: Path, load) -> Model:
    """After a failed check: the suspect weights plain and the rest repacked, checked again; if that
    fails too (or the plain buffer type is unavailable), no repacked weights at all."""
    from qwythos.core.llamacpp import probe

    if _repack.plain_cpu_buffer_type() is not None:
        model = load(repacked=True, plain=SUSPECT_WEIGHTS)
        if check_batched_logits(model):
            probe.record_batched_verdict(path, SUSPECT_WEIGHTS)
            _repacked_warning(path, SUSPECT_WEIGHTS)
            return model
        model.close()
    probe.record_batched_verdict(path, False)
    _repacked_warning(path, False)
    return load(repacked=False)


#: The check's prefix: real text, as a run sees it (the fault depends on what the cache holds).
_CHECK_TEXT = "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) +"


def batched_logit_rows(model: Model, threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Decode BATCH_CHECK_ROWS tokens after a real-text prefix in one batch with every logit row,
    as a draft verify does (a context with recurrent snapshots), and the same tokens one at a time:
    (batched rows, one-by-one rows)."""
    from qwythos.core.llamacpp.probe import BATCH_CHECK_ROWS

    n = BATCH_CHECK_ROWS
    toks = model.tokenize(_CHECK_TEXT)[:24] or [0]
    pre, nxt = toks[:-n] or toks[:1], toks[-n:]
    rows = []
    for batched in (True, False):
        ctx = model.new_target(64, n_draft=n - 1, n_batch=32, threads=threads)
        try:
            ctx.decode(pre, 0, outputs="last")
            if batched:
                ctx.decode(nxt, len(pre), outputs="all")
                rows.append(ctx.logits(len(nxt)).copy())
            else:
                one = []
                for i, t in enumerate(nxt):
                    ctx.decode([t], len(pre) + i, outputs="all")
                    one.append(ctx.logits(1)[0].copy())
                rows.append(np.array(one))
        finally:
            ctx.close()
    return rows[0], rows[1]


def check_batched_logits(model: Model, threads: int | None = None) -> bool:
    """Do a batch's logit rows agree with the same rows decoded one at a time (core/llamacpp/probe.py
    explains the fault this looks for)? True when the one-by-one rows are not finite either: the
    file's own weights are broken (NaN, inf), which repacking neither causes nor cures; the file's
    verification says so, not a warning about llama.cpp's kernels."""
    from qwythos.core.llamacpp.probe import logits_agree

    batched, single = batched_logit_rows(model, threads)
    if not np.isfinite(single).all():
        return True
    return logits_agree(batched, single)


def _repacked_warning(path: Path, verdict) -> None:
    import warnings

    what = (
        "loading those weights without them, the rest repacked"
        if verdict
        else "loading it without them (use_extra_bufts=False: correct, somewhat slower)"
    )
    names = ", ".join(p.strip("\\.$^").replace("\\.", ".") for p in verdict) if verdict else ""
    warnings.warn(
        f"llama.cpp's repacked CPU kernels return wrong logits for batches of {path.name} on this "
        + (f"CPU ({names}); {what}" if verdict else f"CPU; {what}"),
        RuntimeWarning,
        stacklevel=4,
    )


def _check_applies() -> bool:
    return (
        os.environ.get("QWYTHOS_SKIP_PROBE") != "1"
        and safe_model_kwargs().get("use_extra_bufts") is not False
    )


def _repacked_verdict(path: Path):
    """The cached batched-logits verdict for this file and build (None: not checked yet, or the
    check does not apply; a tuple: the tensor patterns kept plain); warns when it is not True."""
    from qwythos.core.llamacpp import probe

    ok = probe.batched_verdict(path) if _check_applies() else True
    if ok is not True and ok is not None:
        _repacked_warning(path, ok)
    return ok


def _repacked_logits_ok(model: Model) -> bool:
    """Run the batched-logits check on a freshly loaded file; cache a passing verdict (a failing
    one is cached by _narrowed_load, once it knows what works)."""
    from qwythos.core.llamacpp import probe

    ok = check_batched_logits(model)
    if ok:
        probe.record_batched_verdict(model.path, True)
    return ok
