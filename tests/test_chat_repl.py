"""chat's commands (runtime/repl.py) line by line, /save-/load round trips, and `qwythos chat` driven
end to end on the trained tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qwythos.commands.engine_flags import sampling_from_flags
from qwythos.core.errors import QwythosError
from qwythos.core.model.chat_template import IMAGE_PART
from qwythos.runtime import repl as R
from qwythos.runtime.sampling import CARD_SAMPLING

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 40  # the bytes stay bytes; the stand-in check never decodes them


def make(**kw) -> R.Repl:
    return R.Repl(check_sampling=sampling_from_flags, **kw)


def with_pictures(tmp_path: Path) -> R.Repl:
    """A Repl whose projector check accepts any existing file (the real one is runtime/vision's)."""

    def check(arg: str) -> Path:
        p = Path(arg)
        if not p.is_file():
            raise QwythosError(f"image {arg} not found", "pass a PNG or JPEG picture")
        return p

    return make(check_image=check)


# ------------------------------------------------------------------ lines and commands


@pytest.mark.parametrize("line", ["/help", "/?", "  /HELP  "])
def test_help_lists_every_command(line: str):
    step = make().feed(line)
    assert step.kind == R.SHOW
    for cmd in ("/clear", "/think", "/set", "/image", "/save", "/load", '"""', "/bye"):
        assert cmd in step.text


def test_unknown_command_is_hinted_not_sent():
    r = make()
    step = r.feed("/foo bar")
    assert step == R.Step(R.ERROR, "unknown command /foo; /help lists them")
    assert r.messages == []
    # a path is not a command: it goes to the model
    assert r.feed("/usr/bin/env is what?") == R.Step(R.SEND, "/usr/bin/env is what?")
    assert r.feed("hello") == R.Step(R.SEND, "hello") and r.feed("   ").kind == R.NOTHING


@pytest.mark.parametrize("line", ["/bye", "/exit", "/quit", " /bye "])
def test_leaving(line: str):
    assert make().feed(line).kind == R.QUIT


def test_multiline_input_like_ollama():
    r = make()
    assert r.feed('"""first line').kind == R.MORE and r.prompt == R.PROMPT_MORE
    assert r.feed("/help is text in here").kind == R.MORE
    assert r.feed("").kind == R.MORE
    assert r.feed('last"""') == R.Step(R.SEND, "first line\n/help is text in here\n\nlast")
    assert r.prompt == R.PROMPT
    assert r.feed('"""').kind == R.MORE and r.feed("  indented").kind == R.MORE
    assert r.feed('"""') == R.Step(R.SEND, "  indented")
    assert r.feed('"""one line"""') == R.Step(R.SEND, "one line")
    assert r.feed('"""').kind == R.MORE and r.cancel_input() and r.prompt == R.PROMPT
    assert not r.cancel_input()
    assert r.feed('"""').kind == R.MORE and r.feed('"""').kind == R.NOTHING


def test_set_checks_values_like_the_flags():
    r = make()
    shown = r.feed("/set").text
    assert (
        f"temperature {CARD_SAMPLING.temperature}" in shown and "seed random" in shown and "think on" in shown
    )
    assert r.feed("/set temperature 0").kind == R.SHOW and r.sampling.temperature == 0.0
    assert r.feed("/set parameter top_k 5").kind == R.SHOW and r.sampling.top_k == 5
    assert r.feed("/set seed 7").kind == R.SHOW and r.sampling.seed == 7
    assert r.feed("/set seed random").kind == R.SHOW and r.sampling.seed is None
    for line, words in (
        ("/set temperature -1", "/set temperature -1 is out of range"),
        ("/set top_p 0", "/set top_p 0 is out of range"),
        ("/set min_p 2", "out of range"),
        ("/set repeat_penalty 0", "out of range"),
        ("/set top_k 1.5", "not an integer"),
        ("/set temperature warm", "not a number"),
        ("/set temperature nan", "not a finite number"),
        ("/set temperature", "needs one value"),
        ("/set color red", "unknown setting"),
    ):
        step = r.feed(line)
        assert step.kind == R.ERROR and words in step.text, (line, step)
    # the flag's own hint comes along
    assert "the card uses" in r.feed("/set temperature -1").text
    assert (r.sampling.temperature, r.sampling.top_k, r.sampling.top_p) == (0.0, 5, CARD_SAMPLING.top_p)


def test_think_switch():
    r = make()
    assert r.feed("/think off") == R.Step(R.SHOW, "thinking off") and not r.thinking
    assert r.feed("/set think").text == "thinking on" and r.thinking
    assert r.feed("/set nothink").text == "thinking off" and not r.thinking
    assert r.feed("/think").text == "thinking off"
    assert r.feed("/think maybe").kind == R.ERROR and not r.thinking


def test_clear_keeps_the_system_message_and_drops_pictures(tmp_path: Path):
    pic = tmp_path / "a.png"
    pic.write_bytes(PNG)
    r = with_pictures(tmp_path)
    r.system = "Be brief."
    r.clear()
    assert r.feed(f"/image {pic}").kind == R.SHOW and r.pending == [pic]
    r.begin_turn("what is it?")
    r.end_turn({"role": "assistant", "content": "a square"})
    assert r.feed("/clear").kind == R.RESET
    assert r.messages == [{"role": "system", "content": "Be brief."}] and r.images == [] and r.pending == []


def test_image_needs_a_projector_and_a_path(tmp_path: Path):
    r = make()
    assert "vision projector" in r.feed("/image x.png").text
    r = with_pictures(tmp_path)
    assert r.feed("/image").kind == R.ERROR
    step = r.feed(f"/image {tmp_path / 'missing.png'}")
    assert step.kind == R.ERROR and "not found" in step.text and r.pending == []


def test_a_turn_the_model_refused_is_undone(tmp_path: Path):
    pic = tmp_path / "a.png"
    pic.write_bytes(PNG)
    r = with_pictures(tmp_path)
    r.feed(f"/image {pic}")
    n = r.begin_turn("see")
    assert n == 1 and r.messages[-1]["content"] == [IMAGE_PART, {"type": "text", "text": "see"}]
    r.drop_turn(n)
    assert r.messages == [] and r.images == []


def test_banner_says_model_context_drafting_and_help():
    line = R.banner("m.gguf", 32768, "auto", 4)
    assert line == "m.gguf · context 32768 · MTP draft auto (up to 4) · /help for commands, /bye to leave"
    assert "MTP draft 3" in R.banner("m.gguf", 1, "fixed", 3)
    assert "MTP drafts off" in R.banner("m.gguf", 1, "plain", 0)
    assert "no MTP head" in R.banner("m.gguf", 1, "plain", 0, no_head=True)


# ------------------------------------------------------------------ /save and /load


def conversation(tmp_path: Path) -> tuple[R.Repl, Path]:
    pic = tmp_path / "a.png"
    pic.write_bytes(PNG)
    r = with_pictures(tmp_path)
    r.system = "Be brief."
    r.clear()
    r.feed(f"/image {pic}")
    r.begin_turn("what is in it? «ü»")
    r.end_turn(
        {
            "role": "assistant",
            "content": "",
            "reasoning_content": "look",
            "tool_calls": [{"type": "function", "function": {"name": "zoom", "arguments": {"x": 2}}}],
        }
    )
    r.begin_turn("and now")
    r.end_turn({"role": "assistant", "content": "a square", "reasoning_content": ""})
    return r, pic


def test_save_writes_openai_messages_and_load_reads_them_back(tmp_path: Path):
    r, pic = conversation(tmp_path)
    out = tmp_path / "chat.json"
    step = r.feed(f"/save {out}")
    assert step == R.Step(R.SHOW, f"saved 5 message(s) to {out}")
    saved = json.loads(out.read_text(encoding="utf-8"))
    assert [m["role"] for m in saved] == ["system", "user", "assistant", "user", "assistant"]
    assert saved[1]["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert saved[1]["content"][1] == {"type": "text", "text": "what is in it? «ü»"}
    assert saved[2]["tool_calls"][0]["function"] == {"name": "zoom", "arguments": '{"x": 2}'}
    assert saved[2]["reasoning_content"] == "look" and "reasoning_content" not in saved[4]
    assert not list(tmp_path.glob("*.partial"))

    fresh = with_pictures(tmp_path)
    assert fresh.feed(f"/load {out}") == R.Step(R.RESET, f"loaded 5 message(s) from {out}")
    assert fresh.messages == r.messages[:2] + [
        {
            "role": "assistant",
            "content": "",
            "reasoning_content": "look",
            "tool_calls": [{"type": "function", "function": {"name": "zoom", "arguments": {"x": 2}}}],
        },
        {"role": "user", "content": "and now"},
        {"role": "assistant", "content": "a square"},
    ]
    assert [p.read_bytes() for p in fresh.images] == [pic.read_bytes()]
    again = tmp_path / "again.json"
    fresh.save(again)
    assert json.loads(again.read_text(encoding="utf-8")) == saved  # the round trip is exact
    folder = fresh.images[0].parent
    fresh.close()
    assert not folder.exists()


@pytest.mark.parametrize(
    "content, words",
    [
        (b"\xff\xfe not text", "not JSON text"),
        (b"{not json", "not JSON text"),
        (b'"a string"', "non-empty array"),
        (b"[]", "non-empty array"),
        (b'[{"role": "robot", "content": "hi"}]', "robot"),
        (b'[{"role": "user", "content": 5}]', "string or an array"),
        (
            b'[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]',
            "remote",
        ),
        (b"[" * 100000 + b"]" * 100000, "not JSON text"),
    ],
)
def test_load_refuses_bad_files_and_keeps_the_conversation(tmp_path: Path, content: bytes, words: str):
    r, _ = conversation(tmp_path)
    before = (list(r.messages), list(r.images))
    bad = tmp_path / "bad.json"
    bad.write_bytes(content)
    step = r.feed(f"/load {bad}")
    assert step.kind == R.ERROR and words in step.text and "/save writes" in step.text, step
    assert (r.messages, r.images) == before


def test_load_refuses_pictures_without_a_projector_and_missing_or_huge_files(tmp_path: Path, monkeypatch):
    r, _ = conversation(tmp_path)
    out = tmp_path / "chat.json"
    r.save(out)
    plain = make()
    step = plain.feed(f"/load {out}")
    assert step.kind == R.ERROR and "vision projector" in step.text and plain.messages == []
    assert "not a file" in plain.feed(f"/load {tmp_path / 'nope.json'}").text
    assert "needs a file name" in plain.feed("/load").text and "needs a file name" in plain.feed("/save").text
    monkeypatch.setattr(R, "MAX_LOAD_BYTES", 100)
    assert "more than a conversation" in r.feed(f"/load {out}").text


def test_save_failures_are_one_message(tmp_path: Path):
    r, _ = conversation(tmp_path)
    step = r.feed(f"/save {tmp_path}")
    assert step.kind == R.ERROR and "folder" in step.text
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert r.feed(f"/save {blocker / 'chat.json'}").kind == R.ERROR


# ------------------------------------------------------------------ the real chat


def test_chat_end_to_end(rt_trained_gguf, tmp_path: Path):
    """`qwythos chat` on the trained tiny model with typed input: the banner, /help, /set, an
    unknown command, a question answered (greedy after /set temperature 0: the reply equals
    `run --temp 0`'s), /save writing valid JSON, /bye leaving with exit code 0."""
    from typer.testing import CliRunner

    from qwythos.cli import app

    runner = CliRunner()
    flags = ["--max-tokens", "24", "--no-mtp"]
    ran = runner.invoke(
        app, ["run", str(rt_trained_gguf), "-p", "hello there", *flags, "--temp", "0", "--json"]
    )
    assert ran.exit_code == 0, ran.output
    expected = json.loads(ran.stdout)["parsed"]
    saved = tmp_path / "chat.json"
    typed = f"/help\n/set temperature 0\n/foo\nhello there\n/save {saved}\n/bye\nnever read\n"
    chat = runner.invoke(app, ["chat", str(rt_trained_gguf), *flags], input=typed)
    assert chat.exit_code == 0, chat.output
    out = chat.output
    first = next(x for x in out.splitlines() if "/help for commands" in x)  # the banner
    assert rt_trained_gguf.name in first and "context " in first and "MTP drafts off" in first
    assert "/help for commands" in first
    assert "/save FILE" in out and "/load FILE" in out  # the help
    assert "temperature 0" in out
    assert "unknown command /foo; /help lists them" in out
    assert "generated" in out  # the reply's stats line
    msgs = json.loads(saved.read_text(encoding="utf-8"))
    assert [m["role"] for m in msgs] == ["user", "assistant"] and msgs[0]["content"] == "hello there"
    assert msgs[1]["content"] == expected["answer"]
    assert msgs[1].get("reasoning_content", "") == expected["reasoning"]
    assert "never read" not in out
