"""Chat prompts from the GGUF's own template, and the model's output split into its parts.

The prompt is rendered by `qwythos.core.model.chat_template` (re-exported here).

`parse_output` splits a finished reply into reasoning (`<think>...</think>`, also when the opening
tag was already in the prompt), the answer, and tool calls. A `<tool_call>` body is either JSON
(`{"name": ..., "arguments": {...}}`) or Qwen3.5's XML form
`<function=name><parameter=k>value</parameter>...</function>`. XML parameter values are text; they
are converted by the JSON schema of the tool that was offered (as the Qwen3-Coder style parsers
do): a parameter typed `string` stays exactly the text the model wrote (`12345` stays `"12345"`,
`null` stays `"null"`), `integer`/`number`/`boolean`/`object`/`array` are parsed and checked, and a
value that does not fit its type is kept as text and reported. Without a schema a value stays text.
Anything irregular (a malformed or unclosed call, a second `<function=...>` in one `<tool_call>`,
an unclosed parameter, a function that was not offered) is reported in `errors`, never raised.

`ThinkStream` is the streaming side, for a display: fed the text as it is generated, it hands back
reasoning and answer pieces, holding back only what could be the start of `</think>`, and `flush()`
returns what it still holds when the reply ends (max tokens, Ctrl-C, end of turn inside `<think>`).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field

from qwythos.core.model.chat_template import TURN_END, load_tools, render_chat  # noqa: F401 - re-exported

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


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
_FUNC_RE = re.compile(r"<function=([^>\s]+)>(.*?)(?:</function>|(?=<function=)|$)", re.S)
_PARAM_RE = re.compile(r"<parameter=([^>\s]+)>\n?(.*?)\n?</parameter>", re.S)
_INT_RE = re.compile(r"[+-]?[0-9]+")


# ------------------------------------------------------------------------------ tool schemas


def tool_schemas(tools: list[dict] | None) -> dict[str, dict]:
    """Function name -> its `parameters` JSON schema, from OpenAI-style tool objects
    (`{"type": "function", "function": {...}}`) or bare function objects."""
    out: dict[str, dict] = {}
    for t in tools or []:
        fn = t.get("function", t) if isinstance(t, dict) else None
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            params = fn.get("parameters")
            out[fn["name"]] = params if isinstance(params, dict) else {}
    return out


def _types(schema: object) -> list[str]:
    """The JSON types a property schema allows (`type` as a string or list, anyOf/oneOf, enum)."""
    if not isinstance(schema, dict):
        return []
    t = schema.get("type")
    types = [t] if isinstance(t, str) else [x for x in t if isinstance(x, str)] if isinstance(t, list) else []
    for key in ("anyOf", "oneOf"):
        for sub in schema.get(key) or []:
            types += _types(sub)
    if not types and isinstance(schema.get("enum"), list) and schema["enum"]:
        kinds = {type(v) for v in schema["enum"]}
        if kinds == {str}:
            types = ["string"]
    return types


def _typed_value(text: str, types: list[str]) -> tuple[object, str | None]:
    """`text` converted to the first of `types` it fits; (text, why) when it fits none."""
    stripped = text.strip()
    if "null" in types and stripped == "null":
        return None, None
    if "string" in types or not types:
        return text, None
    for t in types:
        if t == "integer" and _INT_RE.fullmatch(stripped):
            return int(stripped), None
        if t == "number":
            try:
                v = json.loads(stripped)
            except ValueError:
                continue
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                return v, None
        if t == "boolean" and stripped in ("true", "false"):
            return stripped == "true", None
        if t in ("object", "array"):
            try:
                v = json.loads(stripped)
            except ValueError:
                continue
            if isinstance(v, dict if t == "object" else list):
                return v, None
    return text, f"is not {' or '.join(types)}"


# ------------------------------------------------------------------------------ tool calls


def _xml_call(name: str, inner: str, schema: dict | None, where: str, errors: list[str]) -> ToolCall:
    props = (schema or {}).get("properties") or {}
    args: dict = {}
    for key, raw in _PARAM_RE.findall(inner):
        if key in args:
            errors.append(f"{where}: parameter {key!r} is given twice; the last value is used")
        if schema is not None and key not in props:
            errors.append(f"{where}: parameter {key!r} is not in the schema of {name}; kept as text")
        value, why = _typed_value(raw, _types(props.get(key)))
        if why:
            errors.append(f"{where}: parameter {key!r} = {raw.strip()[:80]!r} {why}; kept as text")
        args[key] = value
    opened = inner.count("<parameter=")
    if opened > len(_PARAM_RE.findall(inner)):
        errors.append(f"{where}: a <parameter=...> of {name} is not closed with </parameter>")
    return ToolCall(name, args)


def _json_call(body: str) -> ToolCall:
    obj = json.loads(body)  # raises ValueError
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        raise ValueError("no function name")
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        args = json.loads(args)
    if not isinstance(args, dict):
        raise ValueError("arguments are not an object")
    return ToolCall(obj["name"], args)


def parse_tool_call(
    body: str, tools: list[dict] | None = None, *, where: str = "tool call", errors: list[str] | None = None
) -> list[ToolCall]:
    """The calls in one `<tool_call>` body. The form is decided by how the body starts: `{` is JSON
    (whatever its strings contain), `<function=` is XML. Raises ValueError when malformed; other
    irregularities go to `errors`."""
    errors = errors if errors is not None else []
    body = body.strip()
    schemas = tool_schemas(tools) if tools is not None else None
    if body.startswith("{"):
        calls = [_json_call(body)]
    elif body.startswith("<function="):
        funcs = _FUNC_RE.findall(body)
        if len(funcs) > 1:
            errors.append(
                f"{where} holds {len(funcs)} <function=...> blocks (one per <tool_call> is the format); "
                "each is reported as its own call"
            )
        calls = [
            _xml_call(name, inner, None if schemas is None else schemas.get(name), where, errors)
            for name, inner in funcs
        ]
    else:
        raise ValueError("neither JSON nor <function=...>")
    if schemas is not None:
        for c in calls:
            if c.name not in schemas:
                errors.append(f"{where} calls {c.name!r}, which is not among the offered tools")
    return calls


def parse_output(text: str, *, think_open: bool = False, tools: list[dict] | None = None) -> ChatOutput:
    """Split a reply; think_open: the prompt already ended with the opening `<think>` tag;
    tools: the tools offered in the prompt (their schemas type the XML call parameters)."""
    for end in TURN_END:
        text = text.split(end)[0]
    reasoning = ""
    finished = True
    rest = text
    if think_open or rest.lstrip().startswith(THINK_OPEN):
        if not think_open:
            rest = rest.lstrip()[len(THINK_OPEN) :]
        if THINK_CLOSE in rest:
            reasoning, rest = rest.split(THINK_CLOSE, 1)
        elif "<tool_call>" in rest:  # tolerated: the model skipped the closing tag
            reasoning, rest = rest.split("<tool_call>", 1)
            rest = "<tool_call>" + rest
        else:
            reasoning, rest, finished = rest, "", False
    out = ChatOutput(reasoning.strip(), "", thinking_finished=finished)
    for i, m in enumerate(_CALL_RE.finditer(rest)):
        where = f"tool call {i + 1}"
        if not m.group(0).endswith("</tool_call>"):
            out.errors.append(f"{where} is not closed with </tool_call>")
        try:
            out.tool_calls += parse_tool_call(m.group(1), tools, where=where, errors=out.errors)
        except (ValueError, TypeError) as e:
            out.errors.append(f"{where} is malformed ({e}): {m.group(1).strip()[:200]}")
    out.answer = _CALL_RE.sub("", rest).strip()
    return out


def assistant_message(out: ChatOutput) -> dict:
    """The assistant turn to keep in a conversation's history: answer, reasoning and the tool calls
    (OpenAI shape, arguments as an object, which the Qwen3.5 template renders back as XML)."""
    msg: dict = {"role": "assistant", "content": out.answer, "reasoning_content": out.reasoning}
    if out.tool_calls:
        msg["tool_calls"] = [
            {"type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in out.tool_calls
        ]
    return msg


# ------------------------------------------------------------------------------ streaming display


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of `text` that is a proper beginning of `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


class ThinkStream:
    """Streamed reply text -> ("reasoning" | "answer", text) pieces for display.

    `thinking`: the prompt ended inside `<think>` (Qwen3.5's template opens it). A reply that
    starts with `<think>` itself switches to reasoning too. The newlines right after `</think>` are
    not shown, however the text is cut into pieces. Call `flush()` once when generation ends.
    """

    def __init__(self, thinking: bool) -> None:
        self.thinking = thinking
        self.thinking_finished = not thinking
        self._buf = ""
        self._at_answer_start = True  # newlines here are dropped; a leading <think> is recognised

    def feed(self, piece: str) -> list[tuple[str, str]]:
        self._buf += piece
        out: list[tuple[str, str]] = []
        while self._buf:
            if self.thinking:
                if THINK_CLOSE in self._buf:
                    before, self._buf = self._buf.split(THINK_CLOSE, 1)
                    if before:
                        out.append(("reasoning", before))
                    self.thinking, self.thinking_finished = False, True
                    self._at_answer_start = True
                    continue
                keep = _partial_suffix(self._buf, THINK_CLOSE)
                text, self._buf = self._buf[: len(self._buf) - keep], self._buf[len(self._buf) - keep :]
                if text:
                    out.append(("reasoning", text))
                break
            if self._at_answer_start:
                self._buf = self._buf.lstrip("\r\n")
                if not self._buf:
                    break
                if self._buf.startswith(THINK_OPEN):
                    self._buf = self._buf[len(THINK_OPEN) :].lstrip("\r\n")
                    self.thinking, self.thinking_finished = True, False
                    continue
                if THINK_OPEN.startswith(self._buf):
                    break  # could still become <think>: wait for more
                self._at_answer_start = False
            out.append(("answer", self._buf))
            self._buf = ""
        return out

    def flush(self) -> list[tuple[str, str]]:
        """What is still held back, as the part it belongs to (the reply ended)."""
        text, self._buf = self._buf, ""
        if not text or (not self.thinking and self._at_answer_start and not text.strip("\r\n")):
            return []
        return [("reasoning" if self.thinking else "answer", text)]
