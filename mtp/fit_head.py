"""The qwen35 MTP head in plain torch, in llama.cpp's tensor form, with chained-depth attention.

The forward is llama.cpp's qwen35 MTP graph (src/models/qwen35.cpp): for the row of position p,
made of the token x_p and the previous position's hidden state h_{p-1},

    x = eh_proj(concat(enorm(embed(x_p)), hnorm(h_{p-1})))          (embedding half first)
    x = x + wo(attention(rope(q_norm(q)), rope(k_norm(k)), v) * sigmoid(gate))   (after attn_norm)
    x = x + ffn_down(silu(ffn_gate(y)) * ffn_up(y)),  y = post_attention_norm(x)
    g = shared_head_norm(x);  logits = output(g)

Weights are the GGUF's own tensors (numpy order = torch's (out, in)); RMS norms multiply by the
stored weight as llama.cpp does, so nothing is converted on the way in or out.

Chained drafting (what the runtime does): from position p the head drafts d_1 from row (x_p,
h_{p-1}); d_2 from row (d_1, g_1) at position p+1, and so on. The MTP context then holds the
depth-1 rows of positions 0..p plus this chain's own deeper rows, so a depth-k row attends to the
depth-1 keys of positions <= p and to the keys of its own chain. `chain()` computes every chain of
a sequence at once with exactly that mask.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from qwythos.core.model.structure import HeadDims

MATRICES = (
    "nextn.eh_proj.weight",
    "attn_q.weight",
    "attn_k.weight",
    "attn_v.weight",
    "attn_output.weight",
    "ffn_gate.weight",
    "ffn_up.weight",
    "ffn_down.weight",
)
NORMS = (
    "nextn.enorm.weight",
    "nextn.hnorm.weight",
    "attn_norm.weight",
    "attn_q_norm.weight",
    "attn_k_norm.weight",
    "post_attention_norm.weight",
    "nextn.shared_head_norm.weight",
)
#: the tensors `mtp fit` trains (the shared embedding / output matrices stay the trunk's)
TRAINED = MATRICES + NORMS


@dataclass(frozen=True)
class Rope:
    """llama.cpp's rope parameters for the head's attention (NEOX pairing over the first n_rot dims;
    Qwen3.5's interleaved MRoPE equals this for text, where every section has the same position)."""

    n_rot: int
    base: float
    freq_scale: float = 1.0  # 1 / YaRN factor
    ext_factor: float = 0.0  # 1 with YaRN
    attn_factor: float = 1.0
    n_ctx_orig: int = 0
    beta_fast: float = 32.0
    beta_slow: float = 1.0

    def cos_sin(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin, shape pos.shape + (n_rot / 2,), as ggml's rope_yarn computes them."""
        half = self.n_rot // 2
        i = torch.arange(half, dtype=torch.float64)
        theta_extrap = pos.to(torch.float64)[..., None] * self.base ** (-2.0 * i / self.n_rot)
        theta = theta_extrap * self.freq_scale
        mscale = self.attn_factor
        if self.ext_factor != 0.0:
            lo, hi = self._corr_dims()
            y = (i - lo) / max(0.001, hi - lo)  # ggml's ramp, at i0 / 2 = i
            ramp = (1.0 - y.clamp(0.0, 1.0)) * self.ext_factor
            theta = theta * (1 - ramp) + theta_extrap * ramp
            mscale *= 1.0 + 0.1 * math.log(1.0 / self.freq_scale)
        return (torch.cos(theta) * mscale).float(), (torch.sin(theta) * mscale).float()

    def _corr_dims(self) -> tuple[float, float]:
        def dim(n_rot: float) -> float:
            return self.n_rot * math.log(self.n_ctx_orig / (n_rot * 2 * math.pi)) / (2 * math.log(self.base))

        return max(0.0, math.floor(dim(self.beta_fast))), min(
            self.n_rot - 1.0, math.ceil(dim(self.beta_slow))
        )


def rope_from_kv(kv: dict, arch: str, head_dim: int) -> Rope:
    """The rope of a GGUF's metadata (the keys llama.cpp reads)."""
    n_rot = int(kv.get(f"{arch}.rope.dimension_count", head_dim))
    base = float(kv.get(f"{arch}.rope.freq_base", 10000.0))
    kind = str(kv.get(f"{arch}.rope.scaling.type", "none"))
    factor = float(kv.get(f"{arch}.rope.scaling.factor", 0.0) or 0.0)
    if kind == "yarn" and factor > 1.0:
        return Rope(
            n_rot,
            base,
            freq_scale=1.0 / factor,
            ext_factor=1.0,
            attn_factor=float(kv.get(f"{arch}.rope.scaling.attn_factor", 1.0) or 1.0),
            n_ctx_orig=int(kv.get(f"{arch}.rope.scaling.original_context_length", 0) or 0),
            beta_fast=float(kv.get(f"{arch}.rope.scaling.yarn_beta_fast", 32.0) or 32.0),
            beta_slow=float(kv.get(f"{arch}.rope.scaling.yarn_beta_slow", 1.0) or 1.0),
        )
    if kind == "linear" and factor > 1.0:
        return Rope(n_rot, base, freq_scale=1.0 / factor)
    return Rope(n_rot, base)


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, n_rot: int) -> torch.Tensor:
    """x: (B, heads, T, head_dim); cos/sin: (B or 1, T, n_rot/2). NEOX pairs (i, i + n_rot/2)."""
    half = n_rot // 2
    c, s = cos[:, None], sin[:, None]
    x1, x2, rest = x[..., :half], x[..., half:n_rot], x[..., n_rot:]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s, rest], -1)


class MTPHead(nn.Module):
    """The trainable head: parameters named like the GGUF's block-relative tensors."""

    def __init__(self, dims: HeadDims, eps: float, rope: Rope, tensors: dict[str, np.ndarray]) -> None:
        super().__init__()
        self.dims, self.eps, self.rope = dims, eps, rope
        self.names = [n for n in TRAINED if n in tensors]
        self.params = nn.ParameterList(
            [nn.Parameter(torch.from_numpy(np.array(tensors[n], dtype=np.float32))) for n in self.names]
        )
        self._index = {n: i for i, n in enumerate(self.names)}

    def w(self, name: str) -> torch.Tensor:
        return self.params[self._index[name]]

    def has(self, name: str) -> bool:
        return name in self._index

    def tensors(self) -> dict[str, np.ndarray]:
        """The current weights as float32 numpy arrays (GGUF names and shapes)."""
        return {
            n: p.detach().float().cpu().numpy().copy() for n, p in zip(self.names, self.params, strict=True)
        }

    # -- pieces of the block ---------------------------------------------------------------
    def _in(self, h_prev: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        e = rms_norm(emb, self.w("nextn.enorm.weight"), self.eps)
        h = rms_norm(h_prev, self.w("nextn.hnorm.weight"), self.eps)
        return torch.cat([e, h], -1) @ self.w("nextn.eh_proj.weight").T

    def _qkv(self, x: torch.Tensor, pos: torch.Tensor):
        """(q, k, v, gate) of rows x (B, T, H) at positions pos (B or 1, T); heads first."""
        d = self.dims
        b, t, _ = x.shape
        y = rms_norm(x, self.w("attn_norm.weight"), self.eps)
        qg = (y @ self.w("attn_q.weight").T).view(b, t, d.n_head, 2 * d.head_dim)
        q, gate = qg[..., : d.head_dim], qg[..., d.head_dim :]
        k = (y @ self.w("attn_k.weight").T).view(b, t, d.n_head_kv, d.head_dim)
        v = (y @ self.w("attn_v.weight").T).view(b, t, d.n_head_kv, d.head_dim)
        q = rms_norm(q, self.w("attn_q_norm.weight"), self.eps).transpose(1, 2)
        k = rms_norm(k, self.w("attn_k_norm.weight"), self.eps).transpose(1, 2)
        cos, sin = self.rope.cos_sin(pos)
        cos, sin = cos.to(x.device), sin.to(x.device)
        q = apply_rope(q, cos, sin, self.rope.n_rot)
        k = apply_rope(k, cos, sin, self.rope.n_rot)
        rep = d.n_head // d.n_head_kv
        k = k.repeat_interleave(rep, dim=1)
        v = v.transpose(1, 2).repeat_interleave(rep, dim=1)
        return q, k, v, gate.reshape(b, t, d.n_head * d.head_dim)

    def _out(self, x: torch.Tensor, attn: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """attn: (B, heads, T, head_dim) -> g (B, T, H), the shared-head-normed state."""
        b, _, t, _ = attn.shape
        a = attn.transpose(1, 2).reshape(b, t, -1) * torch.sigmoid(gate)
        x = x + a @ self.w("attn_output.weight").T
        y = rms_norm(x, self.w("post_attention_norm.weight"), self.eps)
        f = torch.nn.functional.silu(y @ self.w("ffn_gate.weight").T) * (y @ self.w("ffn_up.weight").T)
        x = x + f @ self.w("ffn_down.weight").T
        return rms_norm(x, self._head_norm(), self.eps)

    def _head_norm(self) -> torch.Tensor:
        if self.has("nextn.shared_head_norm.weight"):
            return self.w("nextn.shared_head_norm.weight")
        return self.output_norm

    output_norm: torch.Tensor  # set by the caller when the head has no shared_head_norm

    # -- the chained forward -----------------------------------------------------------------
    def chain(self, h_prev: torch.Tensor, emb: list[torch.Tensor], pos0: int = 0) -> list[torch.Tensor]:
        """States g of every depth for every chain of a sequence.

        h_prev: (B, T, H), row r's previous hidden state h_{r-1} (zeros for r = 0);
        emb[k]: (B, T - k, H), the embedding of the token fed at depth k+1 (x_{r+k});
        returns [g_1 (B, T, H), g_2 (B, T-1, H), ...]: g_k[r] drafts the token after x_{r+k}.
        """
        b, t, _ = h_prev.shape
        pos = torch.arange(pos0, pos0 + t).unsqueeze(0)
        scale = 1.0 / math.sqrt(self.dims.head_dim)
        x1 = self._in(h_prev, emb[0])
        q1, k1, v1, gate1 = self._qkv(x1, pos)
        causal = torch.ones(t, t, dtype=torch.bool, device=h_prev.device).tril()
        s1 = (q1 @ k1.transpose(-1, -2)) * scale
        a1 = torch.softmax(s1.masked_fill(~causal, float("-inf")), -1) @ v1
        gs = [self._out(x1, a1, gate1)]
        chain_k: list[torch.Tensor] = []
        chain_v: list[torch.Tensor] = []
        for depth in range(1, len(emb)):
            n = t - depth
            if n <= 0:
                break
            x = self._in(gs[-1][:, :n], emb[depth][:, :n])
            q, k, v, gate = self._qkv(x, pos[:, depth : depth + n])
            chain_k = [c[:, :, :n] for c in chain_k] + [k]
            chain_v = [c[:, :, :n] for c in chain_v] + [v]
            # keys: depth-1 rows at positions <= r, then this chain's own rows (depth 2..k)
            s_base = (q @ k1.transpose(-1, -2)) * scale  # (B, heads, n, t)
            s_base = s_base.masked_fill(~causal[:n], float("-inf"))
            s_own = torch.stack([(q * c).sum(-1) * scale for c in chain_k], -1)  # (B, heads, n, depth)
            p = torch.softmax(torch.cat([s_base, s_own], -1), -1)
            a = p[..., :t] @ v1
            a = a + (p[..., t:, None] * torch.stack(chain_v, -2)).sum(-2)
            gs.append(self._out(x, a, gate))
        return gs


def init_tensors(dims: HeadDims, seed: int = 0, std: float = 0.02) -> dict[str, np.ndarray]:
    """A fresh head: unit norms, small normal matrices (the residual outputs scaled down)."""
    h, hd = dims.n_embd, dims.head_dim
    shapes = {
        "nextn.eh_proj.weight": (h, 2 * h),
        "attn_q.weight": (dims.n_head * hd * 2, h),
        "attn_k.weight": (dims.n_head_kv * hd, h),
        "attn_v.weight": (dims.n_head_kv * hd, h),
        "attn_output.weight": (h, dims.n_head * hd),
        "ffn_gate.weight": (dims.n_ff, h),
        "ffn_up.weight": (dims.n_ff, h),
        "ffn_down.weight": (h, dims.n_ff),
    }
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for name, shape in shapes.items():
        s = std / 2 if name in ("attn_output.weight", "ffn_down.weight") else std
        out[name] = (rng.standard_normal(shape, dtype=np.float32) * s).astype(np.float32)
    for name in NORMS:
        out[name] = np.ones(hd if name in ("attn_q_norm.weight", "attn_k_norm.weight") else h, np.float32)
    return out
