"""Chat prompts from the GGUF's own template (the model's chat format, used by run, chat, serve and
`mtp fit`).

A chat template is code that came with a file from the internet. `render_prompt` runs it in
jinja2's immutable sandbox (no escapes to Python) and bounds what it may cost:
- time: a deadline checked on every line the compiled template runs, so a loop that prints
  nothing stops too (`RenderLimits.seconds`);
- size: string and list repetition, `%` formatting, `**`, the filters that take a width, and the
  rendered text are held under `RenderLimits.chars`; the process may grow by at most
  `RenderLimits.memory_bytes` while it renders;
- every failure (a Python error inside the template, a recursive macro, a limit) becomes one
  `QwythosError` naming the file the template came from.

Text from users, tools and files never becomes control tokens: before rendering, every occurrence
of a special token's text in the messages and tool definitions (e.g. `<|im_end|>` typed by a user,
or returned by a tool) is swapped for a private-use sentinel character; the template's own text is
left alone. The `Prompt` it returns knows which spans are such literals, so a tokenizer can read
the template's text with special tokens parsed and the literals as plain text
(`Prompt.pieces()`). Assistant messages are the model's own earlier output: there only control
tokens (never the model's own `<think>` / `<tool_call>` markup) are protected.
"""

from __future__ import annotations

import contextvars
import datetime as _dt
import functools
import json
import re
import resource
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qwythos.core.errors import QwythosError
from qwythos.core.model.release import TURN_END_TOKENS

ROLES = ("system", "user", "assistant", "tool")
TURN_END = TURN_END_TOKENS

# Used only when a GGUF carries no template: Qwen's ChatML with the thinking opener.
FALLBACK_TEMPLATE = (
    "{%- for m in messages %}{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n<think>\\n' }}{%- endif %}"
)
#: The special-token texts protected when the caller names none (Qwen3.5's chat markup).
DEFAULT_CONTROL_TEXTS: tuple[str, ...] = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")

# Sentinels: one character of Supplementary Private Use Area-A per protected occurrence. Any such
# character already in the user's text is protected the same way, so it cannot pose as one.
_SENTINEL_BASE = 0xF0000
_SENTINEL_MAX = 0xFFFFD - _SENTINEL_BASE
_SENTINEL_RE = re.compile("[\U000f0000-\U000ffffd]")


@dataclass(frozen=True)
class RenderLimits:
    """What rendering one prompt may cost. The defaults are far above any real template's needs
    (Qwen3.5's renders a long conversation in milliseconds) and far below harm."""

    seconds: float = 5.0
    #: Largest rendered prompt and largest single value a template may build: 16 Mi characters,
    #: about 4M tokens, four times the model's 1M-token context.
    chars: int = 16 * 2**20
    #: How much the process may grow while the template runs.
    memory_bytes: int = 1 << 30


DEFAULT_LIMITS = RenderLimits()


class _LimitExceeded(Exception):
    """Raised inside the template run; turned into one QwythosError by `render_prompt`."""


# ---------------------------------------------------------------- the prompt and its literals
@dataclass
class Prompt:
    """A rendered prompt. `text` holds a sentinel character where user, tool or file text had a
    special token's text; `literals[i]` is what sentinel `i` stands for."""

    text: str
    literals: list[str] = field(default_factory=list)

    def plain(self) -> str:
        """The prompt as one string, every literal put back (what a string-only API would send)."""
        if not self.literals:
            return self.text
        return _SENTINEL_RE.sub(lambda m: self.literals[ord(m.group()) - _SENTINEL_BASE], self.text)

    def pieces(self) -> Iterator[tuple[str, bool]]:
        """(text, is_literal) in order: template text (special tokens may be parsed in it) and the
        protected literals (to be read as plain text)."""
        pos = 0
        for m in _SENTINEL_RE.finditer(self.text):
            if m.start() > pos:
                yield self.text[pos : m.start()], False
            yield self.literals[ord(m.group()) - _SENTINEL_BASE], True
            pos = m.end()
        if pos < len(self.text):
            yield self.text[pos:], False

    def endswith(self, suffix: str) -> bool:
        return self.text.endswith(suffix)

    def __add__(self, more: str) -> Prompt:
        """The prompt followed by text the model itself wrote (a continuation): template-side text,
        whose special tokens are real. A stray sentinel character in it stays that character."""
        literals = list(self.literals)

        def keep(m: re.Match) -> str:
            if len(literals) > _SENTINEL_MAX:
                raise QwythosError(
                    "the text holds more private-use characters than one prompt can carry", None
                )
            literals.append(m.group())
            return chr(_SENTINEL_BASE + len(literals) - 1)

        return Prompt(self.text + _SENTINEL_RE.sub(keep, more), literals)

    def replace(self, old: str, new: str) -> Prompt:
        """Template-side text replaced (e.g. the image placeholder by libmtmd's marker); literals untouched."""
        return Prompt(self.text.replace(old, new), self.literals)

    def split(self, sep: str) -> list[Prompt]:
        """The prompt cut at every `sep` the template wrote (literals never contain one)."""
        return [Prompt(part, self.literals) for part in self.text.split(sep)]


class _Protector:
    """Swaps special-token texts (and stray sentinel characters) in untrusted strings for
    sentinels, recording the originals."""

    def __init__(self, control: Iterable[str], markup: Iterable[str]) -> None:
        self.literals: list[str] = []
        self._strict = self._pattern(set(control) | set(markup))
        self._control = self._pattern(set(control))

    @staticmethod
    def _pattern(texts: set[str]) -> re.Pattern:
        alts = [re.escape(t) for t in sorted((t for t in texts if t), key=len, reverse=True)]
        return re.compile("|".join([*alts, _SENTINEL_RE.pattern]))

    def _swap(self, m: re.Match) -> str:
        if len(self.literals) > _SENTINEL_MAX:
            raise QwythosError(
                "the messages hold more special-token texts than one prompt can protect",
                "send shorter messages",
            )
        self.literals.append(m.group())
        return chr(_SENTINEL_BASE + len(self.literals) - 1)

    def text(self, s: str, *, markup: bool = True) -> str:
        return (self._strict if markup else self._control).sub(self._swap, s)

    def value(self, v: Any, *, markup: bool = True, depth: int = 0) -> Any:
        """Every string inside `v` (dicts, lists, keys too) protected; other values as they are."""
        if depth > 64:
            raise QwythosError("the messages or tools are nested more than 64 levels deep", "flatten them")
        if isinstance(v, str):
            return self.text(v, markup=markup)
        if isinstance(v, dict):
            return {
                self.value(k, markup=markup, depth=depth + 1): self.value(x, markup=markup, depth=depth + 1)
                for k, x in v.items()
            }
        if isinstance(v, (list, tuple)):
            return [self.value(x, markup=markup, depth=depth + 1) for x in v]
        return v


# ---------------------------------------------------------------- the bounded sandbox
def _raise(msg: str):
    raise QwythosError(f"the chat template refused the messages: {msg}", "check the roles and order")


def _tojson(v: Any, indent: int | None = None, ensure_ascii: bool = False) -> str:
    return json.dumps(v, indent=indent, ensure_ascii=ensure_ascii)


_WIDE_FORMAT = re.compile(r"%[-+ #0]*(\d{7,}|\*)|\.\d{7,}")


class _Budget:
    """The limits of one render, checked by the sandbox's operators, the wrapped filters and a
    line tracer on the compiled template's frames."""

    def __init__(self, limits: RenderLimits) -> None:
        self.limits = limits
        self.deadline = time.monotonic() + limits.seconds
        self.rss0 = _peak_rss()

    def size(self, n: int, what: str) -> None:
        if n > self.limits.chars:
            raise _LimitExceeded(f"{what} would hold {n:,} characters (limit {self.limits.chars:,})")

    def check(self) -> None:
        if time.monotonic() > self.deadline:
            raise _LimitExceeded(f"it ran longer than {self.limits.seconds:g} s")
        if _peak_rss() - self.rss0 > self.limits.memory_bytes:
            raise _LimitExceeded(f"it took more than {self.limits.memory_bytes >> 20} MiB of memory")

    def tracer(self, frame, event, arg):  # noqa: ANN001 - sys.settrace signature
        if frame.f_code.co_filename != "<template>":
            return None  # jinja's own runtime: bounded by the sizes checked above
        self.check()
        return self._line

    def _line(self, frame, event, arg):  # noqa: ANN001
        self.check()
        return self._line


def _peak_rss() -> int:
    """Peak resident memory in bytes (Linux reports KiB, macOS bytes)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024


def _sized(v: Any) -> int:
    return len(v) if isinstance(v, (str, list, tuple, bytes)) else 0


# The budget of the render under way (in this thread or task): the compiled template is shared
# between renders (compiling costs 100x rendering), so its hooks look their limits up here.
_BUDGET: contextvars.ContextVar[_Budget] = contextvars.ContextVar("chat_template_budget")


def _env():  # noqa: ANN202 - a jinja2 sandbox environment
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class BoundedEnvironment(ImmutableSandboxedEnvironment):
        # intercepted operators are also never constant-folded at compile time
        intercepted_binops = frozenset({"*", "**", "%", "+"})

        def call_binop(self, context, operator, left, right):  # noqa: ANN001
            budget = _BUDGET.get()
            if operator == "*":
                for seq, n in ((left, right), (right, left)):
                    if _sized(seq) and isinstance(n, int):
                        budget.size(_sized(seq) * max(n, 0), "a repeated value")
            elif operator == "**":
                if isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 4096:
                    raise _LimitExceeded(f"{left} ** {right} is too large a number")
            elif operator == "%" and isinstance(left, str):
                if _WIDE_FORMAT.search(left):
                    raise _LimitExceeded("a %-format asks for a width or precision of millions")
            elif operator == "+":
                budget.size(_sized(left) + _sized(right), "a joined value")
            return super().call_binop(context, operator, left, right)

    env = BoundedEnvironment(trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: _dt.datetime.now().strftime(str(fmt)[:200])
    env.filters["tojson"] = _tojson
    for name, fn in list(env.filters.items()):
        env.filters[name] = _bounded_filter(fn, name)
    return env


def _bounded_filter(fn, name: str):  # noqa: ANN001, ANN202
    """A filter whose numeric arguments (widths, counts) and result stay under the budget."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        budget = _BUDGET.get()
        for a in (*args, *kwargs.values()):
            if isinstance(a, int) and not isinstance(a, bool) and abs(a) > budget.limits.chars:
                raise _LimitExceeded(f"the filter {name!r} was given {a:,}")
            if isinstance(a, str) and name == "format" and _WIDE_FORMAT.search(a):
                raise _LimitExceeded("a format asks for a width or precision of millions")
        if name == "join":
            for a in args:
                if isinstance(a, (list, tuple)):
                    budget.size(sum(_sized(x) for x in a), "a joined list")
        out = fn(*args, **kwargs)
        budget.size(_sized(out), f"the result of {name!r}")
        return out

    # jinja passes the environment / context / eval context to filters marked for it
    for mark in ("jinja_pass_arg",):
        if hasattr(fn, mark):
            setattr(run, mark, getattr(fn, mark))
    return run


def _bound_joins(tpl) -> None:  # noqa: ANN001 - jinja2.Template
    """`a ~ b` compiles to a call of jinja's `str_join`/`markup_join`, bound into the compiled
    template's globals (shared by its blocks and macros): swap in size-checked ones."""
    g = tpl.root_render_func.__globals__
    for name in ("str_join", "markup_join"):
        join = g.get(name)
        if join is not None:

            def checked(seq, _join=join):  # noqa: ANN001, ANN202
                seq = list(seq)
                _BUDGET.get().size(sum(len(x) for x in seq if isinstance(x, str)), "a joined value")
                return _join(seq)

            g[name] = checked


@functools.lru_cache(maxsize=8)
def _compiled(template: str):  # noqa: ANN202 - jinja2.Template
    """`template` compiled in the bounded sandbox, once per text (a server renders every request
    with the same one); errors are not cached, so a bad template fails the same way each time."""
    tpl = _env().from_string(template)
    _bound_joins(tpl)
    return tpl


# ---------------------------------------------------------------- rendering
IMAGE_PART = {"type": "image"}  # a picture's place in a message's list of parts


def _content(content: Any, protect: _Protector, markup: bool, image_text: str | None) -> Any:
    """A message's content protected; a list of text and image parts joined into one string."""
    parts = isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") in ("text", "image") for p in content
    )
    if not (parts and content):
        return protect.value(content, markup=markup)
    if image_text is None and IMAGE_PART in content:
        raise QwythosError("a message holds an image, but no projector is loaded to read it", "pass --mmproj")
    out = []
    for p in content:
        if p == IMAGE_PART:
            out.append(image_text)
        elif isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str):
            out.append(protect.text(p["text"], markup=markup))
        else:
            raise QwythosError(
                "a message part is neither text nor an image", 'use {"type": "text", "text": ...}'
            )
    return "".join(out)


def check_messages(messages: list[dict]) -> list[dict]:
    if not isinstance(messages, list):
        raise QwythosError("the messages are not a list", 'pass [{"role": "user", "content": "..."}]')
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise QwythosError(f"message {i} is not an object", 'use {"role": ..., "content": ...}')
        role = m.get("role")
        if role not in ROLES:
            raise QwythosError(f"message {i} has role {str(role)[:40]!r}", f"use one of {', '.join(ROLES)}")
        m = dict(m)
        if m.get("content") is None:
            m["content"] = ""
        out.append(m)
    return out


def render_prompt(
    template: str | None,
    messages: list[dict],
    *,
    tools: list[dict] | None = None,
    add_generation_prompt: bool = True,
    enable_thinking: bool = True,
    bos_token: str = "",
    eos_token: str = "<|im_end|>",
    control_texts: Iterable[str] = DEFAULT_CONTROL_TEXTS,
    markup_texts: Iterable[str] = (),
    image_text: str | None = None,
    source: str | Path | None = None,
    limits: RenderLimits = DEFAULT_LIMITS,
) -> Prompt:
    """The prompt for `messages` under the model's chat template, bounded and with user, tool and
    file text protected.

    `control_texts`: the texts of the vocabulary's control tokens (`<|im_start|>` ...), protected
    in every message; `markup_texts`: tokens a tokenizer always matches (`<think>`, `<tool_call>`
    ...), protected everywhere except in assistant messages. A message's content may be a list of
    parts, `{"type": "text", "text": ...}` and `IMAGE_PART`; each image part becomes `image_text`
    (the text that stands for a picture, e.g. Qwen's vision triple), written as template text: only
    our own code can place an image, never a message's text. `source` names the file the template
    came from in every error."""
    origin = f"the chat template of {source}" if source else "the chat template"
    protect = _Protector(control_texts, markup_texts)
    msgs = []
    for m in check_messages(messages):
        if m["role"] == "assistant":  # the model's own output: its markup stays, control tokens do not
            msgs.append({**m, "content": _content(m["content"], protect, False, image_text)})
        else:
            rest = protect.value({k: v for k, v in m.items() if k != "content"})
            msgs.append({**rest, "content": _content(m["content"], protect, True, image_text)})
    safe_tools = protect.value(tools) if tools else None
    budget = _Budget(limits)
    token = _BUDGET.set(budget)
    previous = sys.gettrace()
    try:
        tpl = _compiled(template or FALLBACK_TEMPLATE)  # once per text; the tracer bounds its runs
        sys.settrace(budget.tracer)
        parts: list[str] = []
        n = 0
        for piece in tpl.generate(
            messages=msgs,
            tools=safe_tools,
            add_generation_prompt=add_generation_prompt,
            enable_thinking=enable_thinking,
            bos_token=bos_token,
            eos_token=eos_token,
        ):
            n += len(piece)
            budget.size(n, "the rendered prompt")
            parts.append(piece)
    except QwythosError:
        raise
    except _LimitExceeded as e:
        raise QwythosError(
            f"{origin} was stopped: {e}",
            "the file's template is broken or hostile: `qwythos run --raw` sends a prompt without it",
        ) from None
    except RecursionError:
        raise QwythosError(
            f"{origin} recursed too deeply", "the file's template is broken or hostile"
        ) from None
    except MemoryError:
        raise QwythosError(
            f"{origin} ran out of memory", "the file's template is broken or hostile"
        ) from None
    except Exception as e:  # any error a template can raise: jinja's own, ZeroDivision, Type, Value ...
        raise QwythosError(
            f"{origin} failed: {type(e).__name__}: {str(e)[:300]}",
            "`qwythos run --raw` sends the prompt without it; or fix the GGUF's tokenizer.chat_template",
        ) from None
    finally:
        sys.settrace(previous)
        _BUDGET.reset(token)
    return Prompt("".join(parts), protect.literals)


def render_chat(template: str | None, messages: list[dict], **kw: Any) -> str:
    """The prompt as one string (every literal put back): for callers that only need the text
    (a prompt shown to a person, a length estimate). Tokenize `render_prompt`'s `Prompt` instead
    wherever the text goes to the model."""
    return render_prompt(template, messages, **kw).plain()


def load_tools(path: str | Path) -> list[dict]:
    """Tool specs for the chat template from a JSON file: a list of OpenAI-style tool objects
    (`{"type": "function", "function": {"name", "description", "parameters"}}`) or `{"tools": [...]}`."""
    path = Path(path)
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise QwythosError(f"tools file {path} not found", "pass a JSON file with --tools") from None
    except (OSError, UnicodeDecodeError) as e:
        raise QwythosError(f"{path} is not readable text ({e})", "write the tools as a JSON list") from None
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, RecursionError) as e:
        why = "nested too deeply" if isinstance(e, RecursionError) else str(e)
        raise QwythosError(f"{path} is not readable JSON ({why})", "write the tools as a JSON list") from None
    tools = data.get("tools") if isinstance(data, dict) else data
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise QwythosError(f"{path} holds no list of tool objects", 'use [{"type": "function", ...}, ...]')
    for i, t in enumerate(tools):
        fn = t.get("function", t)
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise QwythosError(
                f"{path}: tool {i} has no function name", 'give each tool "function": {"name": ...}'
            )
    return tools
