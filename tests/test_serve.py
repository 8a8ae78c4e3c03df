"""`qwythos serve` live on 127.0.0.1 with the trained tiny model (F32), through the real `openai`
client: chat streamed and not (the deltas join to the whole reply), greedy output equal to
`qwythos run`'s, the reasoning split, tools and tool results, the session cache, an image,
16 concurrent requests, a disconnect that frees the slot, a full queue, the API key and CORS,
every bad request a 4xx with the server still serving, and SIGTERM draining.

The tiny model never closes its reasoning (`</think>`) and rarely ends a turn, so replies run to
max_tokens: that keeps long generations long (the disconnect and queue tests) and makes the
reasoning split sharp (thinking on: all reasoning; off: all answer).
"""

from __future__ import annotations

import base64
import json
import signal
import threading

import pytest
from typer.testing import CliRunner

from qwythos.cli import app
from qwythos.runtime.chat import TURN_END, parse_output, render_chat
from qwythos.runtime.draft_plan import draft_plan
from qwythos.runtime.sampling import SamplingParams
from qwythos.runtime.speculative import Engine
from qwythos.testing.images import picture, write_png
from qwythos.testing.server import running_server

openai = pytest.importorskip("openai")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

CTX = 2048
N = 24  # tokens per reply
KEY = "sk-test-key"
ALLOWED = "http://allowed.example"
LONG = {"prompt": "import os\n", "max_tokens": 1800, "temperature": 0}  # runs for seconds, no end of turn
GREEDY = {"temperature": 0, "max_tokens": N}


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def model(rt_trained_f32_model):
    """The served file, also loaded here for the library path `run` uses."""
    return rt_trained_f32_model


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    """The default server (no key, no projector, auto drafting), one thread."""
    with running_server(
        model.path, "-t", "1", "--ctx", str(CTX), log_dir=tmp_path_factory.mktemp("serve")
    ) as s:
        yield s
        assert s.stop() == 0, s.log.read_text()[-2000:]  # SIGTERM: drained, freed, exit 0


@pytest.fixture(scope="module")
def projector(trained_dir, tmp_path_factory):
    """An F16 mmproj of the trained model's width (a random tiny vision tower, as in test_vision_run)."""
    from qwythos.convert.mmproj import convert_mmproj
    from qwythos.testing import tiny

    root = tmp_path_factory.mktemp("serve-vision")
    cfg = json.loads((trained_dir / "config.json").read_text())
    src = tiny.build_checkpoint_from_config(root / "tower", cfg, include_mtp=False, with_tokenizer=False)
    return convert_mmproj(src, root / "mmproj-trained-F16.gguf").output


@pytest.fixture(scope="module")
def strict(model, projector, tmp_path_factory):
    """A server with a projector, an API key, CORS for one origin, an alias and a queue of one."""
    args = ["-t", "1", "--ctx", str(CTX), "--mmproj", str(projector), "--api-key", KEY]
    args += ["--cors", ALLOWED, "--alias", "tiny-chat", "--max-queue", "1", "--draft", "2"]
    with running_server(model.path, *args, log_dir=tmp_path_factory.mktemp("serve-strict")) as s:
        yield s
        assert s.stop() == 0, s.log.read_text()[-2000:]


def _chat(client, messages, **kw):
    return client.chat.completions.create(model="trained-F32", messages=messages, **{**GREEDY, **kw})


def _joined(stream) -> tuple[dict, str | None, object]:
    """The streamed deltas joined per field, the finish reason and the usage chunk's usage."""
    text = {"content": "", "reasoning_content": ""}
    finish = usage = None
    for ch in stream:
        if ch.usage is not None:
            usage = ch.usage
        for c in ch.choices:
            d = c.delta
            text["content"] += d.content or ""
            text["reasoning_content"] += (d.model_extra or {}).get("reasoning_content") or ""
            finish = c.finish_reason or finish
    return text, finish, usage


# ---------------------------------------------------------------- replies
def test_models_and_health(server):
    c = server.client()
    (m,) = c.models.list().data
    assert m.id == "trained-F32" and m.owned_by == "qwythos"
    assert m.model_extra["meta"]["n_ctx"] == CTX
    h = server.health()
    assert h["status"] == "ok" and h["slot"]["busy"] is False


@pytest.mark.parametrize("thinking", [True, False])
def test_streamed_deltas_join_to_the_reply(server, thinking):
    c = server.client()
    kw = {"extra_body": {"chat_template_kwargs": {"enable_thinking": thinking}}}
    whole = _chat(c, _user("def main():"), **kw)
    text, finish, usage = _joined(
        _chat(c, _user("def main():"), stream=True, stream_options={"include_usage": True}, **kw)
    )
    msg = whole.choices[0].message
    assert text["content"] == (msg.content or "")
    assert text["reasoning_content"] == ((msg.model_extra or {}).get("reasoning_content") or "")
    assert finish == whole.choices[0].finish_reason == "length"
    assert usage.completion_tokens == whole.usage.completion_tokens == N
    assert usage.prompt_tokens == whole.usage.prompt_tokens
    # the reasoning split: thinking on, the tiny model never closes </think>; off, no reasoning at all
    if thinking:
        assert text["reasoning_content"] and not text["content"]
    else:
        assert text["content"] and not text["reasoning_content"]


@pytest.mark.parametrize("thinking", [True, False])
def test_greedy_reply_equals_qwythos_run(server, model, thinking):
    msg = "class Point:"
    reply = _chat(
        server.client(), _user(msg), extra_body={"chat_template_kwargs": {"enable_thinking": thinking}}
    )
    args = ["run", str(model.path), "-p", msg, "--temp", "0", "--max-tokens", str(N), "--json", "-t", "1"]
    r = CliRunner().invoke(app, [*args, "--ctx", str(CTX), *([] if thinking else ["--no-think"])])
    assert r.exit_code == 0, r.output
    ran = json.loads(r.stdout)
    m = reply.choices[0].message
    assert (m.content or "") == ran["parsed"]["answer"]
    assert ((m.model_extra or {}).get("reasoning_content") or "") == ran["parsed"]["reasoning"]
    assert reply.usage.prompt_tokens == ran["generation"]["stats"]["prompt_tokens"]
    assert reply.usage.completion_tokens == len(ran["generation"]["tokens"]) == N
    draft = reply.usage.model_extra["draft"]
    assert draft["mode"] == "auto" and draft["drafted"] >= draft["accepted"] >= 0
    assert reply.model_extra["timings"]["predicted_n"] == N


def test_completions_streamed_and_not(server, model):
    c = server.client()
    whole = c.completions.create(model="trained-F32", prompt="def add(a, b):", **GREEDY)
    parts = [
        ch.choices[0].text
        for ch in c.completions.create(model="trained-F32", prompt="def add(a, b):", stream=True, **GREEDY)
        if ch.choices
    ]
    assert "".join(parts) == whole.choices[0].text and whole.choices[0].finish_reason == "length"
    with Engine(model, draft_plan(model, 0), n_ctx=CTX) as eng:
        lib = eng.generate(
            model.tokenize("def add(a, b):"), max_tokens=N, sampling=SamplingParams(temperature=0)
        )
    assert whole.choices[0].text == lib.text
    ids = c.completions.create(model="trained-F32", prompt=model.tokenize("def add(a, b):"), **GREEDY)
    assert ids.choices[0].text == lib.text


def test_a_continued_conversation_prefills_only_what_is_new(server, model):
    c = server.client()
    msgs = _user("import os")
    first = _chat(c, msgs)
    msgs += [
        {"role": "assistant", "content": first.choices[0].message.content or "", "reasoning_content": "r"},
        {"role": "user", "content": "import sys"},
    ]
    second = _chat(c, msgs)
    # reused: the first prompt up to its last turn start (the session's checkpoint)
    toks = model.tokenize(render_chat(model.info.chat_template, msgs[:1]))
    mark = model.tokenize("<|im_start|>")
    at = max(i for i in range(len(toks)) if toks[i : i + len(mark)] == mark)
    assert first.usage.prompt_tokens == len(toks)
    assert second.usage.prompt_tokens_details.cached_tokens == at > 0
    # the reply equals a fresh run of the whole rendered conversation
    toks = model.tokenize(render_chat(model.info.chat_template, msgs))
    with Engine(model, draft_plan(model, 0), n_ctx=CTX) as eng:
        fresh = eng.generate(toks, max_tokens=N, sampling=SamplingParams(temperature=0), stop=list(TURN_END))
    want = parse_output(fresh.text, think_open=True)
    assert second.choices[0].message.model_extra["reasoning_content"] == want.reasoning


# ---------------------------------------------------------------- tools
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def test_a_named_tool_choice_is_answered_as_a_tool_call(server):
    c = server.client()
    kw = {
        "tools": [WEATHER],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "extra_body": {"chat_template_kwargs": {"enable_thinking": False}},
    }
    r = _chat(c, _user("Weather in Paris?"), **kw)
    (call,) = r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather" and call.id.startswith("call_")
    assert isinstance(json.loads(call.function.arguments), dict)
    streamed = list(_chat(c, _user("Weather in Paris?"), stream=True, **kw))
    calls = [tc for ch in streamed for ch_c in ch.choices for tc in (ch_c.delta.tool_calls or [])]
    assert [tc.function.name for tc in calls] == ["get_weather"]
    assert streamed[-1].choices[0].finish_reason == "tool_calls"
    assert not "".join(ch_c.delta.content or "" for ch in streamed for ch_c in ch.choices)


def test_tools_and_tool_results_reach_the_template(server, model):
    """prompt_tokens equals the template's rendering: tools offered (auto), not offered (none), and a
    history with a call (arguments as JSON text) and its result."""
    c = server.client()
    tpl = model.info.chat_template
    msgs = _user("Weather in Paris?")
    auto = _chat(c, msgs, tools=[WEATHER], max_tokens=1)
    assert auto.usage.prompt_tokens == len(model.tokenize(render_chat(tpl, msgs, tools=[WEATHER])))
    none = _chat(c, msgs, tools=[WEATHER], tool_choice="none", max_tokens=1)
    assert none.usage.prompt_tokens == len(model.tokenize(render_chat(tpl, msgs)))
    history = [
        *msgs,
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
    ]
    r = _chat(c, history, tools=[WEATHER], max_tokens=1)
    as_template = [
        *history[:1],
        {
            **history[1],
            "tool_calls": [
                {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
            ],
        },
        history[2],
    ]
    rendered = render_chat(tpl, as_template, tools=[WEATHER])
    assert (
        "<tool_response>\nsunny, 21 C\n</tool_response>" in rendered and "<parameter=city>\nParis" in rendered
    )
    assert r.usage.prompt_tokens == len(model.tokenize(rendered))


# ---------------------------------------------------------------- images
def test_an_image_as_a_data_url(strict, model, projector, tmp_path):
    from qwythos.runtime.vision import IMAGE_PLACEHOLDER, Vision

    png = write_png(tmp_path / "p.png", picture(128, 96, seed=5))
    url = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "Describe it."}]
    c = strict.client(api_key=KEY)
    r = c.chat.completions.create(
        model="tiny-chat", messages=[{"role": "user", "content": content}], **GREEDY
    )
    with Vision(model, projector, threads=1) as vis:
        text = render_chat(model.info.chat_template, _user(IMAGE_PLACEHOLDER + "Describe it."))
        layout = vis.tokenize(text.replace(IMAGE_PLACEHOLDER, vis.marker), [png])
        try:
            with Engine(model, draft_plan(model, 0), n_ctx=CTX, vision=vis) as eng:
                lib = eng.generate(
                    layout, max_tokens=N, sampling=SamplingParams(temperature=0), stop=list(TURN_END)
                )
        finally:
            vis.free_layout(layout)
    assert (
        r.usage.prompt_tokens
        == layout.n_tokens
        > len(model.tokenize(render_chat(model.info.chat_template, _user("Describe it."))))
    )
    assert (
        r.choices[0].message.model_extra["reasoning_content"]
        == parse_output(lib.text, think_open=True).reasoning
    )
    # a remote URL is refused with a message that says how to send it; so is a corrupt picture
    remote = [{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]
    with pytest.raises(openai.BadRequestError, match="data URL"):
        c.chat.completions.create(model="tiny-chat", messages=[{"role": "user", "content": remote}])
    broken = [
        {
            "type": "image_url",
            "image_url": {"url": "data:image/png;base64," + base64.b64encode(b"not a png").decode()},
        }
    ]
    with pytest.raises(openai.BadRequestError, match="could not be decoded"):
        c.chat.completions.create(model="tiny-chat", messages=[{"role": "user", "content": broken}])


def test_an_image_without_a_projector_is_a_400(server):
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n").decode()
    content = [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}}]
    with pytest.raises(openai.BadRequestError, match="no vision projector"):
        server.client().chat.completions.create(
            model="trained-F32", messages=[{"role": "user", "content": content}]
        )


# ---------------------------------------------------------------- one at a time, in order
def test_16_concurrent_requests_each_get_their_own_reply(server):
    c = server.client()
    prompts = [f"x{i} = {i}\ny{i} = " for i in range(16)]
    kw = {"temperature": 0, "max_tokens": 12}
    alone = [c.completions.create(model="trained-F32", prompt=p, **kw).choices[0].text for p in prompts]
    assert len(set(alone)) > 8  # the prompts lead to different replies
    got: dict[int, str] = {}

    def ask(i: int) -> None:
        got[i] = (
            server.client().completions.create(model="trained-F32", prompt=prompts[i], **kw).choices[0].text
        )

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert [got.get(i) for i in range(16)] == alone
    assert server.wait_idle()["slot"]["busy"] is False


def test_a_disconnect_mid_stream_frees_the_slot(server):
    before = server.wait_idle()["slot"]
    sock = server.open_stream("/v1/completions", LONG, events=3)
    assert server.health()["slot"]["busy"] is True
    sock.close()
    after = server.wait_idle(timeout=30)["slot"]
    assert after["busy"] is False and after["cancelled"] == before["cancelled"] + 1
    assert after["done"] == before["done"]  # stopped, not finished
    r = server.client().completions.create(model="trained-F32", prompt="x = 1", max_tokens=4)
    assert r.choices[0].finish_reason == "length"


def test_a_client_that_leaves_the_queue_is_dropped_from_it(server):
    before = server.wait_idle()["slot"]
    running = server.open_stream("/v1/completions", LONG)
    waiting = server.post_raw("/v1/chat/completions", {"messages": _user("x"), "max_tokens": 4})
    assert server.wait_for(lambda s: s["queued"] == 1)["slot"]["queued"] == 1
    waiting.close()
    slot = server.wait_for(lambda s: s["queued"] == 0)["slot"]
    assert slot["busy"] is True and slot["cancelled"] == before["cancelled"] + 1  # gone while the other runs
    running.close()
    after = server.wait_idle()["slot"]
    assert after["cancelled"] == before["cancelled"] + 2 and after["done"] == before["done"]


def test_a_full_queue_is_a_503_with_retry_after(strict):
    c = strict.client(api_key=KEY)
    auth = {"Authorization": f"Bearer {KEY}"}
    running = strict.open_stream("/v1/completions", LONG, auth)
    waited: dict = {}
    t = threading.Thread(
        target=lambda: waited.update(r=c.completions.create(model="tiny-chat", prompt="x = 1", max_tokens=4))
    )
    t.start()
    strict.wait_for(lambda s: s["queued"] == 1)
    status, headers, body = strict.request("POST", "/v1/completions", {"prompt": "y", "max_tokens": 2}, auth)
    assert status == 503 and int(headers["retry-after"]) > 0 and body["error"]["code"] == "queue_full"
    running.close()  # the running one goes; the waiting one runs
    t.join(120)
    assert waited["r"].choices[0].finish_reason == "length"


# ---------------------------------------------------------------- safety
def test_api_key_and_cors(strict, server):
    status, _, body = strict.request("GET", "/v1/models")
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        strict.client(api_key="wrong").models.list()
    assert strict.client(api_key=KEY).models.list().data[0].id == "tiny-chat"
    assert strict.request("GET", "/health")[0] == 200  # probes need no key
    pre = {
        "Origin": ALLOWED,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization",
    }
    status, headers, _ = strict.request("OPTIONS", "/v1/chat/completions", headers=pre)
    assert status == 200 and headers["access-control-allow-origin"] == ALLOWED
    _, headers, _ = strict.request(
        "GET", "/v1/models", headers={"Origin": "http://other.example", "Authorization": f"Bearer {KEY}"}
    )
    assert "access-control-allow-origin" not in headers
    _, headers, _ = server.request("GET", "/v1/models", headers={"Origin": ALLOWED})
    assert "access-control-allow-origin" not in headers  # CORS is off by default


BAD = [
    ("POST", "/v1/chat/completions", b'{"messages": [', 400, "invalid_json"),
    ("POST", "/v1/chat/completions", b"\xff\xfe", 400, "invalid_json"),
    ("POST", "/v1/chat/completions", b"[" * 100000 + b"]" * 100000, 400, "invalid_json"),
    ("POST", "/v1/chat/completions", {"messages": "hi"}, 400, "invalid_type"),
    ("POST", "/v1/chat/completions", {"messages": _user("x"), "temperature": "hot"}, 400, "invalid_type"),
    ("POST", "/v1/chat/completions", {"messages": _user("x"), "max_tokens": -5}, 400, "invalid_value"),
    ("POST", "/v1/chat/completions", {"messages": _user("x"), "n": 3}, 400, "unsupported"),
    (
        "POST",
        "/v1/chat/completions",
        {"messages": _user("x"), "tools": [{"function": {"name": "<x>"}}]},
        400,
        "invalid_value",
    ),
    ("POST", "/v1/chat/completions", {"messages": _user("x"), "model": "gpt-4o"}, 404, "model_not_found"),
    ("POST", "/v1/chat/completions", {"messages": _user("x " * 3000)}, 400, "context_length_exceeded"),
    ("POST", "/v1/completions", {"prompt": "x " * 3000}, 400, "context_length_exceeded"),
    ("POST", "/v1/completions", {"prompt": [10**9]}, 400, "invalid_value"),
    ("GET", "/v1/chat/completions", None, 405, None),
    ("GET", "/v1/nothing", None, 404, None),
]


@pytest.mark.parametrize("method, path, body, status, code", BAD)
def test_every_bad_request_is_a_json_4xx_and_the_server_goes_on(server, method, path, body, status, code):
    got, headers, err = server.request(method, path, body)
    assert got == status, err
    assert headers["content-type"].startswith("application/json")
    assert err["error"]["message"] and err["error"]["type"] and err["error"]["code"] == code
    assert "Traceback" not in json.dumps(err)
    r = server.client().completions.create(model="trained-F32", prompt="x = 1", max_tokens=2)
    assert r.usage.completion_tokens == 2


def test_an_oversized_body_is_a_413_before_it_is_read(server):
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.putrequest("POST", "/v1/chat/completions")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(10**12))
    conn.endheaders()
    r = conn.getresponse()
    assert r.status == 413 and json.loads(r.read())["error"]["code"] == "body_too_large"
    conn.close()
    assert server.client().models.list().data


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_drains_and_exits(model, tmp_path, sig):
    """SIGTERM or Ctrl-C: a running stream ends with a shutting-down error event, a waiting request
    gets 503, the process exits 0."""
    with running_server(model.path, "-t", "1", "--ctx", str(CTX), log_dir=tmp_path) as s:
        running = s.open_stream("/v1/completions", LONG)
        waited: dict = {}

        def wait() -> None:
            waited["r"] = s.request("POST", "/v1/completions", {"prompt": "x", "max_tokens": 4})

        t = threading.Thread(target=wait)
        t.start()
        s.wait_for(lambda slot: slot["queued"] == 1)
        s.proc.send_signal(sig)
        rest = s.read_rest(running)
        t.join(60)
        assert s.proc.wait(60) == 0, s.log.read_text()[-2000:]
    assert b"shutting down" in rest and rest.index(b"shutting down") < rest.index(b"data: [DONE]")
    assert waited["r"][0] == 503 and waited["r"][2]["error"]["code"] == "shutting_down"
