"""Generation with exact MTP draft speculative decoding (and plain decoding, draft=0).

State between steps: the target context holds positions 0..n-1; `x_n` (chosen from the target's
logits at n-1) is pending, and `h_{n-1}` (the target's post-norm hidden state there) is known. The
MTP context holds the pairs (x_p, h_{p-1}) for the positions it has caught up on.

One step with draft length N:
1. draft: the MTP context decodes the rows it still has to catch up on plus (x_n, h_{n-1}) in one
   batch, then chains single rows (d_j, h'_j) - its own hidden output - to draft d_1..d_N;
2. verify: the target decodes [x_n, d_1..d_N] in one batch (logits + hidden for every row);
3. accept: greedy - the longest prefix where d_j is the target's argmax, plus the target's own next
   token; sampled - standard rejection sampling (accept d_j with prob min(1, p/q), else resample
   from norm(max(p - q, 0))), plus a bonus sample from p_N when all N are accepted;
4. rollback: the target drops positions past the accepted prefix (KV cache and the recurrent
   state, restored from the snapshots `n_rs_seq` keeps); the MTP context drops its draft rows.
Greedy output is the plain greedy output; sampled output follows plain sampling's distribution.

One caveat on "identical": llama.cpp computes a batch of tokens with different kernels than a
single token (the recurrent layers' chunked scan, batched matmuls), so a verify batch's logits
differ from single-token logits by float noise (measured: ~1e-4 in F32, ~0.02 in BF16 on the random
tiny fixture). Where the top two logits are closer than that, greedy MTP may pick the other token,
exactly as llama.cpp's own draft-mtp loop would. Trained models are rarely that undecided (the
trained tiny model matches plain decoding on every prompt tested), random-weight models sometimes are.
"""

from __future__ import annotations

import codecs
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from qwythos.core.errors import QwythosError
from qwythos.core.llama import MAX_DRAFT, Context, Model
from qwythos.runtime.sampling import (
    GREEDY,
    Dist,
    SamplingParams,
    choose,
    distribution,
    greedy_token,
    residual,
)

DEFAULT_N_CTX = 32768


@dataclass
class GenStats:
    """Speed and acceptance of one generation."""

    prompt_tokens: int = 0
    gen_tokens: int = 0
    prompt_seconds: float = 0.0
    gen_seconds: float = 0.0
    draft: int = 0
    drafted: int = 0
    accepted: int = 0
    drafted_per_depth: list[int] = field(default_factory=list)
    accepted_per_depth: list[int] = field(default_factory=list)
    target_passes: int = 0
    t_draft: float = 0.0  # MTP context decodes + draft token choice
    t_verify: float = 0.0  # target decodes during generation
    t_rollback: float = 0.0  # memory truncation
    t_python: float = 0.0  # everything else in the loop (acceptance, bookkeeping, callbacks)

    @property
    def prompt_tps(self) -> float:
        return self.prompt_tokens / self.prompt_seconds if self.prompt_seconds > 0 else 0.0

    @property
    def gen_tps(self) -> float:
        return self.gen_tokens / self.gen_seconds if self.gen_seconds > 0 else 0.0

    @property
    def acceptance(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def acceptance_per_depth(self) -> list[float]:
        return [
            a / d if d else 0.0 for a, d in zip(self.accepted_per_depth, self.drafted_per_depth, strict=True)
        ]

    @property
    def tokens_per_pass(self) -> float:
        return self.gen_tokens / self.target_passes if self.target_passes else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(
            prompt_tps=self.prompt_tps,
            gen_tps=self.gen_tps,
            acceptance=self.acceptance,
            acceptance_per_depth=self.acceptance_per_depth,
            tokens_per_pass=self.tokens_per_pass,
        )
        return d


@dataclass
class Generation:
    """Generated tokens and text, why it stopped, and the stats."""

    tokens: list[int]
    text: str
    finish_reason: str  # "eos" | "stop" | "length" | "context" | "interrupted"
    stats: GenStats

    def to_dict(self) -> dict:
        return {
            "text": self.text,
            "tokens": self.tokens,
            "finish_reason": self.finish_reason,
            "stats": self.stats.to_dict(),
        }


def _recent(history: list[int], sp: SamplingParams) -> list[int]:
    """A copy of the tokens the repetition penalty can still see (not the whole history: O(1) a step)."""
    return history[-sp.repeat_last_n :] if sp.repeat_last_n > 0 else history[:]


class _Output:
    """Collects emitted tokens, streams text, and watches for EOG tokens and stop strings."""

    def __init__(
        self, model: Model, max_tokens: int, stop: Sequence[str], on_text: Callable[[str], None] | None
    ):
        self.model = model
        self.max_tokens = max_tokens
        self.stop = [s for s in stop if s]
        self.on_text = on_text
        self.tokens: list[int] = []
        self.text = ""
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._streamed = 0
        self.finish: str | None = None

    def emit(self, token: int) -> bool:
        """Add one token; True when generation must stop."""
        if self.model.is_eog(token):
            self.finish = "eos"
            return True
        self.tokens.append(int(token))
        self.text += self._dec.decode(self.model.piece(token))
        if self.stop:
            hits = [
                i for i in (self.text.find(s, max(0, self._streamed - len(s))) for s in self.stop) if i >= 0
            ]
            if hits:
                self.text = self.text[: min(hits)]
                self.finish = "stop"
        self._flush(final=self.finish is not None)
        if self.finish is None and len(self.tokens) >= self.max_tokens:
            self.finish = "length"
        return self.finish is not None

    def _flush(self, final: bool = False) -> None:
        # hold back a tail that could still become a stop string
        hold = 0 if final else max((len(s) - 1 for s in self.stop), default=0)
        end = max(self._streamed, len(self.text) - hold)
        if self.on_text and end > self._streamed:
            self.on_text(self.text[self._streamed : end])
        self._streamed = end

    def close(self) -> None:
        self._flush(final=True)


class Engine:
    """A model with a target context (and an MTP context) reused across generations."""

    def __init__(
        self,
        model: Model,
        *,
        n_ctx: int = DEFAULT_N_CTX,
        draft: int = 0,
        threads: int | None = None,
        drafter: Callable[[list[int], int], list[int]] | None = None,
    ):
        """drafter: replaces the MTP head (history, n) -> n draft tokens (a point-mass q); for tests."""
        if draft < 0 or draft > MAX_DRAFT:
            raise QwythosError(
                f"--draft {draft} is out of range", f"use 1..{MAX_DRAFT}, or 0 for plain decoding"
            )
        if draft > 0 and drafter is None and not model.has_mtp:
            raise QwythosError(
                f"{model.path} has no MTP (nextn) layer, so it cannot draft tokens",
                "use a GGUF with the MTP head (`qwythos mtp restore`) or run with --no-mtp",
            )
        self.model = model
        self.draft = draft
        self.n_ctx = n_ctx
        self.target: Context = model.new_target(n_ctx, n_draft=draft, threads=threads)
        self.drafter = drafter
        self.mtp: Context | None = None
        if draft > 0 and drafter is None:
            self.mtp = model.new_draft(n_ctx, n_batch=self.target.n_batch, threads=threads)

    def close(self) -> None:
        self.target.close()
        if self.mtp is not None:
            self.mtp.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------
    def _prefill(self, prompt: list[int]) -> tuple[np.ndarray, np.ndarray | None]:
        """Decode the prompt in chunks; return the last logits row and the last hidden row.

        With the MTP head, each chunk's catch-up rows (x_p, h_{p-1}) go to the MTP context right
        after the target computed them, so a long prompt never holds all its hidden states.
        """
        tgt, mtp = self.target, self.mtp
        want_h = self.draft > 0
        logits = None
        h_prev = np.zeros((1, self.model.n_embd), dtype=np.float32)  # h_{-1}: nothing before token 0
        for start in range(0, len(prompt), tgt.n_batch):
            chunk = prompt[start : start + tgt.n_batch]
            tgt.decode(chunk, start, outputs="last")
            logits = tgt.logits(1)[0]
            if want_h:
                h = tgt.hidden(len(chunk))
                if mtp is not None:
                    mtp.decode_rows(chunk, start, np.concatenate([h_prev, h[:-1]]))
                h_prev = h[-1:].copy()
        return logits, (h_prev[0] if want_h else None)

    def generate(
        self,
        prompt_tokens: Sequence[int],
        *,
        max_tokens: int = 256,
        sampling: SamplingParams = GREEDY,
        stop: Sequence[str] = (),
        on_text: Callable[[str], None] | None = None,
    ) -> Generation:
        prompt = [int(t) for t in prompt_tokens]
        if not prompt:
            raise QwythosError("the prompt is empty", "pass some text with -p")
        if len(prompt) >= self.n_ctx:
            raise QwythosError(
                f"the prompt has {len(prompt)} tokens but the context holds {self.n_ctx}",
                f"raise --ctx above {len(prompt) + max_tokens} or shorten the prompt",
            )
        stats = GenStats(prompt_tokens=len(prompt), draft=self.draft)
        stats.drafted_per_depth = [0] * self.draft
        stats.accepted_per_depth = [0] * self.draft
        rng = np.random.default_rng(sampling.seed)
        out = _Output(self.model, max_tokens, stop, on_text)
        self.target.clear()
        if self.mtp is not None:
            self.mtp.clear()
        history = list(prompt)  # the repetition penalty's view: prompt + generated
        t0 = time.perf_counter()
        try:
            logits, hidden = self._prefill(prompt)
            x = choose(logits, history, sampling, rng)
            t1 = time.perf_counter()
            stats.prompt_seconds = t1 - t0
            if self.draft == 0:
                self._plain(x, history, sampling, rng, out, stats)
            else:
                self._speculative(x, prompt, hidden, history, sampling, rng, out, stats)
        except KeyboardInterrupt:
            out.finish = "interrupted"
            out.on_text = None  # the caller is stopping: stream nothing more, return what there is
        end = time.perf_counter()
        if stats.prompt_seconds == 0.0:
            stats.prompt_seconds = end - t0
        else:
            stats.gen_seconds = end - t0 - stats.prompt_seconds
        out.close()
        stats.gen_tokens = len(out.tokens)
        stats.t_python = max(0.0, stats.gen_seconds - stats.t_draft - stats.t_verify - stats.t_rollback)
        return Generation(out.tokens, out.text, out.finish or "length", stats)

    def _room(self) -> int:
        return self.n_ctx - self.target.n_past

    def _plain(
        self, x: int, history: list[int], sp: SamplingParams, rng, out: _Output, stats: GenStats
    ) -> None:
        tgt = self.target
        while True:
            history.append(x)
            if out.emit(x):
                return
            if self._room() < 1:
                out.finish = "context"
                return
            a = time.perf_counter()
            tgt.decode([x], tgt.n_past, outputs="last")
            stats.t_verify += time.perf_counter() - a
            stats.target_passes += 1
            x = choose(tgt.logits(1)[0], history, sp, rng)

    def _speculative(
        self,
        x: int,
        prompt: list[int],
        hidden: np.ndarray,
        history: list[int],
        sp: SamplingParams,
        rng,
        out: _Output,
        stats: GenStats,
    ) -> None:
        tgt, mtp, N = self.target, self.mtp, self.draft
        perf = time.perf_counter
        # catch-up rows for the MTP context: token x_p paired with h_{p-1}
        # the prompt's catch-up rows are already in the MTP context (see _prefill)
        cu_tokens: list[int] = []
        cu_hidden = np.empty((0, self.model.n_embd), dtype=np.float32)
        h_last = hidden  # h_{n-1}
        while True:
            history.append(x)
            if out.emit(x):
                return
            n = tgt.n_past  # x sits at position n
            room = self._room() - 1
            if room < 0:
                out.finish = "context"
                return
            n_draft = min(N, room, out.max_tokens - len(out.tokens))
            # 1. draft --------------------------------------------------------------------------
            a = perf()
            drafts: list[int] = []
            qs = []
            if n_draft > 0 and self.drafter is not None:
                drafts = [int(t) for t in self.drafter(history[:], n_draft)][:n_draft]
                qs = [Dist(np.array([t], dtype=np.int64), np.ones(1)) for t in drafts]
            elif n_draft > 0:
                toks = cu_tokens + [x]
                hid = np.concatenate([cu_hidden, h_last[None, :]]) if len(cu_tokens) else h_last[None, :]
                mtp.decode_rows(toks, mtp.n_past, hid)
                cu_tokens = []
                dh = _recent(history, sp)  # the penalty's window, extended by the drafts
                for j in range(n_draft):
                    lg = mtp.logits(1)[0]
                    if sp.greedy:
                        d = greedy_token(lg, dh, sp)
                    else:
                        q = distribution(lg, dh, sp)
                        qs.append(q)
                        d = q.sample(rng)
                    drafts.append(d)
                    dh.append(d)
                    if j + 1 < n_draft:
                        hrow = mtp.hidden(1).copy()
                        mtp.decode([d], n + 1 + j, outputs="last", hidden=hrow[None, :])
                mtp.truncate(n + 1)  # keep (x_n, h_{n-1}); drop the draft rows
            b = perf()
            stats.t_draft += b - a
            # 2. verify -------------------------------------------------------------------------
            tgt.decode([x] + drafts, n, outputs="all")
            c = perf()
            stats.t_verify += c - b
            stats.target_passes += 1
            rows = len(drafts) + 1
            logits = tgt.logits(rows)
            hrows = tgt.hidden(rows)
            # 3. accept -------------------------------------------------------------------------
            acc = 0
            nxt = None
            ph = _recent(history, sp)  # the penalty's window as the target sees it at each row
            for j, d in enumerate(drafts):
                stats.drafted += 1
                stats.drafted_per_depth[j] += 1
                if sp.greedy:
                    t = greedy_token(logits[j], ph, sp)
                    if t != d:
                        nxt = t
                        break
                else:
                    p = distribution(logits[j], ph, sp)
                    q = qs[j]
                    pd, qd = p.prob(d), q.prob(d)
                    if not (qd > 0 and rng.random() < min(1.0, pd / qd)):
                        nxt = residual(p, q).sample(rng)
                        break
                acc += 1
                stats.accepted += 1
                stats.accepted_per_depth[j] += 1
                ph.append(d)
            if nxt is None:  # all drafts accepted: the target's own next token from the last row
                nxt = choose(logits[acc], ph, sp, rng)
            # catch-up rows for the accepted drafts: (d_j, h_{n+j-1}); the next x pairs with h_{n+acc}
            if not drafts:  # nothing drafted: x_n still has to reach the MTP context
                cu_tokens = cu_tokens + [x]
                cu_hidden = np.concatenate([cu_hidden, h_last[None, :]])
            else:
                cu_tokens = drafts[:acc]
                cu_hidden = hrows[:acc].copy()
            h_last = hrows[acc].copy()
            d0 = perf()
            # 4. rollback -----------------------------------------------------------------------
            if acc < len(drafts):
                if not tgt.truncate(n + 1 + acc):
                    raise QwythosError(f"{self.model.path}: recurrent-state rollback failed", None)
            e = perf()
            stats.t_rollback += e - d0
            for d in drafts[:acc]:
                history.append(d)
                if out.emit(d):
                    return
            x = nxt


def generate(
    model: Model,
    prompt_tokens: Sequence[int],
    *,
    max_tokens: int = 256,
    sampling: SamplingParams = GREEDY,
    draft: int = 0,
    stop: Sequence[str] = (),
    n_ctx: int | None = None,
    on_text: Callable[[str], None] | None = None,
    threads: int | None = None,
    drafter: Callable[[list[int], int], list[int]] | None = None,
) -> Generation:
    """Generate up to max_tokens after prompt_tokens; draft=N uses the MTP head (N drafts a step)."""
    ctx = n_ctx or min(DEFAULT_N_CTX, max(512, len(prompt_tokens) + max_tokens + MAX_DRAFT + 2))
    with Engine(model, n_ctx=ctx, draft=draft, threads=threads, drafter=drafter) as eng:
        return eng.generate(
            prompt_tokens, max_tokens=max_tokens, sampling=sampling, stop=stop, on_text=on_text
        )
