"""The importance-matrix collector: per weight matrix, the sum of squares of every input column and
the number of input rows, gathered while llama.cpp evaluates a graph.

`Collector.callback` is a ggml scheduler eval callback (`cb_eval` of a llama context). The
scheduler asks it about every graph node (`ask=True`): it wants a node that multiplies a model
weight (`blk.*`) by at least 16 float32 rows (MUL_MAT), and every MUL_MAT_ID, as llama.cpp's
tools/imatrix does. The scheduler then computes the graph up to that node and calls again
(`ask=False`) with the node's inputs in memory: src1 (the activations) is read as a numpy view and
squared and summed per column in one call; for MUL_MAT_ID each row goes to the expert its id names.

Sums accumulate in float64 in `pending` until `commit()` (the end of a chunk), so an interrupted
chunk leaves the totals as they were at the last chunk boundary (what a checkpoint saves). An error
inside the callback cannot propagate through C: it is kept in `error` and raised by `check()`.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from qwythos.core.errors import QwythosError
from qwythos.quantize.imatrix_ggml import (
    OP_MUL_MAT,
    OP_MUL_MAT_ID,
    GGMLTensor,
    as_array,
    check_layout,
    tensor_at,
    weight_name,
)

#: llama-imatrix skips smaller batches ("why are small batches ignored (<16 tokens)?" in its source)
MIN_ROWS = 16

_OP_OFFSET = GGMLTensor.op.offset


def is_block_weight(name: str) -> bool:
    """The weights llama-imatrix collects (its default, without --process-output): blk.*."""
    return name.startswith("blk.")


@dataclass
class Stats:
    """One weight's accumulators: sums (n_mat, n_in) and counts (n_mat,) - llama-imatrix's Stats."""

    sums: np.ndarray
    counts: np.ndarray

    @classmethod
    def zeros(cls, n_mat: int, n_in: int, n_counts: int) -> Stats:
        return cls(np.zeros((n_mat, n_in), dtype=np.float64), np.zeros(n_counts, dtype=np.int64))

    def add(self, other: Stats) -> None:
        self.sums += other.sums
        self.counts += other.counts


@dataclass
class Collector:
    """Sums of squared inputs per weight, as llama-imatrix's IMatrixCollector keeps them."""

    wanted: Callable[[str], bool] = is_block_weight
    totals: dict[str, Stats] = field(default_factory=dict)
    pending: dict[str, Stats] = field(default_factory=dict)
    error: BaseException | None = None
    nodes_seen: int = 0

    def __post_init__(self) -> None:
        import llama_cpp

        check_layout()
        self._f32 = int(llama_cpp.GGML_TYPE_F32)
        self._i32 = int(llama_cpp.GGML_TYPE_I32)
        self.callback = llama_cpp.ggml_backend_sched_eval_callback(self._eval)

    # -- the callback ------------------------------------------------------------------------
    def _eval(self, node: int, ask: bool, user_data: int | None) -> bool:  # noqa: ARG002 - ggml's signature
        try:
            if ask:
                return self._wants(node)
            if self.error is None:
                self._collect(node)
            return True
        except BaseException as e:  # noqa: BLE001 - nothing may cross back into C
            self.error = self.error or e
            return False

    def _wants(self, node: int) -> bool:
        self.nodes_seen += 1
        op = ctypes.c_int.from_address(node + _OP_OFFSET).value
        if op == OP_MUL_MAT_ID:
            return True
        if op != OP_MUL_MAT:
            return False
        t = tensor_at(node)
        src1 = tensor_at(t.src[1])
        if src1.ne[1] < MIN_ROWS or src1.type != self._f32:
            return False
        return self.wanted(weight_name(tensor_at(t.src[0]).name))

    def _collect(self, node: int) -> None:
        t = tensor_at(node)
        src0, src1 = tensor_at(t.src[0]), tensor_at(t.src[1])
        name = weight_name(src0.name)
        if src1.type != self._f32 or src1.nb[0] != 4:
            raise QwythosError(f"{name}: the activations are not contiguous float32 rows", None)
        x, _keep = as_array(src1, t.src[1], np.float32)  # (ne3, ne2, ne1, ne0)
        if t.op == OP_MUL_MAT_ID:
            self._collect_experts(name, t, src0, x)
        else:
            self._collect_dense(name, src0, x)

    def _entry(self, name: str, n_mat: int, n_in: int, n_counts: int) -> Stats:
        e = self.pending.get(name)
        if e is None:
            e = self.pending[name] = Stats.zeros(n_mat, n_in, n_counts)
        if e.sums.shape != (n_mat, n_in) or e.counts.shape != (n_counts,):
            raise QwythosError(
                f"{name}: inconsistent input size ({n_mat} x {n_in} against {e.sums.shape})", None
            )
        return e

    def _collect_dense(self, name: str, src0: GGMLTensor, x: np.ndarray) -> None:
        ne3, ne2, ne1, ne0 = x.shape
        m2, m3 = int(src0.ne[2]), int(src0.ne[3])
        e = self._entry(name, m2 * m3, ne0, 1)
        sq = np.einsum("abij,abij->abj", x, x, dtype=np.float64)  # (ne3, ne2, ne0)
        if not np.isfinite(sq).all():
            raise QwythosError(f"non-finite activations entering {name}", "check the model file")
        # 3D+ activations on a 2D weight are flattened onto it (llama-imatrix's mat_id)
        mats = ((np.arange(ne3)[:, None] % m3) * m2 + (np.arange(ne2)[None, :] % m2)).ravel()
        np.add.at(e.sums, mats, sq.reshape(-1, ne0))
        e.counts[0] += (ne1 * ne2 * ne3) // (m2 * m3)

    def _collect_experts(self, name: str, t: GGMLTensor, src0: GGMLTensor, x: np.ndarray) -> None:
        ne3, n_tokens, ne1, ne0 = x.shape
        ids_t = tensor_at(t.src[2])
        if ne3 != 1 or ids_t.type != self._i32 or int(ids_t.ne[1]) != n_tokens:
            raise QwythosError(f"{name}: unexpected expert-routing layout", None)
        n_as = int(src0.ne[2])
        ids, _keep = as_array(ids_t, t.src[2], np.int32)  # (1, 1, n_tokens, n_ids)
        ex = np.asarray(ids[0, 0], dtype=np.int64)
        if ex.size and (ex.min() < 0 or ex.max() >= n_as):
            raise QwythosError(f"{name}: expert id out of range", None)
        rows = x[0][:, np.arange(ex.shape[1]) % ne1, :].astype(np.float64)  # (n_tokens, n_ids, ne0)
        e = self._entry(name, n_as, ne0, n_as)
        np.add.at(e.sums, ex.ravel(), np.square(rows).reshape(-1, ne0))
        e.counts += np.bincount(ex.ravel(), minlength=n_as)
        if not np.isfinite(e.sums[np.unique(ex)]).all():
            raise QwythosError(f"non-finite activations entering {name}", "check the model file")

    # -- between graphs ------------------------------------------------------------------------
    def check(self) -> None:
        """Raise what went wrong inside the callback since the last check."""
        err, self.error = self.error, None
        if err is not None:
            self.pending.clear()
            raise err

    def commit(self) -> None:
        """Add the pending sums (one finished chunk) to the totals."""
        self.check()
        for name, e in self.pending.items():
            if name in self.totals:
                self.totals[name].add(e)
            else:
                self.totals[name] = e
        self.pending = {}

    def discard(self) -> None:
        self.pending = {}
        self.error = None
