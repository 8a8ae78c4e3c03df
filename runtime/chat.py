"""Chat prompts from the GGUF's own template, and the model's output split into its parts.

`render_chat` runs the template stored in the GGUF (`tokenizer.chat_template`) in a sandboxed
jinja2 environment with the helpers Qwen templates call (`raise_exception`, `tojson`, `strftime_now`).
`parse_output` splits a reply into reasoning (`<think>...</think>`, also when the opening tag was
already in the prompt), the answer, and tool calls (`<tool_call>...</tool_call>` holding either
JSON `{"name": ..., "arguments": {...}}` or Qwen3.5's `<function=name><parameter=k>v</parameter>`).
A malformed call is reported in `errors`, never raised.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from qwythos.errors import QwythosError
from qwythos.runtime.sampling import CARD_DEFAULTS

#: The model card's defaults (temperature 0.6, top-p 0.95, top-k 20, repetition penalty 1.05).
CARD_SAMPLING = CARD_DEFAULTS
ROLES = ("system", "user", "assistant", "tool")
TURN_END = ("<|im_end|>", "<|endoftext|>")

# Used only when a GGUF carries no template: Qwen's ChatML with the thinking opener.
FALLBACK_TEMPLATE = (
    "{%- for m in messages %}{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n<think>\\n' }}{%- endif %}"
)


def _raise(msg: str):
    raise QwythosError(f"the chat template refused the messages: {msg}", "check the roles and order")


def _env():
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: _dt.datetime.now().strftime(fmt)
    env.filters["tojson"] = lambda v, indent=None, ensure_ascii=False: json.dumps(
        v, indent=indent, ensure_ascii=ensure_ascii
    )
    return env


def check_messages(messages: list[dict]) -> list[dict]:
    out = []
    for i, m in enumerate(messages):
        role = m.get("role")
        if role not in ROLES:
            raise QwythosError(f"message {i} has role {role!r}", f"use one of {', '.join(ROLES)}")
        m = dict(m)
        if m.get("content") is None:
            m["content"] = ""
        out.append(m)
    return out


def render_chat(
    template: str | None,
    messages: list[dict],
    *,
    tools: list[dict] | None = None,
    add_generation_prompt: bool = True,
    enable_thinking: bool = True,
    bos_token: str = "",
    eos_token: str = "<|im_end|>",
) -> str:
    """The prompt text for `messages` under the model's chat template."""
    from jinja2 import TemplateError

    try:
        tpl = _env().from_string(template or FALLBACK_TEMPLATE)
        return tpl.render(
            messages=check_messages(messages),
            tools=tools or None,
            add_generation_prompt=add_generation_prompt,
            enable_thinking=enable_thinking,
            bos_token=bos_token,
            eos_token=eos_token,
        )
    except TemplateError as e:
        raise QwythosError(
            f"the model's chat template failed: {e}", "pass --no-template or fix the GGUF"
        ) from e


def load_tools(path: str | Path) -> list[dict]:
    """Tool specs for the chat template from a JSON file: a list of OpenAI-style tool objects
    (`{"type": "function", "function": {"name", "description", "parameters"}}`) or `{"tools": [...]}`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise QwythosError(f"tools file {path} not found", "pass a JSON file with --tools") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise QwythosError(f"{path} is not readable JSON ({e})", "write the tools as a JSON list") from None
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


@dataclass
class ToolCall:
    name: str
    arguments: dict


@dataclass
class ChatOutput:
    reasoning: str
    answer: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    thinking_finished: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


_CALL_RE = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.S)
_FUNC_RE = re.compile(r"<function=([^>\s]+)>(.*?)(?:</function>|$)", re.S)
_PARAM_RE = re.compile(r"<parameter=([^>\s]+)>\n?(.*?)\n?</parameter>", re.S)


def _parse_value(v: str):
    try:
        return json.loads(v)
    except ValueError:
        return v


def parse_tool_call(body: str) -> ToolCall:
    """One `<tool_call>` body in JSON or `<function=...>` form; ValueError when malformed."""
    body = body.strip()
    fm = _FUNC_RE.search(body)
    if fm:
        args = {k: _parse_value(v) for k, v in _PARAM_RE.findall(fm.group(2))}
        return ToolCall(fm.group(1), args)
    obj = json.loads(body)  # raises ValueError
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        raise ValueError("no function name")
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        args = json.loads(args)
    if not isinstance(args, dict):
        raise ValueError("arguments are not an object")
    return ToolCall(obj["name"], args)


def parse_output(text: str, *, think_open: bool = False) -> ChatOutput:
    """Split a reply; think_open: the prompt already ended with the opening `<think>` tag."""
    for end in TURN_END:
        text = text.split(end)[0]
    reasoning = ""
    finished = True
    rest = text
    if think_open or rest.lstrip().startswith("<think>"):
        if not think_open:
            rest = rest.lstrip()[len("<think>") :]
        if "</think>" in rest:
            reasoning, rest = rest.split("</think>", 1)
        elif "<tool_call>" in rest:  # tolerated: the model skipped the closing tag
            reasoning, rest = rest.split("<tool_call>", 1)
            rest = "<tool_call>" + rest
        else:
            reasoning, rest, finished = rest, "", False
    out = ChatOutput(reasoning.strip(), "", thinking_finished=finished)
    for i, m in enumerate(_CALL_RE.finditer(rest)):
        if not m.group(0).endswith("</tool_call>"):
            out.errors.append(f"tool call {i + 1} is not closed with </tool_call>")
        try:
            out.tool_calls.append(parse_tool_call(m.group(1)))
        except (ValueError, TypeError) as e:
            out.errors.append(f"tool call {i + 1} is malformed ({e}): {m.group(1).strip()[:200]}")
    out.answer = _CALL_RE.sub("", rest).strip()
    return out
