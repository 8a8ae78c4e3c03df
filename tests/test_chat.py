"""Chat template rendering from GGUF metadata, and output parsing."""

from __future__ import annotations

import json

import pytest

from qwythos.core.errors import QwythosError
from qwythos.runtime.chat import (
    ThinkStream,
    assistant_message,
    parse_output,
    render_chat,
)
from qwythos.runtime.sampling import CARD_SAMPLING


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
    tools = [
        {
            "type": "function",
            "function": {
                "name": "search",
                "parameters": {
                    "type": "object",
                    "properties": {"query": {"type": "string"}, "limit": {"type": "integer"}},
                },
            },
        },
        {"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}},
    ]
    out = parse_output(text, tools=tools)
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


# ------------------------------------------------------------------ tool calls typed by the offered schema

WEATHER = [
    {
        "type": "function",
        "function": {
            "name": "weather",
            "parameters": {
                "type": "object",
                "properties": {
                    "zip": {"type": "string"},
                    "note": {"type": "string"},
                    "flags": {"type": "string"},
                    "tags": {"type": "string"},
                    "days": {"type": "integer"},
                    "scale": {"type": "number"},
                    "metric": {"type": "boolean"},
                    "where": {"type": "object"},
                    "hours": {"type": "array"},
                    "unit": {"type": ["string", "null"]},
                    "limit": {"type": ["integer", "null"]},
                    "mode": {"enum": ["fast", "slow"]},
                },
            },
        },
    }
]


def xml_call(name: str, **params: str) -> str:
    body = "".join(f"<parameter={k}>\n{v}\n</parameter>\n" for k, v in params.items())
    return f"<tool_call>\n<function={name}>\n{body}</function>\n</tool_call>"


def test_string_parameters_stay_the_text_the_model_wrote():
    text = xml_call("weather", zip="12345", note="null", flags="true", tags="[1]", unit="null", mode="7")
    out = parse_output(text, tools=WEATHER)
    assert out.errors == []
    assert out.tool_calls[0].arguments == {
        "zip": "12345",
        "note": "null",
        "flags": "true",
        "tags": "[1]",
        "unit": None,  # ["string", "null"]: the JSON null is allowed, and that is what null means
        "mode": "7",  # an enum of strings is a string
    }
    # without any schema nothing is guessed: text stays text
    assert parse_output(xml_call("weather", zip="12345", days="3")).tool_calls[0].arguments == {
        "zip": "12345",
        "days": "3",
    }


def test_typed_parameters_are_parsed_and_checked():
    text = xml_call(
        "weather",
        days="3",
        scale="1.5",
        metric="false",
        where='{"city": "Oslo"}',
        hours="[1, 2]",
        limit="null",
    )
    out = parse_output(text, tools=WEATHER)
    assert out.errors == []
    assert out.tool_calls[0].arguments == {
        "days": 3,
        "scale": 1.5,
        "metric": False,
        "where": {"city": "Oslo"},
        "hours": [1, 2],
        "limit": None,
    }
    bad = parse_output(xml_call("weather", days="three", metric="yes", where="[1]"), tools=WEATHER)
    assert bad.tool_calls[0].arguments == {"days": "three", "metric": "yes", "where": "[1]"}
    assert len(bad.errors) == 3 and all("kept as text" in e for e in bad.errors)
    assert "'days' = 'three' is not integer" in bad.errors[0]


def test_multiline_string_parameter_keeps_its_inner_text():
    code = "def f():\n    return 1\n"
    out = parse_output(xml_call("weather", note=code), tools=WEATHER)
    assert out.tool_calls[0].arguments["note"] == code


def test_unknown_function_and_parameter_are_reported():
    out = parse_output(xml_call("rm_rf", path="/") + xml_call("weather", zipcode="1"), tools=WEATHER)
    assert [c.name for c in out.tool_calls] == ["rm_rf", "weather"]
    assert any("'rm_rf', which is not among the offered tools" in e for e in out.errors)
    assert any("'zipcode' is not in the schema of weather" in e for e in out.errors)


def test_a_second_function_in_one_tool_call_is_reported_not_dropped():
    text = (
        "<tool_call>\n<function=weather>\n<parameter=zip>\n1\n</parameter>\n</function>\n"
        "<function=weather>\n<parameter=zip>\n2\n</parameter>\n</function>\n</tool_call>"
    )
    out = parse_output(text, tools=WEATHER)
    assert [c.arguments for c in out.tool_calls] == [{"zip": "1"}, {"zip": "2"}]
    assert len(out.errors) == 1 and "holds 2 <function=...> blocks" in out.errors[0]


def test_unclosed_parameter_is_reported():
    out = parse_output(
        "<tool_call>\n<function=weather>\n<parameter=zip>\n1\n</function>\n</tool_call>", tools=WEATHER
    )
    assert out.tool_calls[0].arguments == {} and "not closed with </parameter>" in out.errors[0]


def test_json_call_whose_arguments_mention_a_function_tag_stays_json():
    body = {"name": "weather", "arguments": {"note": "write <function=x> in the docs", "zip": "9"}}
    out = parse_output(f"<tool_call>\n{json.dumps(body)}\n</tool_call>", tools=WEATHER)
    assert out.errors == []
    assert [(c.name, c.arguments) for c in out.tool_calls] == [("weather", body["arguments"])]


def test_assistant_turn_keeps_tool_calls_and_renders_them_back(rt_trained_model):
    out = parse_output(
        "check\n</think>\n\n" + xml_call("weather", zip="12345", days="2"), think_open=True, tools=WEATHER
    )
    msg = assistant_message(out)
    assert msg["tool_calls"] == [
        {"type": "function", "function": {"name": "weather", "arguments": {"zip": "12345", "days": 2}}}
    ]
    msgs = [{"role": "user", "content": "Weather at 12345?"}, msg, {"role": "tool", "content": "sunny"}]
    prompt = render_chat(rt_trained_model.info.chat_template, msgs, tools=WEATHER)
    assert "<function=weather>\n<parameter=zip>\n12345\n</parameter>" in prompt
    assert "<parameter=days>\n2\n</parameter>" in prompt
    assert "<tool_response>\nsunny\n</tool_response>" in prompt
    assert "tool_calls" not in assistant_message(parse_output("hi"))


# ------------------------------------------------------------------ the streaming thinking splitter


def stream(text: str, cuts: list[int], thinking: bool = True) -> tuple[str, str, ThinkStream]:
    s = ThinkStream(thinking)
    parts: list[tuple[str, str]] = []
    prev = 0
    for c in [*cuts, len(text)]:
        parts += s.feed(text[prev:c])
        prev = c
    parts += s.flush()
    reasoning = "".join(t for k, t in parts if k == "reasoning")
    answer = "".join(t for k, t in parts if k == "answer")
    return reasoning, answer, s


REPLY = "Let me think about this carefully.\n</think>\n\n\nThe answer is 42."


@pytest.mark.parametrize("step", [1, 2, 3, 7, 100])
def test_stream_splits_like_the_finished_parse_for_any_piece_size(step: int):
    r, a, s = stream(REPLY, list(range(step, len(REPLY), step)))
    assert r == "Let me think about this carefully.\n" and a == "The answer is 42."
    assert s.thinking_finished


@pytest.mark.parametrize("step", [1, 5, 16, 1000])
def test_reasoning_cut_off_inside_think_is_shown_to_the_last_character(step: int):
    text = "an unfinished thought that ends mid-sentence, cut by max tokens</thi"
    r, a, s = stream(text, list(range(step, len(text), step)))
    assert r == text and a == "" and not s.thinking_finished


def test_held_back_is_only_what_could_start_the_closing_tag():
    s = ThinkStream(True)
    assert s.feed("abcdefghijklmnopqrstuvwxyz") == [("reasoning", "abcdefghijklmnopqrstuvwxyz")]
    assert s.feed("x</th") == [("reasoning", "x")]
    assert s.feed("ink>") == []
    assert s.feed("\n") == [] and s.feed("\n") == []  # blank lines after </think> never shown
    assert s.feed("Hi") == [("answer", "Hi")]
    assert s.feed("\n\nthere") == [("answer", "\n\nthere")]  # inside the answer they are kept
    assert s.flush() == []


def test_reply_that_opens_its_own_think_block():
    r, a, _ = stream("\n<think>\nhmm\n</think>\nDone.", [2, 4, 9], thinking=False)
    assert (r, a) == ("hmm\n", "Done.")
    r, a, _ = stream("<thank you>", [2], thinking=False)
    assert (r, a) == ("", "<thank you>")
    r, a, _ = stream("<thi", [2], thinking=False)  # ended while it could still be <think>
    assert (r, a) == ("", "<thi")


def test_chat_shows_every_character_of_the_reply(rt_trained_gguf):
    """`chat` prints the whole reply, reasoning included, however it ends (here: max tokens,
    possibly inside <think>); `run --json` gives the same greedy text to compare with."""
    from typer.testing import CliRunner

    from qwythos.cli import app

    runner = CliRunner()
    flags = ["--max-tokens", "40", "--temp", "0", "--no-mtp"]
    ran = runner.invoke(app, ["run", str(rt_trained_gguf), "-p", "hello there", *flags, "--json"])
    assert ran.exit_code == 0, ran.output
    parsed = json.loads(ran.stdout)["parsed"]
    chat = runner.invoke(app, ["chat", str(rt_trained_gguf), *flags], input="hello there\n/exit\n")
    assert chat.exit_code == 0, chat.output
    shown = "".join(chat.stdout.split())  # the console wraps long lines; compare without whitespace
    reply = "".join((parsed["reasoning"] + parsed["answer"]).split())
    assert reply and reply in shown
