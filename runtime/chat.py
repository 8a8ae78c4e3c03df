"""Chat prompts from the GGUF's own template, and the model's output split into its parts.

The prompt is rendered by `qwythos.core.chat_template` (re-exported here).
`parse_output` splits a reply into reasoning (`<think>...</think>`, also when the opening tag was
already in the prompt), the answer, and tool calls (`<tool_call>...</tool_call>` holding either
JSON `{"name": ..., "arguments": {...}}` or Qwen3.5's `<function=name><parameter=k>v</parameter>`).
A malformed call is reported in `errors`, never raised.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field

from qwythos.core.chat_template import TURN_END, load_tools, render_chat  # noqa: F401 - re-exported
from qwythos.runtime.sampling import CARD_DEFAULTS

#: The model card's defaults (temperature 0.6, top-p 0.95, top-k 20, repetition penalty 1.05).
CARD_SAMPLING = CARD_DEFAULTS


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
