"""Chat sessions reuse the contexts' cache: a turn prefills only what is new since the last checkpoint."""

from __future__ import annotations

import pytest

from qwythos.runtime.chat import TURN_END, render_chat
from qwythos.runtime.draft_plan import draft_plan
from qwythos.runtime.session import ChatSession
from qwythos.runtime.speculative import Engine, generate

USER_TURNS = ["def add(a, b):", "import os", "class Point:", "for i in range(3):", "print("]


@pytest.mark.parametrize("draft", [0, 2, "auto"])
def test_turns_prefill_only_the_new_part_and_match_fresh_runs(rt_trained_f32_model, draft):
    m = rt_trained_f32_model
    msgs: list[dict] = []
    prompts: list[list[int]] = []
    with Engine(m, draft_plan(m, draft), n_ctx=2048) as eng:
        session = ChatSession(eng)
        for turn, user in enumerate(USER_TURNS[:3]):
            msgs.append({"role": "user", "content": user})
            toks = m.tokenize(render_chat(m.info.chat_template, msgs))
            g = session.generate(toks, max_tokens=16, stop=list(TURN_END))
            fresh = generate(m, toks, max_tokens=16, stop=list(TURN_END), draft=0, n_ctx=2048)
            assert g.tokens == fresh.tokens and g.text == fresh.text, turn
            if turn == 0:
                assert g.stats.prefilled_tokens == len(toks)
            else:  # the checkpoint sits before the previous prompt's last <|im_start|>
                ck = session.checkpoint_position(prompts[-1])
                assert toks[:ck] == prompts[-1][:ck]
                assert g.stats.prefilled_tokens == len(toks) - ck
            prompts.append(toks)
            msgs.append({"role": "assistant", "content": g.text, "reasoning_content": "some thoughts"})
        # the same conversation again from its first turn: an old checkpoint still serves
        again = session.generate(prompts[0], max_tokens=16, stop=list(TURN_END))
        assert again.tokens == generate(m, prompts[0], max_tokens=16, stop=list(TURN_END), draft=0).tokens
        assert again.stats.prefilled_tokens == len(prompts[0]) - session.checkpoint_position(prompts[0])
        # an unrelated prompt shares nothing: a full prefill, same reply as a fresh run
        other = m.tokenize("x = 1\n")
        g = session.generate(other, max_tokens=8)
        assert g.stats.prefilled_tokens == len(other)
        assert g.tokens == generate(m, other, max_tokens=8, draft=0).tokens
