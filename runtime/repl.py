"""`qwythos chat`'s commands and conversation state, apart from the terminal loop that runs them.

`Repl.feed(line)` takes one typed line and answers with a `Step`: send a message to the model, wait
for more lines (inside `\"\"\"` ... `\"\"\"`), print something, forget the cache (a new or loaded
conversation), leave, or nothing. It holds the conversation (OpenAI-shaped messages, the template's
image parts), its pictures, the sampling and the thinking switch; the loop in commands/chat.py only
reads lines, prints, and calls the engine.

Commands follow `ollama run` (`/?`, `/set`, `/clear`, `/bye`, `\"\"\"`) and llama-cli:

- `/set NAME VALUE` checks a value with the command-line flag's own check, which the loop hands in
  (commands/engine_flags.sampling_from_flags);
  `/set parameter NAME VALUE` (ollama's spelling), `/set think` and `/set nothink` are accepted too;
- `/save FILE` writes the conversation as the JSON messages `qwythos serve` takes (pictures as
  base64 data URLs), under a temporary name renamed when complete (core/fileio);
- `/load FILE` reads such a file as untrusted input: its size is bounded and every message is
  checked as the server checks a request (runtime/server/schema.parse_messages); a bad file is one
  message and the conversation stays as it was.
A line that starts with `/word` is never sent to the model: an unknown word gets a hint.
"""

from __future__ import annotations

import base64
import json
import math
import mimetypes
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from qwythos.core.errors import QwythosError
from qwythos.core.fileio import write_text_atomic
from qwythos.core.model.chat_template import IMAGE_PART
from qwythos.runtime.sampling import CARD_SAMPLING, SamplingParams

#: Opens and closes a message of several lines (ollama's convention).
MULTILINE = '"""'
#: The prompts: a new message, and the next line of a multi-line one.
PROMPT = "> "
PROMPT_MORE = "... "
#: Largest conversation file `/load` reads (pictures inside make it large; a chat's text never is).
MAX_LOAD_BYTES = 64 << 20

#: What the loop does with a Step.
SEND = "send"  # text: the user's message (the Repl already holds it with its pictures)
MORE = "more"  # inside a multi-line message: read the next line
SHOW = "show"  # text: print it
ERROR = "error"  # text: print it as an error
RESET = "reset"  # text: print it; the conversation was replaced, so forget the session cache
QUIT = "quit"
NOTHING = "nothing"

#: The /set names: (the command-line flag's keyword in engine_flags.sampling_from_flags, type).
SET_PARAMS: dict[str, tuple[str, type]] = {
    "temperature": ("temp", float),
    "top_p": ("top_p", float),
    "top_k": ("top_k", int),
    "min_p": ("min_p", float),
    "repeat_penalty": ("repeat_penalty", float),
    "seed": ("seed", int),
}
_SET_ALIASES = {"temp": "temperature"}
QUIT_WORDS = ("/bye", "/exit", "/quit")

_HELP_ROWS = (
    ("/help, /?", "this list"),
    ("/clear", "start a new conversation (the --system message stays)"),
    ("/think on|off", "let the model reason before it answers (alone: show the setting)"),
    ("/set NAME VALUE", f"sampling: {', '.join(SET_PARAMS)}; /set alone shows them"),
    ("/image PATH", "attach a picture to the next message"),
    ("/save FILE", "write the conversation as JSON messages (the shape `qwythos serve` takes)"),
    ("/load FILE", "continue a conversation /save wrote"),
    (f"{MULTILINE} ... {MULTILINE}", "a message of several lines"),
    ("/bye", "leave (also /exit, Ctrl-D); Ctrl-C stops a reply"),
)
HELP = "\n".join(f"{cmd:<20}{what}" for cmd, what in _HELP_ROWS)

_COMMAND_RE = re.compile(r"/([A-Za-z?][\w-]*)(?=\s|$)")


@dataclass(frozen=True)
class Step:
    kind: str
    text: str = ""


def banner(name: str, ctx: int, draft_mode: str, max_draft: int, no_head: bool = False) -> str:
    """The one line chat opens with: the model, its context, how it drafts (a runtime/draft_plan
    DraftPlan's mode and length; no_head: plain because the file has no head, not by choice), where
    help is."""
    if draft_mode == "auto":
        draft = f"MTP draft auto (up to {max_draft})"
    elif draft_mode == "fixed":
        draft = f"MTP draft {max_draft}"
    else:
        draft = "no MTP head: plain decoding" if no_head else "MTP drafts off"
    return f"{name} · context {ctx} · {draft} · /help for commands, /bye to leave"


def _bool_word(word: str) -> bool | None:
    w = word.lower()
    return True if w in ("on", "true", "yes", "1") else False if w in ("off", "false", "no", "0") else None


def _image_mime(data: bytes, path: Path) -> str:
    for magic, mime in (
        (b"\x89PNG", "image/png"),
        (b"\xff\xd8", "image/jpeg"),
        (b"GIF8", "image/gif"),
        (b"BM", "image/bmp"),
    ):
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    guess = mimetypes.guess_type(path.name)[0]
    return guess if guess and guess.startswith("image/") else "image/png"


class Repl:
    """One chat's state and commands. `check_image(arg) -> Path` vets an `/image` argument (raises a
    QwythosError when it is not a readable picture or no projector is loaded); None: no projector.
    `check_sampling(temp=, top_k=, top_p=, min_p=, repeat_penalty=, seed=)` is the sampling flags'
    own check (commands/engine_flags.sampling_from_flags), which `/set` applies to its value."""

    def __init__(
        self,
        *,
        system: str | None = None,
        sampling: SamplingParams = CARD_SAMPLING,
        thinking: bool = True,
        check_image: Callable[[str], Path] | None = None,
        check_sampling: Callable[..., SamplingParams] | None = None,
    ) -> None:
        self.system = system
        self.check_sampling = check_sampling
        self.sampling = sampling
        self.thinking = thinking
        self.check_image = check_image
        self.messages: list[dict] = []
        self.images: list[Path] = []  # every picture of the conversation, in order
        self.pending: list[Path] = []  # /image pictures for the next message
        self._lines: list[str] | None = None  # a multi-line message being typed
        self._loaded_dir: Path | None = None  # where /load put the pictures it read
        self.clear()

    # ------------------------------------------------------------------ the conversation
    @property
    def prompt(self) -> str:
        return PROMPT if self._lines is None else PROMPT_MORE

    def clear(self) -> None:
        """A new conversation: only the system message, no pictures, no half-typed message."""
        self.messages = [{"role": "system", "content": self.system}] if self.system else []
        self.images, self.pending, self._lines = [], [], None

    def cancel_input(self) -> bool:
        """Drop a multi-line message being typed (Ctrl-C there); False when there was none."""
        had, self._lines = self._lines is not None, None
        return had

    def begin_turn(self, text: str) -> int:
        """Add the user's message (with the pending pictures); the number of pictures it holds."""
        n = len(self.pending)
        content: str | list = text if not n else [IMAGE_PART] * n + [{"type": "text", "text": text}]
        self.messages.append({"role": "user", "content": content})
        self.images += self.pending
        self.pending = []
        return n

    def drop_turn(self, n_images: int) -> None:
        """Undo `begin_turn` (the model could not take the message)."""
        self.messages.pop()
        if n_images:
            del self.images[len(self.images) - n_images :]

    def end_turn(self, assistant: dict) -> None:
        self.messages.append(assistant)

    # ------------------------------------------------------------------ one line
    def feed(self, line: str) -> Step:
        """What to do with one typed line (without its newline)."""
        if self._lines is not None:  # inside """ ... """: no commands, until the closing quotes
            if line.rstrip().endswith(MULTILINE):
                last = line.rstrip()[: -len(MULTILINE)]
                if last:  # a closing line of its own adds no empty last line
                    self._lines.append(last)
                text, self._lines = "\n".join(self._lines), None
                return self._send(text)
            self._lines.append(line)
            return Step(MORE)
        stripped = line.strip()
        if stripped.startswith(MULTILINE):
            rest = stripped[len(MULTILINE) :]
            if len(rest) >= len(MULTILINE) and rest.endswith(MULTILINE):  # """one line"""
                return self._send(rest[: -len(MULTILINE)])
            self._lines = [rest] if rest else []
            return Step(MORE)
        m = _COMMAND_RE.match(stripped)
        if m is None:
            return self._send(line)
        arg = stripped[m.end() :].strip()
        try:
            return self._command(m.group(1).lower(), arg)
        except QwythosError as e:
            return Step(ERROR, e.message + (f" ({e.hint})" if e.hint else ""))

    def _send(self, text: str) -> Step:
        if not text.strip():
            return Step(NOTHING)
        return Step(SEND, text)

    def _command(self, word: str, arg: str) -> Step:
        if f"/{word}" in QUIT_WORDS:
            return Step(QUIT)
        if word in ("help", "?"):
            return Step(SHOW, HELP)
        if word == "clear":
            self.clear()
            return Step(RESET, "new conversation")
        if word == "think":
            return self._think(arg)
        if word == "set":
            return self._set(arg)
        if word == "image":
            return self._image(arg)
        if word == "save":
            if not arg:
                raise QwythosError("/save needs a file name", "e.g. /save chat.json")
            n = self.save(Path(arg).expanduser())
            return Step(SHOW, f"saved {n} message(s) to {arg}")
        if word == "load":
            if not arg:
                raise QwythosError("/load needs a file name", "e.g. /load chat.json")
            n = self.load(Path(arg).expanduser())
            return Step(RESET, f"loaded {n} message(s) from {arg}")
        return Step(ERROR, f"unknown command /{word}; /help lists them")

    def _think(self, arg: str) -> Step:
        if arg:
            on = _bool_word(arg)
            if on is None:
                raise QwythosError(f"/think {arg}: say on or off", "e.g. /think off")
            self.thinking = on
        return Step(SHOW, f"thinking {'on' if self.thinking else 'off'}")

    def settings(self) -> str:
        """The current sampling and thinking, as `/set` alone shows them."""
        s = self.sampling
        vals = {name: getattr(s, name) for name in SET_PARAMS}
        vals["seed"] = "random" if s.seed is None else s.seed
        return "  ".join(f"{k} {v}" for k, v in vals.items()) + f"  think {'on' if self.thinking else 'off'}"

    def _set(self, arg: str) -> Step:
        words = arg.split()
        if words and words[0].lower() == "parameter":  # ollama: /set parameter temperature 0
            words = words[1:]
        if not words:
            return Step(SHOW, self.settings())
        name = _SET_ALIASES.get(words[0].lower(), words[0].lower())
        if name in ("think", "nothink") and len(words) == 1:  # ollama: /set think, /set nothink
            return self._think("on" if name == "think" else "off")
        if name not in SET_PARAMS:
            raise QwythosError(f"/set {words[0]}: unknown setting", f"one of {', '.join(SET_PARAMS)}")
        if len(words) != 2:
            raise QwythosError(
                f"/set {name} needs one value", f"e.g. /set {name} {getattr(CARD_SAMPLING, name) or 0}"
            )
        self.sampling = self.checked(name, words[1])
        return Step(SHOW, f"{name} {words[1]}")

    def checked(self, name: str, raw: str) -> SamplingParams:
        """The sampling with `/set name raw` applied, checked by the rule of the matching flag."""
        flag, kind = SET_PARAMS[name]
        if name == "seed" and raw.lower() in ("random", "none"):
            return replace(self.sampling, seed=None)
        try:
            value = kind(raw)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise QwythosError(
                f"/set {name} {raw}: not {what}", f"e.g. /set {name} {getattr(CARD_SAMPLING, name) or 0}"
            ) from None
        if isinstance(value, float) and not math.isfinite(value):
            raise QwythosError(f"/set {name} {raw}: not a finite number", None)
        if self.check_sampling is not None:
            try:
                self.check_sampling(**{k: value if k == flag else None for k, _ in SET_PARAMS.values()})
            except QwythosError as e:
                raise QwythosError(f"/set {name} {raw} is out of range", e.hint) from None
        return replace(self.sampling, **{name: value})

    def _image(self, arg: str) -> Step:
        if not arg:
            raise QwythosError("/image needs a path", "e.g. /image photo.png")
        if self.check_image is None:
            raise QwythosError(
                "/image needs a vision projector, and none is loaded", "restart with --mmproj FILE"
            )
        self.pending.append(self.check_image(arg))
        return Step(SHOW, f"attached {arg} to the next message")

    # ------------------------------------------------------------------ /save and /load
    def to_openai(self) -> list[dict]:
        """The conversation as OpenAI chat messages: pictures as base64 data URLs, tool-call
        arguments as JSON text."""
        pictures = iter(self.images)
        out = []
        for m in self.messages:
            msg: dict = {"role": m["role"]}
            content = m.get("content")
            if isinstance(content, list):
                parts = []
                for p in content:
                    if p == IMAGE_PART:
                        path = Path(next(pictures))
                        data = path.read_bytes()
                        url = f"data:{_image_mime(data, path)};base64,{base64.b64encode(data).decode()}"
                        parts.append({"type": "image_url", "image_url": {"url": url}})
                    else:
                        parts.append({"type": "text", "text": p.get("text", "")})
                msg["content"] = parts
            else:
                msg["content"] = content or ""
            if m.get("reasoning_content"):
                msg["reasoning_content"] = m["reasoning_content"]
            if m.get("tool_calls"):
                msg["tool_calls"] = [
                    {
                        "type": "function",
                        "function": {
                            "name": c["function"]["name"],
                            "arguments": json.dumps(c["function"]["arguments"], ensure_ascii=False),
                        },
                    }
                    for c in m["tool_calls"]
                ]
            out.append(msg)
        return out

    def save(self, path: Path) -> int:
        """Write the conversation to `path` (temporary name, then renamed); the message count."""
        try:
            msgs = self.to_openai()
        except OSError as e:
            raise QwythosError(
                f"cannot read a picture of this conversation: {e}", "attach it again"
            ) from None
        write_text_atomic(path, json.dumps(msgs, indent=1, ensure_ascii=False) + "\n")
        return len(msgs)

    def load(self, path: Path) -> int:
        """Replace the conversation with the messages in `path` (checked as `serve` checks a
        request's); the message count. Anything wrong: a QwythosError, the conversation unchanged."""
        from qwythos.runtime.server.errors import APIError
        from qwythos.runtime.server.schema import parse_messages
        from qwythos.runtime.vision import IMAGE_PLACEHOLDER

        fix = "pass a JSON array of {role, content} messages, as /save writes"
        try:
            if not path.is_file():
                raise QwythosError(f"{path} is not a file", fix)
            size = path.stat().st_size
            if size > MAX_LOAD_BYTES:
                raise QwythosError(
                    f"{path} is {size >> 20} MiB, more than a conversation ({MAX_LOAD_BYTES >> 20} MiB)", fix
                )
            data = json.loads(path.read_bytes().decode("utf-8"))
        except OSError as e:
            raise QwythosError(
                f"cannot read {path}: {e.strerror or e}", "check the file's permissions"
            ) from None
        except UnicodeDecodeError as e:
            raise QwythosError(f"{path} is not JSON text (not UTF-8 at byte {e.start})", fix) from None
        except (ValueError, RecursionError) as e:
            raise QwythosError(
                f"{path} is not JSON text ({str(e)[:120] or 'nested too deeply'})", fix
            ) from None
        if isinstance(data, dict) and "messages" in data:  # a request body
            data = data["messages"]
        try:
            msgs, pictures = parse_messages(data, IMAGE_PLACEHOLDER if self.check_image else None)
        except APIError as e:
            raise QwythosError(f"{path}: {e.message}", fix) from None
        paths = self._keep_pictures(pictures)
        try:
            for p in paths:
                if self.check_image is not None:
                    self.check_image(str(p))
        except QwythosError as e:
            raise QwythosError(f"{path} holds a picture that cannot be read: {e.message}", fix) from None
        self.clear()
        self.messages, self.images = msgs, paths
        return len(msgs)

    def _keep_pictures(self, pictures: list[bytes]) -> list[Path]:
        """Loaded pictures as files the vision encoder reads (removed by `close`)."""
        if not pictures:
            return []
        if self._loaded_dir is None:
            self._loaded_dir = Path(tempfile.mkdtemp(prefix="qwythos-chat-"))
        start = len(list(self._loaded_dir.iterdir()))
        paths = []
        for i, data in enumerate(pictures):
            p = self._loaded_dir / f"image-{start + i}"
            p.write_bytes(data)
            paths.append(p)
        return paths

    def close(self) -> None:
        if self._loaded_dir is not None:
            shutil.rmtree(self._loaded_dir, ignore_errors=True)
            self._loaded_dir = None
