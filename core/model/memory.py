"""The memory a qwen35 model needs at a context, as a whole (`qwythos plan`) and layer by layer
(where each layer can go: core/llamacpp/placement.py).

Memory at a context: weights + the KV cache of the full-attention layers (the MTP block is one
more full-attention layer, with its own KV cache in the draft context) + the recurrent state of
the linear-attention layers (conv + delta state, f32, per sequence). Compute buffers are not
included: whoever places a model keeps a margin for them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from qwythos.core.errors import QwythosError
from qwythos.core.gguf.ftypes import ggml_types
from qwythos.core.gguf.view import GGUFView, read_view
from qwythos.core.model.arch import check_arch
from qwythos.core.model.qwen35 import TextConfig, config_from_gguf
from qwythos.core.model.release import START_CONTEXT

#: --kv-type: the KV cache's element type.
KV_TYPES = ("f16", "q8_0", "q4_0")
_BLOCK = re.compile(r"^blk\.(\d+)\.")
#: The tensors of llama.cpp's output layer (it follows the last block onto a GPU).
OUTPUT_TENSORS = ("output.weight", "output_norm.weight")


def check_kv_type(kv_type: str) -> str:
    if kv_type not in KV_TYPES:
        raise QwythosError(f"unknown --kv-type {kv_type}", "use " + ", ".join(KV_TYPES))
    return kv_type


def kv_bytes_per_layer(cfg: TextConfig, ctx: int, kv_type: str) -> int:
    """K and V of one full-attention layer for `ctx` tokens."""
    t = ggml_types()[check_kv_type(kv_type)]
    return 2 * ctx * t.row_bytes(cfg.n_head_kv * cfg.head_dim)


def recurrent_bytes_per_layer(cfg: TextConfig, n_seq: int = 1) -> int:
    """The conv and delta state of one linear-attention layer (f32)."""
    conv = (cfg.conv_kernel - 1) * cfg.conv_dim
    ssm = cfg.lin_v_heads * cfg.lin_k_dim * cfg.lin_v_dim
    return 4 * (conv + ssm) * n_seq


def kv_cache_bytes(cfg: TextConfig, ctx: int, kv_type: str, n_nextn: int) -> int:
    """The whole KV cache: every full-attention layer of the trunk plus the `n_nextn` MTP blocks."""
    n_full = sum(1 for k in cfg.layer_types if k == "full_attention") + n_nextn
    return n_full * kv_bytes_per_layer(cfg, ctx, kv_type)


def recurrent_state_bytes(cfg: TextConfig, n_seq: int = 1) -> int:
    n_lin = sum(1 for k in cfg.layer_types if k == "linear_attention")
    return n_lin * recurrent_bytes_per_layer(cfg, n_seq)


@dataclass
class ModelMemory:
    """A GGUF's memory, layer by layer, in llama.cpp's layer order: `layers` are the trunk's blocks
    (weights + KV cache or recurrent state each), then `mtp` (the nextn blocks, with their KV cache),
    then `output` (output matrix and norm). `input` (the token embedding) always stays on the CPU."""

    path: str
    ctx: int
    kv_type: str
    layers: list[int] = field(default_factory=list)
    mtp: list[int] = field(default_factory=list)
    output: int = 0
    input: int = 0

    @property
    def offloadable(self) -> list[int]:
        """Bytes of every layer llama.cpp can offload, in its index order (the output is last)."""
        return [*self.layers, *self.mtp, self.output]

    @property
    def total(self) -> int:
        return sum(self.offloadable) + self.input


def model_memory(view_or_path: GGUFView | str | Path, ctx: int, kv_type: str = "f16") -> ModelMemory:
    """Per-layer memory of a qwen35 GGUF at `ctx` tokens (one sequence), from its header alone."""
    if ctx <= 0:
        raise QwythosError(f"--ctx {ctx} must be positive", "e.g. --ctx 32768")
    check_kv_type(kv_type)
    view = view_or_path if isinstance(view_or_path, GGUFView) else read_view(view_or_path)
    check_arch(view, "place")
    cfg = config_from_gguf(view)
    n_all = cfg.n_layer + view.n_nextn
    weights = [0] * n_all
    mem = ModelMemory(str(view.path), ctx, kv_type)
    for t in view.tensors:
        m = _BLOCK.match(t.name)
        if m and int(m.group(1)) < n_all:
            weights[int(m.group(1))] += t.nbytes
        elif t.name in OUTPUT_TENSORS:
            mem.output += t.nbytes
        else:
            mem.input += t.nbytes
    kv = kv_bytes_per_layer(cfg, ctx, kv_type)
    rec = recurrent_bytes_per_layer(cfg)
    state = [kv if kind == "full_attention" else rec for kind in cfg.layer_types]
    mem.layers = [w + s for w, s in zip(weights[: cfg.n_layer], state, strict=True)]
    # a declared nextn block whose tensors are missing is not loaded: nothing to place
    mem.mtp = [w + kv for w in weights[cfg.n_layer :] if w]
    return mem


def check_context(
    view_or_path: GGUFView | str | Path,
    ctx: int | None,
    *,
    kv_type: str = "f16",
    offloaded: bool = False,
    available: int | None = -1,
    doing: str = "run",
) -> ModelMemory:
    """Refuse `--ctx` before anything is allocated: above the context the model was trained for (its
    header's `context_length`), or needing more memory than this machine has available (weights +
    KV cache + recurrent state, what `qwythos plan` predicts; not checked when layers are offloaded,
    their memory is elsewhere). ctx None: START_CONTEXT, or the trained context when smaller.
    available: bytes (-1: this machine's, core/limits.available_memory; None: unknown, not checked).
    Returns the prediction (`.ctx`: the context to allocate)."""
    from qwythos.core.limits import available_memory

    view = view_or_path if isinstance(view_or_path, GGUFView) else read_view(view_or_path)
    check_arch(view, doing)
    trained = view.context_length or 0
    if ctx is None:
        ctx = min(START_CONTEXT, trained) if trained > 0 else START_CONTEXT
    if ctx < 1:
        raise QwythosError(f"--ctx {ctx} must be a positive number of tokens", f"e.g. --ctx {START_CONTEXT}")
    if trained and ctx > trained:
        raise QwythosError(
            f"--ctx {ctx} is above the {trained} tokens {view.path.name} was trained for",
            f"use --ctx {trained} or less",
        )
    mem = model_memory(view, ctx, kv_type)
    have = available_memory() if available == -1 else available
    if not offloaded and have is not None and mem.total > have:
        gib = 2**30
        raise QwythosError(
            f"--ctx {ctx} needs {mem.total / gib:.2f} GiB for {view.path.name} (weights, KV cache and "
            f"recurrent state, as `qwythos plan` predicts), more than the {have / gib:.2f} GiB this "
            "machine has available",
            "use a smaller --ctx, offload layers (-ngl) or free memory",
        )
    return mem
