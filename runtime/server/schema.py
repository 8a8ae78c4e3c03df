"""Request bodies -> checked requests: every known field's type and range, OpenAI's message shapes
turned into the chat template's, and the options qwythos does not support refused by name.

Unknown fields are ignored (clients send many); a known field of the wrong type, a value out of
range or an option we cannot honour is one `APIError` 400 naming the field (`param`). Sampling
fields a client leaves out stay out of `GenOptions.sampling`, so the model card's defaults apply
(runtime/sampling.SamplingParams holds them).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from qwythos.core.model.chat_template import IMAGE_PART
from qwythos.runtime.server.errors import APIError, bad_request
from qwythos.runtime.server.images import decode_image_url

#: Most stop strings a request may give, and the longest one (llama-server takes any; OpenAI 4).
MAX_STOP = 16
MAX_STOP_CHARS = 1000
#: OpenAI's function names, plus the dots and colons MCP tools use; never markup (`<`, `>`, spaces).
TOOL_NAME_RE = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
TOOL_CHOICES = ("auto", "none", "required")
#: OpenAI's role for system instructions in newer models; the template knows it as "system".
ROLE_ALIASES = {"developer": "system"}
ROLES = ("system", "user", "assistant", "tool")

_KINDS = {
    "bool": "a boolean",
    "int": "an integer",
    "number": "a number",
    "str": "a string",
    "list": "an array",
    "dict": "an object",
}


@dataclass
class GenOptions:
    """How to generate: the sampling fields the client gave (SamplingParams names), the token
    budget (None: the card's), stop strings, and whether/how to stream."""

    sampling: dict[str, Any] = field(default_factory=dict)
    max_tokens: int | None = None
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False


@dataclass
class ChatRequest:
    """A checked chat request. messages: the chat template's shape (content strings with image
    placeholders, tool-call arguments as objects); images: the pictures' bytes in placeholder order."""

    model: str | None
    messages: list[dict]
    images: list[bytes]
    tools: list[dict] | None
    tool_choice: str  # auto | none | required | function (then tool_name)
    tool_name: str | None
    enable_thinking: bool
    options: GenOptions


@dataclass
class CompletionRequest:
    """A checked /v1/completions request: the raw prompt as text or token ids."""

    model: str | None
    prompt: str | list[int]
    options: GenOptions


# ---------------------------------------------------------------- typed fields
def _type_name(v: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array"}.get(
        type(v), "an object" if isinstance(v, dict) else type(v).__name__
    )


def _is(v: Any, kind: str) -> bool:
    if kind == "bool":
        return isinstance(v, bool)
    if kind == "int":
        return (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer())
    if kind == "number":
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    return isinstance(v, {"str": str, "list": list, "dict": dict}[kind])


def typed(obj: dict, name: str, kind: str, default: Any = None, *, where: str = "") -> Any:
    """obj[name] when it has the kind (None or absent: default); else a 400 naming the field."""
    v = obj.get(name)
    if v is None:
        return default
    if not _is(v, kind):
        raise bad_request(
            f"'{where}{name}' must be {_KINDS[kind]}, not {_type_name(v)}", f"{where}{name}", "invalid_type"
        )
    return int(v) if kind == "int" else v


def ranged(obj: dict, name: str, kind: str, ok, want: str) -> Any:  # noqa: ANN001 - ok: a predicate
    """A number field that must satisfy `ok`; `want` says the range in the error."""
    v = typed(obj, name, kind)
    if v is not None and not ok(v):
        raise bad_request(f"'{name}' is {v}; use {want}", name, "invalid_value")
    return v


# ---------------------------------------------------------------- shared options
def _refuse_unsupported(body: dict, chat: bool) -> None:
    n = typed(body, "n", "int")
    if n is not None and n != 1:
        raise bad_request(f"'n' is {n}; qwythos generates one choice per request (n = 1)", "n", "unsupported")
    for name in ("presence_penalty", "frequency_penalty"):
        v = ranged(body, name, "number", lambda x: -2 <= x <= 2, "a number from -2 to 2")
        if v:
            raise bad_request(
                f"'{name}' {v} is not supported by qwythos's sampler; use 'repeat_penalty' (1 = off, the "
                "card's 1.05 by default)",
                name,
                "unsupported",
            )
    if chat:
        if typed(body, "logprobs", "bool"):
            raise bad_request("'logprobs' is not supported", "logprobs", "unsupported")
        if body.get("top_logprobs") is not None:
            raise bad_request("'top_logprobs' is not supported", "top_logprobs", "unsupported")
        fmt = typed(body, "response_format", "dict")
        if fmt is not None and fmt.get("type", "text") != "text":
            raise bad_request(
                f"'response_format' {str(fmt.get('type'))[:40]!r} is not supported (no constrained decoding)",
                "response_format",
                "unsupported",
            )
    else:
        if body.get("logprobs") is not None:
            raise bad_request("'logprobs' is not supported", "logprobs", "unsupported")
        if typed(body, "echo", "bool"):
            raise bad_request("'echo' is not supported", "echo", "unsupported")
        if typed(body, "suffix", "str"):
            raise bad_request("'suffix' is not supported", "suffix", "unsupported")
        best_of = typed(body, "best_of", "int")
        if best_of is not None and best_of != 1:
            raise bad_request("'best_of' must be 1", "best_of", "unsupported")


def _sampling(body: dict) -> dict[str, Any]:
    """The sampling fields given, in SamplingParams' names (absent ones keep the card's defaults)."""
    out: dict[str, Any] = {}
    for name, kind, ok, want in (
        ("temperature", "number", lambda x: x >= 0, "0 (greedy) or more"),
        ("top_p", "number", lambda x: 0 <= x <= 1, "a number from 0 to 1"),
        ("top_k", "int", lambda x: x >= 0, "0 (off) or more"),
        ("min_p", "number", lambda x: 0 <= x <= 1, "a number from 0 to 1"),
        ("repeat_penalty", "number", lambda x: x > 0, "a number above 0 (1 = off)"),
        ("repeat_last_n", "int", lambda x: x >= -1, "-1 (all), 0 (off) or more"),
    ):
        v = ranged(body, name, kind, ok, want)
        if v is not None:
            out[name] = float(v) if kind == "number" else v
    seed = ranged(body, "seed", "int", lambda x: -1 <= x < 2**63, "-1 (random) or 0 .. 2**63-1")
    if seed is not None and seed >= 0:
        out["seed"] = seed
    return out


def _stop(body: dict) -> list[str]:
    v = body.get("stop")
    if v is None:
        return []
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise bad_request("'stop' must be a string or an array of strings", "stop", "invalid_type")
    if len(items) > MAX_STOP or any(len(s) > MAX_STOP_CHARS for s in items):
        raise bad_request(
            f"'stop' holds at most {MAX_STOP} strings of at most {MAX_STOP_CHARS} characters", "stop"
        )
    return [s for s in items if s]


def gen_options(body: dict, *, chat: bool) -> GenOptions:
    _refuse_unsupported(body, chat)
    names = ("max_completion_tokens", "max_tokens") if chat else ("max_tokens",)
    max_tokens = None
    for name in names:
        v = ranged(body, name, "int", lambda x: x >= 1, "1 or more")
        if v is not None and max_tokens is None:
            max_tokens = v
    stream_opts = typed(body, "stream_options", "dict", {})
    return GenOptions(
        sampling=_sampling(body),
        max_tokens=max_tokens,
        stop=_stop(body),
        stream=typed(body, "stream", "bool", False),
        include_usage=bool(typed(stream_opts, "include_usage", "bool", False, where="stream_options.")),
    )


def check_model(body: dict, names: tuple[str, ...]) -> str | None:
    """The `model` field, when given, must name the served model (its alias or file name)."""
    model = typed(body, "model", "str")
    if model is not None and model not in names:
        raise APIError(
            404,
            f"the model {model[:200]!r} is not served here; this server serves {names[0]!r} (GET /v1/models)",
            "model",
            "model_not_found",
        )
    return model


# ---------------------------------------------------------------- messages and tools
def _content(value: Any, where: str, placeholder: str | None) -> tuple[str | list[dict], list[bytes]]:
    """A message's content as one string, or with images (placeholder given: user messages with a
    projector loaded) a list of text parts and IMAGE_PART (the template writes the picture's place,
    core/model/chat_template); the images' bytes in order."""
    if value is None or isinstance(value, str):
        return value or "", []
    if not isinstance(value, list):
        raise bad_request(f"'{where}' must be a string or an array of parts", where, "invalid_type")
    text, images = [], []
    for j, part in enumerate(value):
        at = f"{where}[{j}]"
        if not isinstance(part, dict):
            raise bad_request(f"'{at}' must be an object", at, "invalid_type")
        kind = part.get("type")
        if kind == "text":
            text.append(typed(part, "text", "str", "", where=f"{at}."))
        elif kind == "image_url":
            if placeholder is None:
                raise bad_request(f"'{at}': only user messages can hold images", at, "unsupported")
            img = part.get("image_url")
            url = img.get("url") if isinstance(img, dict) else img
            if not isinstance(url, str):
                raise bad_request(
                    f"'{at}.image_url.url' must be a string", f"{at}.image_url.url", "invalid_type"
                )
            images.append(decode_image_url(url, f"{at}.image_url.url"))
            text.append(IMAGE_PART)
        else:
            raise bad_request(
                f"'{at}' has type {str(kind)[:40]!r}; use 'text' or 'image_url'", f"{at}.type", "unsupported"
            )
    if not images:
        return "".join(text), images
    return [p if p == IMAGE_PART else {"type": "text", "text": p} for p in text], images


def _arguments(value: Any, where: str) -> dict:
    """A tool call's arguments (OpenAI sends a JSON string) as the object the template renders."""
    if isinstance(value, dict):
        return value
    if isinstance(value, str):
        try:
            parsed = json.loads(value) if value.strip() else {}
        except (ValueError, RecursionError):
            raise bad_request(f"'{where}' is not valid JSON", where, "invalid_value") from None
        if isinstance(parsed, dict):
            return parsed
    raise bad_request(f"'{where}' must be a JSON object (or its text)", where, "invalid_type")


def _tool_calls(value: Any, where: str) -> list[dict]:
    if not isinstance(value, list):
        raise bad_request(f"'{where}' must be an array", where, "invalid_type")
    out = []
    for j, call in enumerate(value):
        at = f"{where}[{j}]"
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise bad_request(f"'{at}.function.name' must be a string", f"{at}.function.name", "invalid_type")
        args = _arguments(fn.get("arguments"), f"{at}.function.arguments")
        out.append({"type": "function", "function": {"name": fn["name"], "arguments": args}})
    return out


def parse_messages(value: Any, placeholder: str | None) -> tuple[list[dict], list[bytes]]:
    """OpenAI messages -> the template's messages and the images' bytes. placeholder: the text an
    image becomes (None: no projector loaded, images refused)."""
    if not isinstance(value, list) or not value:
        raise bad_request("'messages' must be a non-empty array", "messages", "invalid_type")
    msgs, images = [], []
    for i, m in enumerate(value):
        at = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad_request(f"'{at}' must be an object", at, "invalid_type")
        role = ROLE_ALIASES.get(m.get("role"), m.get("role"))
        if role not in ROLES:
            raise bad_request(
                f"'{at}.role' is {str(role)[:40]!r}; use system, user, assistant or tool", f"{at}.role"
            )
        if role == "user" and placeholder is None and _has_image(m.get("content")):
            raise bad_request(
                "this server has no vision projector loaded, so it cannot read images",
                f"{at}.content",
                "unsupported",
            )
        content, imgs = _content(m.get("content"), f"{at}.content", placeholder if role == "user" else None)
        out: dict[str, Any] = {"role": role, "content": content}
        if role == "assistant":
            reasoning = typed(m, "reasoning_content", "str", where=f"{at}.")
            if reasoning:
                out["reasoning_content"] = reasoning
            if m.get("tool_calls") is not None:
                out["tool_calls"] = _tool_calls(m["tool_calls"], f"{at}.tool_calls")
        msgs.append(out)
        images += imgs
    return msgs, images


def _has_image(content: Any) -> bool:
    return isinstance(content, list) and any(
        isinstance(p, dict) and p.get("type") == "image_url" for p in content
    )


def parse_tools(body: dict) -> tuple[list[dict] | None, str, str | None]:
    """(tools, tool_choice, the named function) checked against each other."""
    tools = typed(body, "tools", "list")
    names = []
    for i, t in enumerate(tools or []):
        at = f"tools[{i}]"
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(t, dict) or t.get("type", "function") != "function" or not isinstance(fn, dict):
            raise bad_request(
                f"'{at}' must be {{'type': 'function', 'function': {{...}}}}", at, "invalid_type"
            )
        name = fn.get("name")
        if not isinstance(name, str) or not TOOL_NAME_RE.fullmatch(name):
            raise bad_request(
                f"'{at}.function.name' must be 1-128 letters, digits, '_', '-', '.' or ':'",
                f"{at}.function.name",
                "invalid_value",
            )
        if fn.get("parameters") is not None and not isinstance(fn["parameters"], dict):
            raise bad_request(
                f"'{at}.function.parameters' must be a JSON schema object",
                f"{at}.function.parameters",
                "invalid_type",
            )
        names.append(name)
    choice = body.get("tool_choice")
    if choice is None:
        choice = "auto"
    if isinstance(choice, str):
        if choice not in TOOL_CHOICES:
            raise bad_request(
                f"'tool_choice' is {choice[:40]!r}; use auto, none, required or a function", "tool_choice"
            )
        if choice == "required" and not names:
            raise bad_request("'tool_choice' is required but no 'tools' are given", "tool_choice")
        return tools or None, choice, None
    fn = choice.get("function") if isinstance(choice, dict) else None
    name = fn.get("name") if isinstance(fn, dict) else None
    if not isinstance(name, str):
        raise bad_request(
            "'tool_choice' must be auto, none, required or {'type': 'function', 'function': {'name': ...}}",
            "tool_choice",
            "invalid_type",
        )
    if name not in names:
        raise bad_request(f"'tool_choice' names {name[:80]!r}, which is not among 'tools'", "tool_choice")
    return tools, "function", name


def parse_chat(body: Any, names: tuple[str, ...], placeholder: str | None) -> ChatRequest:
    """A /v1/chat/completions body, checked. names: the served model's accepted names."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object", None, "invalid_type")
    model = check_model(body, names)
    options = gen_options(body, chat=True)
    messages, images = parse_messages(body.get("messages"), placeholder)
    tools, choice, tool_name = parse_tools(body)
    kwargs = typed(body, "chat_template_kwargs", "dict", {})
    thinking = typed(kwargs, "enable_thinking", "bool", True, where="chat_template_kwargs.")
    return ChatRequest(model, messages, images, tools, choice, tool_name, thinking, options)


def parse_completion(body: Any, names: tuple[str, ...], n_vocab: int) -> CompletionRequest:
    """A /v1/completions body, checked: the prompt is text or token ids (one prompt)."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object", None, "invalid_type")
    model = check_model(body, names)
    options = gen_options(body, chat=False)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, list) and prompt and all(_is(t, "int") for t in prompt):
        ids = [int(t) for t in prompt]
        if any(not 0 <= t < n_vocab for t in ids):
            raise bad_request(f"'prompt' holds token ids outside 0..{n_vocab - 1}", "prompt", "invalid_value")
        return CompletionRequest(model, ids, options)
    if not isinstance(prompt, str):
        raise bad_request(
            "'prompt' must be a string or an array of token ids (one prompt per request)",
            "prompt",
            "invalid_type",
        )
    if not prompt:
        raise bad_request("'prompt' is empty", "prompt", "invalid_value")
    return CompletionRequest(model, prompt, options)
