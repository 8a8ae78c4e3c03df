"""The server's pieces that need no model: request checks, data-URL images, the streamed split of a
reply against its final parse, tool calls in OpenAI's shape, and the refusals made before anything
loads (exposure without a key, a busy port, the missing extra)."""

from __future__ import annotations

import base64
import contextlib
import json
import random
import socket

import pytest
from typer.testing import CliRunner

from qwythos.cli import app
from qwythos.core.errors import QwythosError
from qwythos.core.model.chat_template import IMAGE_PART
from qwythos.runtime.chat import parse_output
from qwythos.runtime.server import launch, shapes
from qwythos.runtime.server.errors import APIError
from qwythos.runtime.server.images import decode_image_url
from qwythos.runtime.server.runner import Reply
from qwythos.runtime.server.schema import parse_chat, parse_completion
from qwythos.runtime.server.stream_split import StreamSplit
from qwythos.runtime.vision import IMAGE_PLACEHOLDER

NAMES = ("tiny", "tiny.gguf")
USER = [{"role": "user", "content": "hi"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        },
    },
}


def _chat(**body):
    return parse_chat({"messages": USER, **body}, NAMES, IMAGE_PLACEHOLDER)


# ---------------------------------------------------------------- requests
def test_sampling_fields_given_override_only_themselves():
    r = _chat(temperature=0, top_k=5, seed=7, max_tokens=9, stop="END", stream=True)
    assert r.options.sampling == {"temperature": 0.0, "top_k": 5, "seed": 7}
    assert (r.options.max_tokens, r.options.stop, r.options.stream) == (9, ["END"], True)
    assert _chat().options.sampling == {}  # the card's defaults apply
    assert _chat(max_completion_tokens=3, max_tokens=50).options.max_tokens == 3
    assert _chat(seed=-1).options.sampling == {}  # llama-server's "random"
    assert _chat(chat_template_kwargs={"enable_thinking": False}).enable_thinking is False


@pytest.mark.parametrize(
    "body, param",
    [
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": True}, "temperature"),
        ({"temperature": -1}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": 2.5}, "top_k"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": "10"}, "max_tokens"),
        ({"stream": "yes"}, "stream"),
        ({"stream_options": {"include_usage": 1}}, "stream_options.include_usage"),
        ({"stop": ["a"] * 17}, "stop"),
        ({"stop": 5}, "stop"),
        ({"n": 2}, "n"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"frequency_penalty": 3}, "frequency_penalty"),
        ({"logprobs": True}, "logprobs"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"seed": 2**70}, "seed"),
        ({"messages": []}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": [{"type": "audio"}]}]}, "messages[0].content[0].type"),
        ({"tools": {"a": 1}}, "tools"),
        ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools[0].function.name"),
        ({"tool_choice": "always"}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}}, "tool_choice"),
        ({"chat_template_kwargs": {"enable_thinking": "no"}}, "chat_template_kwargs.enable_thinking"),
    ],
)
def test_a_known_field_of_the_wrong_type_or_range_is_a_400_naming_it(body, param):
    with pytest.raises(APIError) as e:
        parse_chat({"messages": USER, **body}, NAMES, IMAGE_PLACEHOLDER)
    assert e.value.status == 400 and e.value.param == param, e.value.body()


def test_unknown_fields_are_ignored_and_the_model_must_be_served():
    assert _chat(user="me", parallel_tool_calls=False, some_future_field={"x": 1}).model is None
    assert _chat(model="tiny.gguf").model == "tiny.gguf"
    with pytest.raises(APIError) as e:
        _chat(model="gpt-4o")
    assert e.value.status == 404 and e.value.code == "model_not_found"
    with pytest.raises(APIError):
        parse_chat(["not", "an", "object"], NAMES, None)


def test_messages_take_the_templates_shape():
    msgs = [
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {
            "role": "assistant",
            "content": None,
            "reasoning_content": "thought",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
    ]
    r = parse_chat({"messages": msgs}, NAMES, None)
    assert r.messages == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "ab"},
        {
            "role": "assistant",
            "content": "",
            "reasoning_content": "thought",
            "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {"x": 1}}}],
        },
        {"role": "tool", "content": "42"},
    ]
    bad = [*msgs[:2], {**msgs[2], "tool_calls": [{"function": {"name": "f", "arguments": "{oops"}}]}]
    with pytest.raises(APIError) as e:
        parse_chat({"messages": bad}, NAMES, None)
    assert e.value.param == "messages[2].tool_calls[0].function.arguments"


def test_images_are_data_urls_in_user_messages():
    png = b"\x89PNG\r\n\x1a\nrest"
    url = "data:image/png;base64," + base64.b64encode(png).decode()
    content = [{"type": "text", "text": "see "}, {"type": "image_url", "image_url": {"url": url}}]
    r = parse_chat({"messages": [{"role": "user", "content": content}]}, NAMES, IMAGE_PLACEHOLDER)
    # the picture's place is a part the template fills in (never text a client could write)
    assert r.messages[0]["content"] == [{"type": "text", "text": "see "}, IMAGE_PART] and r.images == [png]
    # no projector loaded: refused with a message that says so
    with pytest.raises(APIError) as e:
        parse_chat({"messages": [{"role": "user", "content": content}]}, NAMES, None)
    assert "no vision projector" in e.value.message
    # only user messages hold pictures
    with pytest.raises(APIError):
        parse_chat({"messages": [{"role": "system", "content": content}]}, NAMES, IMAGE_PLACEHOLDER)


@pytest.mark.parametrize(
    "url, code",
    [
        ("https://example.com/cat.png", "remote_image_url"),
        ("HTTP://example.com/cat.png", "remote_image_url"),
        ("file:///etc/passwd", "remote_image_url"),
        ("data:image/png,notbase64", "invalid_value"),
        ("data:image/png;base64,@@@@", "invalid_value"),
        ("data:text/plain;base64,aGk=", "invalid_value"),
        ("data:image/png;base64,", "invalid_value"),
        ("/tmp/cat.png", "invalid_value"),
    ],
)
def test_image_urls_other_than_base64_data_are_refused(url, code):
    with pytest.raises(APIError) as e:
        decode_image_url(url, "u")
    assert e.value.status == 400 and e.value.code == code
    if code == "remote_image_url":
        assert "data URL" in e.value.message  # says how to send it instead


def test_completion_prompts():
    assert parse_completion({"prompt": "x"}, NAMES, 100).prompt == "x"
    assert parse_completion({"prompt": ["x"]}, NAMES, 100).prompt == "x"
    assert parse_completion({"prompt": [1, 2, 3]}, NAMES, 100).prompt == [1, 2, 3]
    for bad in ("", ["a", "b"], [1, 500], None, 5):
        with pytest.raises(APIError):
            parse_completion({"prompt": bad}, NAMES, 100)
    for opt in ({"echo": True}, {"best_of": 2}, {"logprobs": 1}, {"suffix": "x"}):
        with pytest.raises(APIError):
            parse_completion({"prompt": "x", **opt}, NAMES, 100)


# ---------------------------------------------------------------- the streamed split
REPLIES = [
    ("reasoning here\n\n</think>\n\nThe answer.\n", True),
    ("  \n", True),
    ("only thinking, cut off", True),
    ("\n\nplain answer with trailing space  \n\n", False),
    ("<think>\nself-opened\n</think>\nanswer", False),
    (
        "why\n</think>\n\nLet me call.\n\n<tool_call>\n<function=f>\n<parameter=x>\n1\n</parameter>\n</function>\n</tool_call>",
        True,
    ),
    ("why</think><tool_call>\n<function=f>\n</function>\n</tool_call>", True),
    ("answer mentions <tool_ but not a call", False),
    ("multi\n\nparagraph\n\n  answer\twith\ttabs", False),
]


@pytest.mark.parametrize("text, think_open", REPLIES)
def test_streamed_deltas_join_to_the_final_parse(text, think_open):
    """However the reply is cut into pieces, the deltas join to parse_output's reasoning and answer."""
    final = parse_output(text, think_open=think_open)
    rng = random.Random(len(text))
    for _ in range(20):
        split, got = StreamSplit(think_open), {"reasoning_content": "", "content": ""}
        i = 0
        while i < len(text):
            n = rng.randint(1, 6)
            for d in split.feed(text[i : i + n]):
                for k, v in d.items():
                    got[k] += v
            i += n
        for d in split.flush():
            for k, v in d.items():
                got[k] += v
        assert got == {"reasoning_content": final.reasoning, "content": final.answer}, text


# ---------------------------------------------------------------- tool calls in OpenAI's shape
def test_tool_calls_are_json_arguments_typed_by_the_schema():
    text = (
        "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
        "<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>"
    )
    parsed = parse_output(text, tools=[WEATHER])
    reply = Reply(text, parsed, "tool_calls", 10, 5, 0)
    msg = shapes.chat_message(reply)
    assert msg["content"] is None and msg["role"] == "assistant"
    (call,) = msg["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris", "days": 3}
    chunks = shapes.chat_final_chunks(reply, "id", 0, "m", include_usage=True)
    assert chunks[0]["choices"][0]["delta"]["tool_calls"][0]["index"] == 0
    assert chunks[1]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[2]["choices"] == [] and chunks[2]["usage"]["total_tokens"] == 15
    # tool_choice none: never reported as calls
    assert "tool_calls" not in shapes.chat_message(Reply(text, parsed, "stop", 1, 1, 0, tool_choice="none"))


# ---------------------------------------------------------------- before anything loads
def test_exposure_needs_a_key():
    assert launch.check_exposure("127.0.0.1", None) is None
    assert launch.check_exposure("localhost", None) is None
    assert launch.check_exposure("::1", None) is None
    with pytest.raises(QwythosError, match="--api-key"):
        launch.check_exposure("0.0.0.0", None)
    assert "network" in launch.check_exposure("0.0.0.0", "k")


def test_serve_refuses_before_loading(tmp_path, monkeypatch):
    """No model is read for these: a public address without a key, a busy port, the missing extra."""
    runner = CliRunner()
    missing = tmp_path / "nothing.gguf"  # never opened: the refusals come first
    r = runner.invoke(app, ["serve", str(missing), "--host", "0.0.0.0"])
    assert r.exit_code == 1 and "--api-key" in r.output
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        r = runner.invoke(app, ["serve", str(missing), "--port", str(busy.getsockname()[1])])
        assert r.exit_code == 1 and "cannot listen" in r.output, r.output
    real = launch.importlib.util.find_spec
    monkeypatch.setattr(
        launch.importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a)
    )
    r = runner.invoke(app, ["serve", str(missing)])
    assert r.exit_code == 1 and "pip install 'qwythos[serve]'" in r.output


# ---------------------------------------------------------------- the runner, on a scripted backend
class _ScriptedBackend:
    """Replies from a script; records what each generation was asked (a tiny model cannot be made
    to close its reasoning, so the forced tool call after thinking is checked here)."""

    def __init__(self, *replies: tuple[str, str]) -> None:
        self.replies = list(replies)
        self.calls: list[dict] = []

    def render(self, messages, tools, enable_thinking):
        from qwythos.core.model.chat_template import Prompt
        from qwythos.runtime.server.backend import Rendered

        return Rendered(
            Prompt("<|im_start|>assistant\n" + ("<think>\n" if enable_thinking else "")), enable_thinking
        )

    @contextlib.contextmanager
    def prepare(self, prompt, images=(), continuation=""):
        from qwythos.runtime.server.backend import Prepared

        self.calls.append({"continuation": continuation})
        yield Prepared([1, 2, 3], 3)

    def generate(self, prepared, *, sampling, max_tokens, stop, on_text=None, should_stop=lambda: False):
        from qwythos.runtime.server.backend import Outcome

        text, finish = self.replies.pop(0)
        self.calls[-1].update(max_tokens=max_tokens, stop=stop)
        for ch in text:
            if on_text is not None:
                on_text(ch)
        return Outcome(text, finish, 3, 1, len(text), 0.5, 1.0, {"drafted": 4, "accepted": 3})

    def count(self, text: str) -> int:
        return len(text)


class _Job:
    streaming = True

    def __init__(self) -> None:
        self.deltas: list[dict] = []

    def started(self) -> None:
        pass

    def delta(self, d: dict) -> None:
        self.deltas.append(d)

    def cancelled(self) -> bool:
        return False


def _named(thinking: bool, **body):
    return _chat(
        tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        chat_template_kwargs={"enable_thinking": thinking},
        **body,
    )


CALL_REST = "<parameter=city>\nParis\n</parameter>\n</function>\n</tool_call>"


def test_a_named_tool_after_thinking_is_forced_once_the_reasoning_ends():
    from qwythos.runtime.server.runner import run_chat

    be, job = _ScriptedBackend(("I should call it.", "stop"), (CALL_REST, "eos")), _Job()
    reply = run_chat(be, _named(True, max_tokens=100, stop=["STOP"]), job)
    first, second = be.calls
    assert first["continuation"] == "" and "</think>" in first["stop"] and "STOP" not in first["stop"]
    assert second["continuation"] == "I should call it.</think>\n\n<tool_call>\n<function=get_weather>\n"
    assert second["max_tokens"] == 100 - len("I should call it.") and "STOP" in second["stop"]
    assert reply.finish_reason == "tool_calls" and reply.parsed.reasoning == "I should call it."
    assert [(c.name, c.arguments) for c in reply.parsed.tool_calls] == [("get_weather", {"city": "Paris"})]
    joined = {"reasoning_content": "", "content": ""}
    for d in job.deltas:
        for k, v in d.items():
            joined[k] += v
    assert joined == {"reasoning_content": "I should call it.", "content": ""}
    forced = "</think>\n\n<tool_call>\n<function=get_weather>\n"
    assert reply.completion_tokens == len("I should call it.") + len(CALL_REST) + len(forced)
    assert reply.timings["draft_n"] == 8 and reply.draft["accepted"] == 6


def test_a_named_tool_without_thinking_starts_the_answer():
    from qwythos.runtime.server.runner import run_chat

    be = _ScriptedBackend((CALL_REST, "eos"))
    reply = run_chat(be, _named(False), _Job())
    assert [c["continuation"] for c in be.calls] == ["<tool_call>\n<function=get_weather>\n"]
    assert reply.finish_reason == "tool_calls" and reply.parsed.tool_calls[0].name == "get_weather"


def test_reasoning_cut_by_max_tokens_forces_nothing_and_a_stopped_job_is_cancelled():
    from qwythos.runtime.server.runner import Cancelled, run_chat

    be = _ScriptedBackend(("thinking and thinking", "length"))
    reply = run_chat(be, _named(True), _Job())
    assert len(be.calls) == 1 and reply.finish_reason == "length" and not reply.parsed.tool_calls
    with pytest.raises(Cancelled):
        run_chat(_ScriptedBackend(("cut", "interrupted")), _chat(), _Job())
