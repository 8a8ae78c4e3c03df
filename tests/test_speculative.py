"""The speculative loop: greedy MTP output == plain output, sampled output follows plain sampling."""

from __future__ import annotations

import numpy as np
import pytest

from qwythos.core.errors import QwythosError
from qwythos.runtime.sampling import GREEDY, SamplingParams, distribution
from qwythos.runtime.speculative import Engine, generate

PROMPTS = [
    "def main():\n",
    "import os\nimport sys\n",
    "class Foo:\n    def __init__(self",
    "for i in range(10):\n    print(",
    "# Copyright",
    "return self.",
    "x = [1, 2, 3]\n",
    "if __name__ == '__main__':",
]


def test_greedy_mtp_equals_plain_for_draft_1_to_4(rt_trained_model):
    m = rt_trained_model
    accepted = 0
    for prompt in PROMPTS:
        toks = m.tokenize(prompt)
        plain = generate(m, toks, max_tokens=48)
        assert plain.stats.drafted == 0 and plain.stats.target_passes >= len(plain.tokens) - 1
        for n in (1, 2, 3, 4):
            g = generate(m, toks, max_tokens=48, draft=n)
            assert g.tokens == plain.tokens, (prompt, n)
            assert g.text == plain.text
            assert g.stats.drafted > 0 and len(g.stats.accepted_per_depth) == n
            accepted += g.stats.accepted
    assert accepted > 0  # the trained head really drafts: rollback and acceptance paths both ran


def test_greedy_with_repetition_penalty_equals_plain(rt_trained_model):
    m = rt_trained_model
    sp = SamplingParams(temperature=0.0, repeat_penalty=1.3)
    toks = m.tokenize(PROMPTS[0])
    plain = generate(m, toks, max_tokens=40, sampling=sp)
    assert plain.tokens != generate(m, toks, max_tokens=40).tokens  # the penalty matters here
    for n in (1, 3):
        assert generate(m, toks, max_tokens=40, sampling=sp, draft=n).tokens == plain.tokens


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
        plain = generate(m, toks, max_tokens=40)
        for n in (2, 4):
            g = generate(m, toks, max_tokens=40, draft=n, drafter=_oracle(toks + plain.tokens, 0.4, n))
            assert g.tokens == plain.tokens
            assert 0 < g.stats.accepted < g.stats.drafted


def _chi2_critical(df: int, z: float = 3.09) -> float:
    """Wilson-Hilferty approximation of the chi-square quantile (z=3.09: p = 0.001)."""
    a = 2.0 / (9.0 * df)
    return df * (1.0 - a + z * np.sqrt(a)) ** 3


def _exact_joint(m, toks, sp) -> dict[tuple[int, int], float]:
    """Plain sampling's exact distribution of the first two tokens, from the model's logits."""
    eng = Engine(m, n_ctx=256)
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


@pytest.mark.parametrize("mode", ["mtp", "oracle"])
def test_sampled_speculative_follows_plain_distribution(rt_trained_model, mode):
    m = rt_trained_model
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
    with Engine(m, n_ctx=128, draft=3, drafter=drafter) as eng:
        for seed in range(n_runs):
            g = eng.generate(toks, max_tokens=2, sampling=SamplingParams(**{**sp.to_dict(), "seed": seed}))
            key = (g.tokens[0], g.tokens[1])
            assert key in joint, key
            counts[key] = counts.get(key, 0) + 1
            accepted += g.stats.accepted
            drafted += g.stats.drafted
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
    from qwythos.core.llama import load_model

    m = rt_trained_model
    toks = m.tokenize(PROMPTS[0])
    g = generate(m, toks, max_tokens=30, draft=2)
    s = g.stats
    assert s.gen_tokens == len(g.tokens) == 30 and g.finish_reason == "length"
    assert s.prompt_tps > 0 and s.gen_tps > 0 and 1.0 <= s.tokens_per_pass <= 3.0
    assert s.t_verify > 0 and s.t_draft > 0 and s.t_python >= 0
    assert sum(s.accepted_per_depth) == s.accepted
    full = generate(m, toks, max_tokens=30)
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
        assert generate(trunk, toks, max_tokens=10).tokens == full.tokens[:10]
    finally:
        trunk.close()
    with pytest.raises(QwythosError, match="no MTP"):
        load_model(rt_trained_trunk_gguf, mtp=True)


def test_greedy_default_params_are_greedy():
    assert GREEDY.greedy and not SamplingParams().greedy


def test_separate_draft_gguf_drafts_for_an_unchanged_trunk(trained_ggufs):
    """`mtp restore --separate` output runs as the draft model next to the trunk: same output, drafts accepted."""
    from qwythos.core.llama import load_model

    with load_model(trained_ggufs["trunk"], draft_path=trained_ggufs["separate"]) as m:
        assert m.has_mtp and not m.mtp_loaded
        for prompt in PROMPTS[:3]:
            toks = m.tokenize(prompt)
            plain = generate(m, toks, max_tokens=32)
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
    plain = generate(m, toks, max_tokens=32)
    for n in (1, 3):
        g = generate(m, toks, max_tokens=32, draft=n)
        assert g.tokens == plain.tokens
        assert g.stats.accepted > 0  # the head saw the whole prompt's hidden states


@pytest.mark.parametrize("draft", [0, 3])
def test_ctrl_c_returns_what_was_generated_and_the_stats(rt_trained_model, draft):
    m = rt_trained_model
    toks = m.tokenize(PROMPTS[1])
    full = generate(m, toks, max_tokens=40, draft=draft)
    seen: list[str] = []

    def stop_after_a_while(piece: str) -> None:
        seen.append(piece)
        if len("".join(seen)) >= 20:
            raise KeyboardInterrupt  # what Ctrl-C raises in the main thread

    with Engine(m, n_ctx=256, draft=draft) as eng:
        g = eng.generate(toks, max_tokens=40, on_text=stop_after_a_while)
        assert g.finish_reason == "interrupted"
        assert 0 < len(g.tokens) < len(full.tokens) and g.tokens == full.tokens[: len(g.tokens)]
        assert g.stats.gen_tokens == len(g.tokens) and g.stats.gen_seconds > 0
        again = eng.generate(toks, max_tokens=40)  # the engine is usable after an interrupt
        assert again.tokens == full.tokens


def test_draft_gguf_from_another_model_is_refused(trained_ggufs, mtp_fixture_ggufs, tmp_path):
    from qwythos.core.llama import load_model
    from qwythos.mtp.restore import restore

    other = restore(
        mtp_fixture_ggufs["trunk"], mtp_fixture_ggufs["full"], tmp_path / "other-mtp.gguf", separate=True
    ).output  # a stand-alone head of the random fixture (hidden 256), not of the trained model (128)
    with pytest.raises(QwythosError, match="does not belong to .*hidden size 256 != 128"):
        load_model(trained_ggufs["trunk"], draft_path=other)
