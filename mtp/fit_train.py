"""Train the MTP head on the collected trunk outputs (self-distillation, chained depths).

Depth k of the chain starting at row r reads (g_{k-1}, x_{r+k-1}) (g_0 = the trunk's h_{r-1}) and
learns the trunk's own next-token distribution at position r+k-1: KL(teacher top-k || head), the
teacher renormalised over its top-k, the head's softmax taken over a candidate set (every top-k id
of the batch plus `negatives` random ids), or over the whole vocabulary when it is small. Depth
losses are weighted 1, 1/2, 1/4, ...

Every `eval_every` steps the head is scored on held-out sequences (every tenth one) the way
`mtp validate` counts: depth 1 everywhere, depth k only where depths < k were accepted and the text
followed them; drafts are the argmax over the same candidates (the whole vocabulary when small),
so at 248k vocabulary this is an estimate. A checkpoint (head, optimizer, step) is written every
`save_every` steps; a run with the same settings and starting head resumes from it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from qwythos.mtp.fit import TrainSettings
from qwythos.mtp.fit_data import ChunkStore
from qwythos.mtp.fit_head import MTPHead
from qwythos.mtp.fit_vocab import Vocab

FULL_VOCAB = 16384  # score against the whole vocabulary up to this size


@dataclass
class TrainProgress:
    step: int
    steps: int
    loss: float | None
    accept: list[float] | None  # held-out acceptance estimate per depth, when just measured
    seconds: float


@dataclass
class TrainResult:
    steps: int
    resumed_from: int
    loss: float | None
    accept_before: list[float]
    accept_after: list[float]
    held_out_sequences: int
    train_sequences: int
    seconds: float
    steps_per_s: float
    device: str
    history: list[dict] = field(default_factory=list)


def split(n_seq: int) -> tuple[list[int], list[int]]:
    """(train, held-out) sequence indices: every tenth sequence is held out (at least one of two)."""
    held = [i for i in range(n_seq) if i % 10 == 9]
    if not held and n_seq >= 2:
        held = [n_seq - 1]
    train = [i for i in range(n_seq) if i not in set(held)]
    return train, held


def lr_at(step: int, total: int, peak: float, warm: int = 20) -> float:
    if step < warm:
        return peak * (step + 1) / warm
    t = (step - warm) / max(1, total - warm)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


class Trainer:
    """The head, the trunk's vocabulary and the collected data, with loss and evaluation."""

    def __init__(self, head: MTPHead, vocab: Vocab, store: ChunkStore, s: TrainSettings, device: str) -> None:
        self.head, self.vocab, self.store, self.s, self.device = head, vocab, store, s, device
        self.full = s.full_vocab if s.full_vocab is not None else (vocab.n_vocab <= FULL_VOCAB)
        if self.full and not vocab.resident:
            self.full = False
        self.train_idx, self.held_idx = split(store.n_seq)
        if not self.train_idx:
            self.train_idx = list(range(store.n_seq))
        self.gen = np.random.default_rng(s.seed)

    # -- one batch -------------------------------------------------------------------------
    def _inputs(self, data: dict[str, np.ndarray]):
        dev = self.device
        tokens = torch.from_numpy(data["tokens"].astype(np.int64)).to(dev)
        hidden = torch.from_numpy(data["hidden"]).to(dev)
        h_prev = torch.cat([torch.zeros_like(hidden[:, :1]), hidden[:, :-1]], 1)
        depths = min(self.s.depths, tokens.shape[1])
        emb = [self.vocab.embed.rows(tokens[:, k:]) for k in range(depths)]
        return tokens, h_prev, emb

    def _candidates(self, topi: np.ndarray) -> torch.Tensor | None:
        if self.full:
            return None
        neg = self.gen.integers(0, self.vocab.n_vocab, self.s.negatives)
        return torch.from_numpy(np.unique(np.concatenate([topi.reshape(-1), neg])).astype(np.int64))

    def _logits(
        self, g: torch.Tensor, cand: torch.Tensor | None, w: torch.Tensor | None = None
    ) -> torch.Tensor:
        if w is not None:
            return g @ w.T
        return self.vocab.logits(g, cand.to(self.device) if cand is not None else None)

    def loss(self, data: dict[str, np.ndarray]) -> torch.Tensor:
        tokens, h_prev, emb = self._inputs(data)
        gs = self.head.chain(h_prev, emb)
        cand = self._candidates(data["topi"])
        topi = torch.from_numpy(data["topi"].astype(np.int64))
        if cand is not None:
            topi = torch.searchsorted(cand, topi)  # positions within the candidate set
        topi = topi.to(self.device)
        topv = torch.from_numpy(data["topv"]).to(self.device)
        rows = self.vocab.output.rows(cand) if cand is not None else None  # dequantized once a step
        total, wsum = 0.0, 0.0
        for k, g in enumerate(gs):
            n = g.shape[1]
            logq = torch.log_softmax(self._logits(g, cand, rows), -1)
            logp = torch.log_softmax(topv[:, k : k + n], -1)
            lq = torch.gather(logq, -1, topi[:, k : k + n])
            kl = (logp.exp() * (logp - lq)).sum(-1).mean()
            w = 0.5**k
            total = total + w * kl
            wsum += w
        return total / wsum

    @torch.no_grad()
    def accept(self, idx: list[int] | None = None) -> list[float]:
        """Held-out acceptance estimate per depth (see the module docstring)."""
        idx = idx if idx is not None else (self.held_idx or self.train_idx[:1])
        acc = np.zeros(self.s.depths)
        tot = np.zeros(self.s.depths)
        for i in idx:
            data = self.store.sequences([i])
            tokens, h_prev, emb = self._inputs(data)
            gs = self.head.chain(h_prev, emb)
            cand = self._candidates(data["topi"])
            greedy = torch.from_numpy(data["greedy"].astype(np.int64)).to(self.device)
            alive = None
            seq = tokens.shape[1]
            for k, g in enumerate(gs):
                n = min(g.shape[1], seq - 1)  # depth 1: rows 0..S-2, as acceptance.py counts
                d = self._logits(g[:, :n], cand).argmax(-1)
                if cand is not None:
                    d = cand.to(self.device)[d]
                ok = d == greedy[:, k : k + n]
                good = ok if alive is None else ok & alive[:, :n]
                tot[k] += (n * len(ok)) if alive is None else alive[:, :n].sum().item()
                acc[k] += good.sum().item()
                # deeper: only where this draft was accepted and the text followed it
                m = min(n, seq - k - 1)
                alive = torch.zeros_like(good)
                alive[:, :m] = good[:, :m] & (d[:, :m] == tokens[:, k + 1 : k + 1 + m])
        return [float(a / t) if t else 0.0 for a, t in zip(acc, tot, strict=True)]


def _key(s: TrainSettings, start_sha: str, spec) -> str:
    blob = json.dumps([asdict(s), start_sha, asdict(spec)], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def head_sha(head: MTPHead) -> str:
    h = hashlib.sha256()
    for n, p in zip(head.names, head.params, strict=True):
        h.update(n.encode())
        h.update(p.detach().cpu().numpy().tobytes())
    return h.hexdigest()


def train(
    head: MTPHead,
    vocab: Vocab,
    store: ChunkStore,
    settings: TrainSettings,
    *,
    device: str = "cpu",
    state_dir: Path | None = None,
    progress: Callable[[TrainProgress], None] | None = None,
) -> TrainResult:
    """Train `head` in place; resumable through `state_dir`."""
    torch.manual_seed(settings.seed)
    head.to(device)
    tr = Trainer(head, vocab, store, settings, device)
    opt = torch.optim.AdamW(head.parameters(), lr=settings.lr, betas=(0.9, 0.95), weight_decay=0.0)
    start = 0
    ckpt = None
    if state_dir is not None:
        ckpt = state_dir / f"train-{_key(settings, head_sha(head), store.spec)}.pt"
        if ckpt.is_file():
            st = torch.load(ckpt, map_location=device, weights_only=False)
            head.load_state_dict(st["head"])
            opt.load_state_dict(st["opt"])
            start = int(st["step"])
            tr.gen = st["gen"]
    t0 = time.perf_counter()
    before = st["accept_before"] if start else tr.accept()
    history: list[dict] = list(st["history"]) if start else []
    if progress:
        progress(TrainProgress(start, settings.steps, None, before, 0.0))
    loss_v = history[-1]["loss"] if history else None

    def save(step: int) -> None:
        if ckpt is None:
            return
        tmp = ckpt.with_name(ckpt.name + f".{os.getpid()}.partial")
        torch.save(
            {
                "head": head.state_dict(),
                "opt": opt.state_dict(),
                "step": step,
                "gen": tr.gen,
                "accept_before": before,
                "history": history,
            },
            tmp,
        )
        os.replace(tmp, ckpt)

    head.train()
    for step in range(start, settings.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, settings.steps, settings.lr)
        idx = tr.gen.choice(tr.train_idx, size=min(settings.batch, len(tr.train_idx)), replace=False)
        loss = tr.loss(store.sequences(np.sort(idx)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
        opt.step()
        loss_v = float(loss.item())
        done = step + 1
        acc = None
        if done % settings.eval_every == 0 or done == settings.steps:
            head.eval()
            acc = tr.accept()
            head.train()
        history.append({"step": done, "loss": loss_v, **({"accept": acc} if acc else {})})
        if progress:
            progress(TrainProgress(done, settings.steps, loss_v, acc, time.perf_counter() - t0))
        if done % settings.save_every == 0 or done == settings.steps:
            save(done)
    head.eval()
    after = next((h["accept"] for h in reversed(history) if "accept" in h), before)
    secs = time.perf_counter() - t0
    ran = settings.steps - start
    return TrainResult(
        steps=settings.steps,
        resumed_from=start,
        loss=loss_v,
        accept_before=before,
        accept_after=after,
        held_out_sequences=len(tr.held_idx),
        train_sequences=len(tr.train_idx),
        seconds=round(secs, 2),
        steps_per_s=round(ran / secs, 3) if secs > 0 and ran else 0.0,
        device=device,
        history=history,
    )
