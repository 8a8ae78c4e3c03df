"""The speculative loop: greedy MTP output == plain output, sampled output follows plain sampling."""

from __future__ import annotations

import numpy as np
import pytest

from qwythos.core.errors import QwythosError
from qwythos.runtime.draft_plan import DraftPlan, draft_plan
from qwythos.runtime.draft_policy import DraftPolicy
from qwythos.runtime.sampling import GREEDY, SamplingParams, distribution
from qwythos.runtime.speculative import Engine, generate
from qwythos.runtime.speed import CODE_PROMPTS

PROMPTS = list(CODE_PROMPTS)


@pytest.fixture(params=["bf16", "f32"])
def trained(request):
    """The trained tiny model in BF16 and in F32."""
    return request.getfixturevalue("rt_trained_model" if request.param == "bf16" else "rt_trained_f32_model")


def test_greedy_mtp_equals_plain_for_draft_1_to_4_and_auto(trained):
    m = trained
    accepted = 0
    auto_drafted = 0
    for prompt in PROMPTS:
        toks = m.tokenize(prompt)
        plain = generate(m, toks, max_tokens=48, draft=0)
        assert plain.stats.drafted == 0 and plain.stats.target_passes >= len(plain.tokens) - 1
        for n in (1, 2, 3, 4, "auto"):
            g = generate(m, toks, max_tokens=48, draft=n)
            assert g.tokens == plain.tokens, (prompt, n)
            assert g.text == plain.text
            if n == "auto":
                assert g.stats.draft_mode == "auto" and g.stats.auto["steps_per_draft_length"]
                auto_drafted += g.stats.drafted
            else:
                assert g.stats.drafted > 0 and len(g.stats.accepted_per_depth) == n
            accepted += g.stats.accepted
    assert accepted > 0 and auto_drafted > 0  # the trained head really drafts: every path ran


def test_greedy_with_repetition_penalty_equals_plain(rt_trained_model):
    m = rt_trained_model
    sp = SamplingParams(temperature=0.0, repeat_penalty=1.3)
    toks = m.tokenize(PROMPTS[0])
    plain = generate(m, toks, max_tokens=40, sampling=sp, draft=0)
    assert plain.tokens != generate(m, toks, max_tokens=40, draft=0).tokens  # the penalty matters here
    for n in (1, 3, "auto"):
        assert generate(m, toks, max_tokens=40, sampling=sp, draft=n).tokens == plain.tokens


class _Probing(DraftPlan):
    """Every step a probe one draft deeper than `base`: the extra draft is judged against the last
    row of the base batch, never verified itself (what auto's probes do)."""

    def __init__(self, base: int, max_draft: int = 4) -> None:
        super().__init__("auto", max_draft)
        self.base = base

    def choose(self, limit: int) -> int:
        return min(self.base + 1, limit)

    @property
    def probing(self) -> bool:
        return True


def test_probes_judge_their_last_draft_unverified_and_stay_exact(rt_trained_model):
    """From plain decoding a probe is a one-token step plus a draft; from draft 2 a 3-token verify
    plus a third draft. Hits (the unverified draft becomes the next token) and misses both occur."""
    m = rt_trained_model
    for base in (0, 2):
        hits = judged = 0
        for prompt in PROMPTS[:4]:
            toks = m.tokenize(prompt)
            plain = generate(m, toks, max_tokens=40, draft=0)
            with Engine(m, _Probing(base), n_ctx=256) as eng:
                g = eng.generate(toks, max_tokens=40)
            assert g.tokens == plain.tokens, (prompt, base)
            s = g.stats
            assert s.target_passes >= len(g.tokens) // (base + 1) - 1  # no step yields more than base + 1
            hits += s.accepted_per_depth[base]
            judged += s.drafted_per_depth[base]
        assert 0 < hits < judged, base  # hits and misses


class _PlainThenDraft(DraftPlan):
    """Auto that starts at plain decoding (its target without snapshots) and drafts 3 from step k."""

    def __init__(self, k: int) -> None:
        super().__init__("auto", 4)
        self.k, self.steps = k, 0

    @property
    def starts_plain(self) -> bool:
        return True

    def choose(self, limit: int) -> int:
        self.steps += 1
        return 0 if self.steps <= self.k else min(3, limit)


def test_a_target_without_snapshots_gets_them_when_drafting_starts(rt_trained_model):
    """The target is rebuilt with snapshots mid-generation, its state carried over: still exact."""
    m = rt_trained_model
    for prompt in PROMPTS[:3]:
        toks = m.tokenize(prompt)
        plain = generate(m, toks, max_tokens=40, draft=0)
        with Engine(m, _PlainThenDraft(7), n_ctx=256) as eng:
            assert eng.snapshots == 0
            g = eng.generate(toks, max_tokens=40)
            assert eng.snapshots == 4 and g.stats.steps_per_draft[0] == 7
            assert g.tokens == plain.tokens, prompt
            assert 0 < g.stats.accepted < g.stats.drafted  # rollbacks ran on the rebuilt target
            again = eng.generate(toks, max_tokens=40)  # the engine goes on with it
            assert again.tokens == plain.tokens


def _oracle(reference: list[int], noise: float, seed: int):
    rng = np.random.default_rng(seed)

    def draft(history: list[int], n: int) -> list[int]:
        out = []
        for k in range(n):
            i = len(history) + k
            t = reference[i] if i < len(reference) else 0
            out.append((t + 1) % 997 if rng.random() < noise else t)
        return out

    return draft


def test_rollback_exact_with_partly_wrong_drafts(rt_trained_model):
    """A drafter right 60% of the time exercises every accept length and the rollback."""
    m = rt_trained_model
    for prompt in PROMPTS[:4]:
        toks = m.tokenize(prompt)
        plain = generate(m, toks, max_tokens=40, draft=0)
        for n in (2, 4, "auto"):
            seed = n if isinstance(n, int) else 9
            g = generate(m, toks, max_tokens=40, draft=n, drafter=_oracle(toks + plain.tokens, 0.4, seed))
            assert g.tokens == plain.tokens
            assert 0 < g.stats.accepted < g.stats.drafted


def _chi2_critical(df: int, z: float = 3.09) -> float:
    """Wilson-Hilferty approximation of the chi-square quantile (z=3.09: p = 0.001)."""
    a = 2.0 / (9.0 * df)
    return df * (1.0 - a + z * np.sqrt(a)) ** 3


def _exact_joint(m, toks, sp) -> dict[tuple[int, int], float]:
    """Plain sampling's exact distribution of the first two tokens, from the model's logits."""
    eng = Engine(m, draft_plan(m, 0), n_ctx=256)
    try:
        eng.target.clear()
        eng.target.decode(toks, 0)
        p1 = distribution(eng.target.logits(1)[0].copy(), toks, sp)
        joint = {}
        for t1, a in zip(p1.ids.tolist(), p1.p.tolist(), strict=True):
            assert not m.is_eog(t1)
            eng.target.truncate(len(toks))
            eng.target.clear()
            eng.target.decode(toks + [t1], 0)
            p2 = distribution(eng.target.logits(1)[0].copy(), toks + [t1], sp)
            for t2, b in zip(p2.ids.tolist(), p2.p.tolist(), strict=True):
                joint[(t1, t2)] = a * b
        return joint
    finally:
        eng.close()


@pytest.mark.parametrize(
    ("dtype", "mode"),
    [
        ("bf16", "mtp"),
        ("bf16", "oracle"),
        ("bf16", "auto"),
        ("bf16", "probe"),
        ("f32", "mtp"),
        ("f32", "auto"),
    ],
)
def test_sampled_speculative_follows_plain_distribution(request, dtype, mode):
    m = request.getfixturevalue("rt_trained_model" if dtype == "bf16" else "rt_trained_f32_model")
    toks = m.tokenize("def ")
    sp = SamplingParams(temperature=1.5, top_k=4, top_p=1.0, min_p=0.0, repeat_penalty=1.2)
    joint = _exact_joint(m, toks, sp)
    n_runs = 1200
    drafter = None
    if mode == "oracle":  # a point-mass q that is often wrong: the residual path is taken a lot
        rng = np.random.default_rng(1)
        drafter = lambda hist, n: [int(rng.choice(sorted({k[1] for k in joint})))] * n  # noqa: E731
    counts: dict[tuple[int, int], int] = {}
    accepted = drafted = 0
    if mode == "probe":  # every step a probe from plain: the second token is the unverified draft's verdict
        plan = _Probing(0)
    else:
        plan = draft_plan(m, "auto" if mode == "auto" else 3, drafter=drafter, costs=None)
    with Engine(m, plan, n_ctx=128) as eng:
        for seed in range(n_runs):
            if mode == "auto" and seed % 5 == 0:
                # a fresh policy every 5 runs: its exploration steps take plain, then lengths 1, 2, ...
                # while drafts land,
                # whatever this machine's timings (which decide what it does after exploring)
                eng.plan.policy = DraftPolicy(eng.max_draft, None)
            g = eng.generate(toks, max_tokens=2, sampling=SamplingParams(**{**sp.to_dict(), "seed": seed}))
            key = (g.tokens[0], g.tokens[1])
            assert key in joint, key
            counts[key] = counts.get(key, 0) + 1
            accepted += g.stats.accepted
            drafted += g.stats.drafted
    if mode in ("auto", "probe"):  # lengths vary per step, but it drafts and both paths run
        assert 0 < accepted < drafted
    else:
        assert drafted == n_runs and 0 < accepted < drafted
    keys = [k for k in joint if joint[k] * n_runs >= 5]
    other = 1.0 - sum(joint[k] for k in keys)
    obs = [counts.get(k, 0) for k in keys] + [n_runs - sum(counts.get(k, 0) for k in keys)]
    exp = [joint[k] * n_runs for k in keys] + [other * n_runs]
    if exp[-1] < 5:
        obs, exp = obs[:-1], exp[:-1]
    chi2 = sum((o - e) ** 2 / e for o, e in zip(obs, exp, strict=True))
    assert chi2 < _chi2_critical(len(exp) - 1), (chi2, len(exp))


def test_stats_stop_and_bad_input(rt_trained_model, rt_trained_trunk_gguf):
    from qwythos.core.llamacpp.handles import load_model

    m = rt_trained_model
    toks = m.tokenize(PROMPTS[0])
    g = generate(m, toks, max_tokens=30, draft=2)
    s = g.stats
    assert s.draft_mode == "fixed" and s.auto is None
    assert s.gen_tokens == len(g.tokens) == 30 and g.finish_reason == "length"
    assert s.prompt_tps > 0 and s.gen_tps > 0 and 1.0 <= s.tokens_per_pass <= 3.0
    assert s.t_verify > 0 and s.t_draft > 0 and s.t_python >= 0
    assert sum(s.accepted_per_depth) == s.accepted
    full = generate(m, toks, max_tokens=30, draft=0)
    stop = full.text[5:9]
    cut = generate(m, toks, max_tokens=30, draft=3, stop=[stop])
    assert cut.finish_reason == "stop" and cut.text == full.text[: full.text.find(stop)]
    streamed: list[str] = []
    generate(m, toks, max_tokens=30, draft=2, on_text=streamed.append)
    assert "".join(streamed) == full.text
    with pytest.raises(QwythosError, match="context holds"):
        generate(m, toks * 50, max_tokens=4, n_ctx=64)
    trunk = load_model(rt_trained_trunk_gguf)
    try:
        assert not trunk.has_mtp
        with pytest.raises(QwythosError, match="no MTP"):
            generate(trunk, toks, max_tokens=4, draft=2)
        auto = generate(trunk, toks, max_tokens=10)  # auto without a head: plain, and says so
        assert auto.tokens == full.tokens[:10] and auto.stats.draft_mode == "plain"
        assert "no MTP head" in auto.stats.auto["reason"]
    finally:
        trunk.close()
    with pytest.raises(QwythosError, match="no MTP"):
        load_model(rt_trained_trunk_gguf, mtp=True)


def test_greedy_default_params_are_greedy():
    assert GREEDY.greedy and not SamplingParams().greedy


def test_separate_draft_gguf_drafts_for_an_unchanged_trunk(trained_ggufs):
    """`mtp restore --separate` output runs as the draft model next to the trunk: same output, drafts accepted."""
    from qwythos.core.llamacpp.handles import load_model

    with load_model(trained_ggufs["trunk"], draft_path=trained_ggufs["separate"]) as m:
        assert m.has_mtp and not m.mtp_loaded
        for prompt in PROMPTS[:3]:
            toks = m.tokenize(prompt)
            plain = generate(m, toks, max_tokens=32, draft=0)
            g = generate(m, toks, max_tokens=32, draft=3)
            assert g.tokens == plain.tokens
            assert g.stats.accepted > 0
    with pytest.raises(QwythosError, match="does not belong|no MTP"):
        load_model(trained_ggufs["trunk"], draft_path=trained_ggufs["trunk"])


def test_long_prompt_prefilled_in_chunks(rt_trained_model):
    """A prompt longer than one batch (512) is prefilled in chunks; the MTP context catches up per chunk."""
    from pathlib import Path

    m = rt_trained_model
    text = (Path(__file__).resolve().parents[1] / "data" / "calibration.txt").read_text(encoding="utf-8")
    toks = m.tokenize(text)[:1300]
    assert len(toks) == 1300
    plain = generate(m, toks, max_tokens=32, draft=0)
    for n in (1, 3):
        g = generate(m, toks, max_tokens=32, draft=n)
        assert g.tokens == plain.tokens
        assert g.stats.accepted > 0  # the head saw the whole prompt's hidden states


@pytest.mark.parametrize("draft", [0, 3])
def test_ctrl_c_returns_what_was_generated_and_the_stats(rt_trained_model, draft):
    m = rt_trained_model
    toks = m.tokenize(PROMPTS[1])
    full = generate(m, toks, max_tokens=40, draft=0)
    seen: list[str] = []

    def stop_after_a_while(piece: str) -> None:
        seen.append(piece)
        if len("".join(seen)) >= 20:
            raise KeyboardInterrupt  # what Ctrl-C raises in the main thread

    with Engine(m, draft_plan(m, draft), n_ctx=256) as eng:
        g = eng.generate(toks, max_tokens=40, on_text=stop_after_a_while)
        assert g.finish_reason == "interrupted"
        assert 0 < len(g.tokens) < len(full.tokens) and g.tokens == full.tokens[: len(g.tokens)]
        assert g.stats.gen_tokens == len(g.tokens) and g.stats.gen_seconds > 0
        again = eng.generate(toks, max_tokens=40)  # the engine is usable after an interrupt
        assert again.tokens == full.tokens


def test_draft_gguf_from_another_model_is_refused(trained_ggufs, mtp_fixture_ggufs, tmp_path):
    from qwythos.core.llamacpp.handles import load_model
    from qwythos.mtp.restore import restore

    other = restore(
        mtp_fixture_ggufs["trunk"], mtp_fixture_ggufs["full"], tmp_path / "other-mtp.gguf", separate=True
    ).output  # a stand-alone head of the random fixture (hidden 256), not of the trained model (128)
    with pytest.raises(QwythosError, match="does not belong to .*hidden size 256 != 128"):
        load_model(trained_ggufs["trunk"], draft_path=other)


# ---- the draft chain's hidden state, max_tokens 0, EOS inside a draft ---------------------------
def test_every_draft_equals_a_fresh_head_fed_one_row_at_a_time(rt_trained_f32_model):
    """Depth 1..4: each step's drafts are what a fresh MTP context, fed the same (token, hidden) rows
    one at a time, drafts - after steps that accepted none, one and all of their drafts. (A batch's
    multi-row catch-up once read the first row's hidden state for the chain instead of the last.)"""
    m = rt_trained_f32_model
    previous_accepts: set[tuple[int, int]] = set()
    for n in (1, 2, 3, 4):
        for prompt in PROMPTS[:6]:
            eng = Engine(m, draft_plan(m, n), n_ctx=512)
            rows: dict[int, tuple[int, np.ndarray]] = {}
            steps: list[tuple[int, list[int]]] = []
            feed, draft = eng.mtp.decode_rows, eng._draft

            def record_rows(tokens, pos0, hidden, feed=feed, rows=rows):
                for i, t in enumerate(tokens):
                    rows[pos0 + i] = (int(t), np.array(hidden[i], copy=True))
                return feed(tokens, pos0, hidden)

            def record_draft(x, pos, n_draft, history, sp, rng, eng=eng, draft=draft, steps=steps, n=n):
                previous_accepts.add((n, len(eng._cu_tokens)))  # catch-up rows = last step's accepted
                out = draft(x, pos, n_draft, history, sp, rng)
                steps.append((pos, list(out[0])))
                return out

            eng.mtp.decode_rows, eng._draft = record_rows, record_draft
            try:
                eng.generate(m.tokenize(prompt), max_tokens=40)
            finally:
                eng.close()
            ref = m.new_draft(512)
            try:
                fed = 0
                for pos, drafts in steps:
                    while fed <= pos:
                        t, h = rows[fed]
                        ref.decode([t], fed, outputs="last", hidden=h[None, :])
                        fed += 1
                    expect = []
                    for j in range(len(drafts)):
                        expect.append(int(np.argmax(ref.logits(1)[0])))
                        if j + 1 < len(drafts):
                            ref.decode(
                                [expect[-1]], pos + 1 + j, outputs="last", hidden=ref.last_hidden()[None, :]
                            )
                    ref.truncate(pos + 1)
                    assert drafts == expect, (prompt, n, pos)
            finally:
                ref.close()
    for n in (2, 3, 4):  # the chain after a step with no, one and every draft accepted was checked
        assert {(n, 0), (n, 1), (n, n)} <= previous_accepts, sorted(previous_accepts)


def test_max_tokens_zero_reads_the_prompt_only(rt_trained_model):
    m = rt_trained_model
    toks = m.tokenize(PROMPTS[0])
    for n in (0, 2, "auto"):
        with Engine(m, draft_plan(m, n), n_ctx=256) as eng:
            g = eng.generate(toks, max_tokens=0)
            assert g.tokens == [] and g.text == "" and g.finish_reason == "length"
            assert eng.target.n_past == len(toks) and g.stats.prompt_tokens == len(toks)
    with pytest.raises(QwythosError, match="--max-tokens -1 is out of range"):
        generate(m, toks, max_tokens=-1)


def test_acceptance_stops_counting_at_an_end_of_generation_draft(rt_trained_model, monkeypatch):
    """A perfect drafter proposes the greedy text straight through an EOS token: drafts past the EOS
    are never emitted, so they must not be counted as accepted either."""
    m = rt_trained_model
    toks = m.tokenize(PROMPTS[2])
    ref = generate(m, toks, max_tokens=40, draft=0).tokens
    eos_token = ref[9]  # pretend this token ends generation
    monkeypatch.setattr(m, "is_eog", lambda t: int(t) == eos_token)
    cut = ref.index(eos_token)
    for n in (2, 3, 4):
        g = generate(m, toks, max_tokens=40, draft=n, drafter=_oracle(toks + ref, 0.0, 0))
        assert g.tokens == ref[:cut] and g.finish_reason == "eos"
        s = g.stats
        # each step emits its own token plus its accepted drafts; the EOS is the one not in tokens
        assert s.accepted <= s.gen_tokens + 1 - s.target_passes, (
            n,
            s.accepted,
            s.gen_tokens,
            s.target_passes,
        )
        assert s.accepted == sum(s.accepted_per_depth)


def test_auto_keeps_what_a_cold_run_measured_for_the_next_run(rt_trained_model):
    from qwythos.core.drafting import costs as draft_costs

    m = rt_trained_model
    toks = m.tokenize(PROMPTS[0])
    with Engine(m, draft_plan(m, threads=1), n_ctx=256, threads=1) as eng:  # auto, no cached costs
        assert eng.plan.reason == "no cached costs: measuring"
        short = eng.generate(toks, max_tokens=2)  # stopped before every length was timed
        assert draft_costs.lookup(m.path, 1, m.placement) is None
        g = eng.generate(toks, max_tokens=48)
    rec = draft_costs.lookup(m.path, 1, m.placement)
    assert rec is not None and rec.source == "run" and len(rec.costs.verify_s) == eng.max_draft + 1
    assert draft_costs.recommended_draft(m.path, 1) is None and short.tokens == g.tokens[:2]
    with Engine(m, draft_plan(m, threads=1), n_ctx=256, threads=1) as again:
        assert "earlier run" in again.plan.reason and again.plan.policy.start == rec.costs
        h = again.generate(toks, max_tokens=48)
    assert h.tokens == g.tokens and h.stats.auto["started_from"] == "cache"
    assert draft_costs.lookup(m.path, 1, m.placement).measured_at == rec.measured_at  # kept, not redone
