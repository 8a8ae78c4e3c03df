"""Chat template rendering from GGUF metadata, and output parsing."""

from __future__ import annotations

import pytest

from qwythos.core.errors import QwythosError
from qwythos.runtime.chat import CARD_SAMPLING, parse_output, render_chat


def test_card_defaults():
    assert (CARD_SAMPLING.temperature, CARD_SAMPLING.top_p, CARD_SAMPLING.top_k) == (0.6, 0.95, 20)
    assert CARD_SAMPLING.repeat_penalty == 1.05


def test_render_from_gguf_template_with_tools(rt_trained_model):
    tpl = rt_trained_model.info.chat_template
    assert tpl and "im_start" in tpl
    tools = [{"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}]
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What time is it?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_time", "arguments": {"tz": "UTC"}}}],
        },
        {"role": "tool", "content": "12:00"},
    ]
    text = render_chat(tpl, msgs, tools=tools)
    assert text.startswith("<|im_start|>system\nBe brief.")
    assert '"name": "get_time"' in text and "<tool_response>\n12:00\n</tool_response>" in text
    assert "<function=get_time>\n<parameter=tz>\nUTC\n</parameter>" in text
    assert text.endswith("<|im_start|>assistant\n<think>\n")
    assert render_chat(tpl, msgs[:2], enable_thinking=False).endswith("<think>\n\n</think>\n\n")
    toks = rt_trained_model.tokenize(text)
    assert toks.count(rt_trained_model.token_id("<|im_start|>")) == 5


def test_bad_role_and_template_errors():
    with pytest.raises(QwythosError, match="role"):
        render_chat(None, [{"role": "robot", "content": "x"}])
    with pytest.raises(QwythosError, match="refused"):
        render_chat("{{ raise_exception('no system') }}", [{"role": "user", "content": "x"}])


def test_parse_reasoning_answer_and_both_tool_call_forms():
    out = parse_output("I should check.\n</think>\n\nSure.<|im_end|>junk", think_open=True)
    assert (out.reasoning, out.answer, out.tool_calls) == ("I should check.", "Sure.", [])
    text = (
        '<think>plan</think>\nCalling.\n<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>'
        "\n<tool_call>\n<function=search>\n<parameter=query>\ncats and dogs\n</parameter>\n"
        "<parameter=limit>\n5\n</parameter>\n</function>\n</tool_call>"
    )
    out = parse_output(text)
    assert out.reasoning == "plan" and out.answer == "Calling."
    assert [(c.name, c.arguments) for c in out.tool_calls] == [
        ("add", {"a": 1, "b": 2}),
        ("search", {"query": "cats and dogs", "limit": 5}),
    ]
    assert out.errors == []


def test_malformed_and_unfinished_are_reported_not_raised():
    out = parse_output('x</think>ok<tool_call>{not json}</tool_call><tool_call>{"name": "f"', think_open=True)
    assert out.answer == "ok" and out.tool_calls == [] and len(out.errors) == 3  # 2 malformed, 1 unclosed
    unfinished = parse_output("still thinking", think_open=True)
    assert (
        not unfinished.thinking_finished
        and unfinished.reasoning == "still thinking"
        and unfinished.answer == ""
    )
    skipped = parse_output('thought<tool_call>{"name": "f", "arguments": {}}</tool_call>', think_open=True)
    assert skipped.reasoning == "thought" and skipped.tool_calls[0].name == "f"
