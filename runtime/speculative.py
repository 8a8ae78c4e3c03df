"""Generation with exact MTP draft speculative decoding (and plain decoding, draft=0).

State between steps: the target context holds positions 0..n-1; `x_n` (chosen from the target's
logits at n-1) is pending, and `h_{n-1}` (the target's post-norm hidden state there) is known. The
MTP context holds the pairs (x_p, h_{p-1}) for the positions it has caught up on; the pairs it
still lacks wait in a catch-up list.

One step with draft length N (`Engine._speculative`; N comes from the engine's `DraftPlan`,
runtime/draft_plan.py, settled by the caller):
1. draft (`_draft`): the MTP context decodes the catch-up rows plus (x_n, h_{n-1}) in one batch and
   reads the hidden state of that batch's *last* row, then chains single rows (d_j, h'_j) - its own
   hidden output - to draft d_1..d_N (stopping after an end-of-generation token);
2. verify (`_verify`): the target decodes [x_n, d_1..d_N] in one batch (logits + hidden per row);
3. accept (`sampling.accept_drafts`, a pure function of the logits): greedy - the longest prefix
   where d_j is the target's own choice, plus the target's next token; sampled - rejection sampling
   (accept d_j with prob min(1, p/q), else resample from norm(max(p - q, 0))), plus a bonus sample
   when all N are accepted;
4. rollback (`_rollback`): the target drops positions past the accepted prefix (KV cache and the
   recurrent state, restored from the snapshots `n_rs_seq` keeps); the MTP context drops its
   draft rows.
Greedy output is the plain greedy output; sampled output follows plain sampling's distribution,
whatever N each step uses - which is what lets `--draft auto`'s policy (runtime/draft_policy.py)
change N from step to step on measured costs and acceptance.

One caveat on "identical": llama.cpp computes a batch of tokens with different kernels than a
single token (the recurrent layers' chunked scan, batched matmuls), so a verify batch's logits
differ from single-token logits by float noise (measured: ~1e-4 in F32, ~0.02 in BF16 on the random
tiny fixture). Where the top two logits are closer than that, greedy MTP may pick the other token,
exactly as llama.cpp's own draft-mtp loop would. Trained models are rarely that undecided (the
trained tiny model matches plain decoding on every prompt tested), random-weight models sometimes are.
"""

from __future__ import annotations

import codecs
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from qwythos.core.drafting.costs import DraftCosts
from qwythos.core.drafting.lengths import MAX_DRAFT
from qwythos.core.drafting.rates import depth_rates, rate
from qwythos.core.errors import QwythosError
from qwythos.core.llamacpp.handles import Context, Model
from qwythos.core.model.release import START_CONTEXT
from qwythos.runtime.draft_plan import AUTO, Drafter, DraftPlan, draft_plan
from qwythos.runtime.sampling import (
    GREEDY,
    Dist,
    SamplingParams,
    accept_drafts,
    choose,
    distribution,
    greedy_token,
)
from qwythos.runtime.vision import Layout, Segment, Vision


@dataclass
class GenStats:
    """Speed and acceptance of one generation."""

    prompt_tokens: int = 0  # KV cells the prompt fills (an image fills more than its positions)
    gen_tokens: int = 0
    prompt_seconds: float = 0.0
    gen_seconds: float = 0.0
    draft: int = 0  # longest draft a step may use (the fixed N, or auto's maximum)
    draft_mode: str = "plain"  # "plain" | "fixed" | "auto"
    drafted: int = 0
    accepted: int = 0
    drafted_per_depth: list[int] = field(default_factory=list)
    accepted_per_depth: list[int] = field(default_factory=list)
    steps_per_draft: list[int] = field(default_factory=list)  # steps that drafted 0, 1, .. tokens
    target_passes: int = 0
    prefilled_tokens: int = 0  # prompt tokens actually decoded (a session reuses the rest)
    t_draft: float = 0.0  # MTP context decodes + draft token choice
    t_verify: float = 0.0  # target decodes during generation
    t_rollback: float = 0.0  # memory truncation
    t_python: float = 0.0  # everything else in the loop (acceptance, bookkeeping, callbacks)
    auto: dict | None = None  # draft="auto": what the policy chose and why

    @property
    def prompt_tps(self) -> float:
        return self.prompt_tokens / self.prompt_seconds if self.prompt_seconds > 0 else 0.0

    @property
    def gen_tps(self) -> float:
        return self.gen_tokens / self.gen_seconds if self.gen_seconds > 0 else 0.0

    @property
    def acceptance(self) -> float:
        return rate(self.accepted, self.drafted)

    @property
    def acceptance_per_depth(self) -> list[float]:
        return depth_rates(self.accepted_per_depth, self.drafted_per_depth)

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


@dataclass
class EngineCheckpoint:
    """The contexts after n_tokens positions: the target's recurrent state (KV caches are truncated
    instead) and the hidden state h_{n-1} the next MTP row pairs with."""

    n_tokens: int  # positions
    state: bytes = field(repr=False)
    h_last: np.ndarray = field(repr=False)
    cells: int | None = None  # KV cells the target held (more than positions after an image)


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
        """End of generation: bytes of a character cut off at the end come out as U+FFFD."""
        if self.finish != "stop":
            self.text += self._dec.decode(b"", final=True)
        self._flush(final=True)


def check_max_tokens(max_tokens: int) -> None:
    if max_tokens < 0:
        raise QwythosError(
            f"--max-tokens {max_tokens} is out of range", "use 0 or more (0 only reads the prompt)"
        )


class Engine:
    """A model with a target context (and an MTP context) reused across generations: the loop.

    plan: how it drafts (runtime/draft_plan.py: plain, a fixed N, or auto's policy, and a stand-in
    drafter if any), settled by the caller. p_min: stop a draft chain when the head's top
    probability falls below it (0: never).
    vision: a runtime/vision.Vision on this model; `generate` then also takes a Layout (text and
    image segments). Images go to the target only: the MTP context skips their positions, and the
    first token after an image pairs with the hidden state of the image's last row (llama.cpp's MTP
    graph takes (token, hidden) pairs, not image embeddings). With M-RoPE an image advances the
    position by max(nx, ny) but fills nx*ny KV cells, so the engine counts cells apart from
    positions: the room check is on cells, truncation and rollback on positions.
    """

    def __init__(
        self,
        model: Model,
        plan: DraftPlan,
        *,
        n_ctx: int = START_CONTEXT,
        threads: int | None = None,
        p_min: float = 0.0,
        vision: Vision | None = None,
    ):
        self.model = model
        self.plan = plan
        self.max_draft = plan.max_draft
        self.drafter = plan.drafter
        self.vision = vision
        self._extra_cells = 0  # KV cells in the target beyond its positions (images)
        self.n_ctx = n_ctx
        self.p_min = p_min
        self.threads = threads
        # auto starting at plain decoding keeps no recurrent snapshots until a step verifies drafts
        # (`_snapshots_for`): every decode with snapshots copies each recurrent layer's state once
        # more (llama.cpp's gated delta net with K > 1), and probes from plain verify one token
        self.snapshots = 0 if plan.starts_plain else self.max_draft
        self.target: Context = model.new_target(
            n_ctx, n_draft=self.max_draft, threads=threads, snapshots=self.snapshots
        )
        self.mtp: Context | None = None
        if self.max_draft > 0 and self.drafter is None:
            self.mtp = model.new_draft(n_ctx, n_batch=self.target.n_batch, threads=threads)
        self._reset_mtp_state()

    def close(self) -> None:
        self.target.close()
        if self.mtp is not None:
            self.mtp.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------
    def _reset_mtp_state(self) -> None:
        self._cu_tokens: list[int] = []  # catch-up rows the MTP context still lacks: x_p ...
        self._cu_hidden: list[np.ndarray] = []  # ... paired with h_{p-1}
        self._h_last = np.zeros(self.model.n_embd, dtype=np.float32)  # h_{n-1}

    def checkpoint(self) -> EngineCheckpoint:
        """The contexts' state now (between prefill chunks: no catch-up rows pending)."""
        n = self.target.n_past
        return EngineCheckpoint(n, self.target.save_state(), self._h_last.copy(), n + self._extra_cells)

    def restore(self, ck: EngineCheckpoint) -> None:
        """Back to a checkpoint: the target's recurrent state from the copy, its KV cache and the MTP
        context's truncated to the checkpoint's positions (they still hold that prefix)."""
        self.target.load_state(ck.state, ck.n_tokens)
        if not self.target.truncate(ck.n_tokens):
            raise QwythosError(f"{self.model.path}: restoring a chat checkpoint failed", None)
        if self.mtp is not None:
            self.mtp.truncate(ck.n_tokens)
        self._cu_tokens, self._cu_hidden = [], []
        self._h_last = ck.h_last.copy()
        self._extra_cells = 0 if ck.cells is None else ck.cells - ck.n_tokens

    def _prefill(
        self,
        prompt: list[int],
        start: int = 0,
        mark: tuple[int, Callable[[], None]] | None = None,
        base: int = 0,
    ) -> np.ndarray:
        """Decode prompt[start:] in chunks (positions before `start` are already in the contexts);
        return the last logits row. mark (k, fn): fn() is called when exactly k tokens are decoded.
        base: the position of prompt[0] (a text segment after an image starts past 0).

        With the MTP head, each chunk's catch-up rows (x_p, h_{p-1}) go to the MTP context right
        after the target computed them, so a long prompt never holds all its hidden states.
        """
        tgt, mtp = self.target, self.mtp
        want_h = self.max_draft > 0
        logits = None
        cut = mark[0] if mark is not None and start <= mark[0] < len(prompt) else len(prompt)
        bounds = [*range(start, cut, tgt.n_batch), cut, *range(cut, len(prompt), tgt.n_batch), len(prompt)]
        for s, e in itertools.pairwise(bounds):
            if s == cut and mark is not None and cut < len(prompt):
                mark[1]()
                mark = None
            if e <= s:
                continue
            chunk = prompt[s:e]
            tgt.decode(chunk, base + s, outputs="last")
            logits = tgt.logits(1)[0]
            if want_h:
                h = tgt.hidden(len(chunk))
                if mtp is not None:
                    mtp.decode_rows(chunk, base + s, np.concatenate([self._h_last[None, :], h[:-1]]))
                self._h_last = h[-1].copy()
        return logits

    def _prefill_image(self, seg: Segment, pos: int) -> None:
        """Decode one image into the target at `pos` (libmtmd: encode, then its M-RoPE embedding
        batch). The MTP context gets no rows for it; the next text token pairs with its last row."""
        self.vision.decode_image(self.target, seg, pos)
        self._extra_cells += seg.n_tokens - seg.n_pos
        if self.max_draft > 0:
            self._h_last = self.target.last_hidden()

    def _prefill_layout(
        self, layout: Layout, keep: int, mark: tuple[int, Callable[[], None]] | None
    ) -> np.ndarray:
        """Decode the layout's segments from position `keep` (which never falls inside an image)."""
        logits = None
        p = 0
        for seg in layout.segments:
            end = p + seg.n_pos
            if end > keep:
                if seg.kind == "text":
                    m = (mark[0] - p, mark[1]) if mark is not None and p <= mark[0] < end else None
                    logits = self._prefill(seg.tokens, max(0, keep - p), m, base=p)
                else:
                    if p < keep:
                        raise ValueError(f"keep={keep} falls inside an image at {p}..{end - 1}")
                    self._prefill_image(seg, p)
            p = end
        return logits

    def generate(
        self,
        prompt_tokens: Sequence[int] | Layout,
        *,
        max_tokens: int = 256,
        sampling: SamplingParams = GREEDY,
        stop: Sequence[str] = (),
        on_text: Callable[[str], None] | None = None,
        keep: int = 0,
        mark: tuple[int, Callable[[], None]] | None = None,
    ) -> Generation:
        """Generate after prompt_tokens. keep: positions the contexts already hold for this prompt's
        first `keep` tokens (a session's reused prefix); 0 clears them and prefills everything.
        mark (k, fn): fn() is called when the contexts hold the prompt's first k tokens (a
        session's checkpoint; k must lie in keep..len-1).

        prompt_tokens may be a runtime/vision.Layout (needs `vision`): keep and mark then count
        positions (an image spans max(nx, ny) of them), the context's room counts KV cells."""
        layout = prompt_tokens if isinstance(prompt_tokens, Layout) else None
        check_max_tokens(max_tokens)
        if layout is not None:
            prompt = _layout_text(layout, self.vision)
            n_prompt, n_cells = layout.n_pos, layout.n_tokens
        else:
            prompt = [int(t) for t in prompt_tokens]
            n_prompt = n_cells = len(prompt)
        if not prompt:
            raise QwythosError("the prompt is empty", "pass some text with -p")
        if n_cells >= self.n_ctx:
            what = (
                f" ({len(layout.images)} image(s) included)" if layout is not None and layout.images else ""
            )
            raise QwythosError(
                f"the prompt has {n_cells} tokens{what} but the context holds {self.n_ctx}",
                f"raise --ctx above {n_cells + max_tokens} or shorten the prompt",
            )
        stats = GenStats(prompt_tokens=n_cells, draft=self.max_draft, draft_mode=self.plan.mode)
        stats.drafted_per_depth = [0] * self.max_draft
        stats.accepted_per_depth = [0] * self.max_draft
        stats.steps_per_draft = [0] * (self.max_draft + 1)
        rng = np.random.default_rng(sampling.seed)
        out = _Output(self.model, max_tokens, stop, on_text)
        if not 0 <= keep < n_prompt or keep > self.target.n_past:
            raise ValueError(f"keep={keep}: at least the prompt's last token must be decoded")
        if keep == 0:
            self.target.clear()
            if self.mtp is not None:
                self.mtp.clear()
            self._reset_mtp_state()
            self._extra_cells = 0
        stats.prefilled_tokens = n_cells - (layout.cells_before(keep) if layout is not None else keep)
        history = list(prompt)  # the repetition penalty's view: prompt + generated
        t0 = time.perf_counter()
        try:
            if layout is not None:
                logits = self._prefill_layout(layout, keep, mark)
            else:
                logits = self._prefill(prompt, keep, mark)
            t1 = time.perf_counter()
            stats.prompt_seconds = t1 - t0
            if max_tokens > 0:
                x = choose(logits, history, sampling, rng)
                if self.max_draft == 0:
                    self._plain(x, history, sampling, rng, out, stats)
                else:
                    self._speculative(x, history, sampling, rng, out, stats)
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
        stats.auto = self.plan.done()
        return Generation(out.tokens, out.text, out.finish or "length", stats)

    def _room(self) -> int:
        """KV cells left in the target (an image fills more cells than positions)."""
        return self.n_ctx - self.target.n_past - self._extra_cells

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
            stats.steps_per_draft[0] += 1
            x = choose(tgt.logits(1)[0], history, sp, rng)

    # -- the speculative step, in pieces ---------------------------------------------------------
    def _draft(
        self, x: int, n: int, n_draft: int, history: list[int], sp: SamplingParams, rng
    ) -> tuple[list[int], list[Dist] | None]:
        """Up to n_draft tokens after x (at position n), and the distributions they came from
        (None: point masses). Stops after an end-of-generation token and, with p_min, when the
        head's top probability is low."""
        if n_draft <= 0:
            return [], None
        if self.drafter is not None:
            drafts = [int(t) for t in self.drafter(history[:], n_draft)][:n_draft]
            for j, d in enumerate(drafts):
                if self.model.is_eog(d):
                    return drafts[: j + 1], None
            return drafts, None
        mtp = self.mtp
        toks = [*self._cu_tokens, x]
        hid = np.stack([*self._cu_hidden, self._h_last])
        mtp.decode_rows(toks, n - len(toks) + 1, hid)
        self._cu_tokens, self._cu_hidden = [], []
        drafts: list[int] = []
        qs: list[Dist] = []
        dh = _recent(history, sp)  # the penalty's window, extended by the drafts
        for j in range(n_draft):
            lg = mtp.logits(1)[0]
            if sp.greedy:
                if self.p_min > 0.0 and _top_prob(lg) < self.p_min:
                    break
                d = greedy_token(lg, dh, sp)
            else:
                q = distribution(lg, dh, sp)
                if self.p_min > 0.0 and float(q.p[0]) < self.p_min:
                    break
                qs.append(q)
                d = q.sample(rng)
            drafts.append(d)
            dh.append(d)
            if self.model.is_eog(d):
                break
            if j + 1 < n_draft:
                mtp.decode([d], n + 1 + j, outputs="last", hidden=mtp.last_hidden()[None, :])
        mtp.truncate(n + 1)  # keep (x_n, h_{n-1}); drop the draft rows
        return drafts, (qs if not sp.greedy else None)

    def _verify(self, x: int, drafts: list[int], n: int) -> tuple[np.ndarray, np.ndarray]:
        """The target's logits and hidden states for [x, drafts...] at positions n.. (views)."""
        self.target.decode([x, *drafts], n, outputs="all")
        rows = len(drafts) + 1
        logits = self.target.logits(rows)
        if rows > 1 and self.model.repacked and not logits.any(axis=1).all():
            _empty_rows(self.model.path, rows)
        return logits, self.target.hidden(rows)

    def _snapshots_for(self, n_drafts: int) -> None:
        """Before a verify of n_drafts drafts: a target without snapshots is rebuilt with them (its
        state, KV cache and recurrent, carried over; once per engine, a few ms per 1k positions)."""
        if n_drafts <= self.snapshots:
            return
        n = self.target.n_past
        state = self.target.save_state(partial=False)
        self.target.close()  # first: the two contexts never hold memory at once
        self.target = self.model.new_target(self.n_ctx, n_draft=self.max_draft, threads=self.threads)
        self.snapshots = self.max_draft
        self.target.load_state(state, n, partial=False)

    def _rollback(self, n: int, accepted: int, n_drafts: int) -> None:
        """Drop the target's positions after the accepted prefix (the MTP context already dropped
        its draft rows); remember the catch-up rows the MTP context still lacks."""
        if accepted < n_drafts and not self.target.truncate(n + 1 + accepted):
            raise QwythosError(f"{self.model.path}: recurrent-state rollback failed", None)

    def _speculative(
        self, x: int, history: list[int], sp: SamplingParams, rng, out: _Output, stats: GenStats
    ) -> None:
        perf = time.perf_counter
        plan = self.plan
        while True:
            history.append(x)
            if out.emit(x):
                return
            n = self.target.n_past  # x sits at position n
            room = self._room() - 1
            if room < 0:
                out.finish = "context"
                return
            limit = min(room, out.max_tokens - len(out.tokens))
            n_draft = plan.choose(limit)
            probe = plan.probing
            self._snapshots_for(n_draft - 1 if probe else n_draft)  # the most this step verifies
            a = perf()
            fed = n_draft > 0 and self.mtp is not None  # the MTP context takes the catch-up rows
            drafts, qs = self._draft(x, n, n_draft, history, sp, rng)
            b = perf()
            # a probe's last draft is judged against the last row of the batch the choice verifies,
            # not verified itself: the probe costs one head step, never a longer batch (nor, from
            # plain decoding, a rollback)
            short = probe and len(drafts) == n_draft
            verified = drafts[:-1] if short else drafts
            logits, hrows = self._verify(x, verified, n)
            c = perf()
            v = accept_drafts(drafts, logits, _recent(history, sp), sp, rng, qs, bonus=not short)
            acc = v.accepted  # drafts accepted; the target holds `kept` of them
            kept = min(acc, len(verified))
            if self.mtp is not None:
                if fed:
                    self._cu_tokens, self._cu_hidden = verified[:kept], list(hrows[:kept].copy())
                else:
                    self._cu_tokens.append(x)
                    self._cu_hidden.append(self._h_last)
            self._h_last = hrows[kept].copy()
            d0 = perf()
            self._rollback(n, kept, len(verified))
            e = perf()
            stats.t_draft += b - a
            stats.t_verify += c - b
            stats.t_rollback += e - d0
            stats.target_passes += 1
            stats.steps_per_draft[len(drafts)] += 1
            for j in range(min(len(drafts), acc + 1)):
                stats.drafted += 1
                stats.drafted_per_depth[j] += 1
                if j < acc:
                    stats.accepted += 1
                    stats.accepted_per_depth[j] += 1
            plan.record(len(drafts), acc, c - b, b - a, len(verified) + 1)
            for d in verified[:kept]:
                history.append(d)
                if out.emit(d):
                    return
            x = v.next_token


def _empty_rows(path: Path, rows: int) -> None:
    """A verify batch came back with all-zero logit rows: llama.cpp's repacked CPU kernels failing
    on this file (core/llamacpp/probe.py). Never emit from it: remember the file, so the next load avoids them."""
    from qwythos.core.llamacpp import probe

    probe.record_batched_verdict(path, False)
    raise QwythosError(
        f"llama.cpp returned empty logits for a batch of {rows} rows of {path}: its repacked CPU "
        "kernels fail on this file on this CPU",
        "run the command again: the file now loads without them (use_extra_bufts=False), or pass --draft 2",
    )


def _layout_text(layout: Layout, vision: Vision | None) -> list[int]:
    """The layout's text tokens in order (the repetition penalty's view); checks it can be run."""
    if layout.images and vision is None:
        raise QwythosError(
            f"the prompt has {len(layout.images)} image(s) but no vision projector is loaded",
            "pass the mmproj file with --mmproj",
        )
    if layout.segments and layout.segments[-1].kind != "text":
        raise QwythosError("the prompt ends with an image", "put text (the generation prompt) after it")
    return [int(t) for s in layout.segments if s.kind == "text" for t in s.tokens]


def _top_prob(logits: np.ndarray) -> float:
    """The softmax probability of the top logit."""
    m = float(logits.max())
    return 1.0 / float(np.exp(logits.astype(np.float64) - m).sum())


def generate(
    model: Model,
    prompt_tokens: Sequence[int],
    *,
    max_tokens: int = 256,
    sampling: SamplingParams = GREEDY,
    draft: int | str = AUTO,
    stop: Sequence[str] = (),
    n_ctx: int | None = None,
    on_text: Callable[[str], None] | None = None,
    threads: int | None = None,
    drafter: Drafter | None = None,
    costs: DraftCosts | str | None = "cache",
) -> Generation:
    """Generate up to max_tokens after prompt_tokens on a fresh engine; draft: "auto" (default), N
    drafts a step, 0 plain; costs and drafter: as runtime/draft_plan.draft_plan takes them."""
    check_max_tokens(max_tokens)
    plan = draft_plan(model, draft, threads=threads, costs=costs, drafter=drafter)
    ctx = n_ctx or min(START_CONTEXT, max(512, len(prompt_tokens) + max_tokens + MAX_DRAFT + 2))
    with Engine(model, plan, n_ctx=ctx, threads=threads) as eng:
        return eng.generate(
            prompt_tokens, max_tokens=max_tokens, sampling=sampling, stop=stop, on_text=on_text
        )
