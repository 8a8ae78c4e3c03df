"""Ollama's Modelfile rules, as a parser and a writer of our own.

The rules were read from Ollama's `parser/parser.go` and `api/types.go` (ollama/ollama, 2026-08,
commit fb30760) and re-stated here; no code was copied. What `ollama create` does with a file:

- A line starts with a command word (ASCII letters, any case): FROM, PARAMETER, TEMPLATE, SYSTEM,
  ADAPTER, DRAFT, RENDERER, PARSER, LICENSE, MESSAGE, REQUIRES. Anything else is an error. `#` at
  the start of a line (after optional blanks) makes the line a comment.
- One blank (space or tab) separates the command from its value. PARAMETER is followed by a name
  of `[A-Za-z0-9_]`, one blank, the value. MESSAGE is followed by a role (system, user, assistant),
  one blank, the value.
- A value runs to the end of the line. A value that starts with `"` runs until a line whose value
  so far (blanks trimmed) ends with `"`; one that starts with `\"\"\"` until it ends with `\"\"\"`.
  The quotes are removed; blanks around the whole value are trimmed; control characters other
  than blanks and line breaks inside quotes are dropped. A value left open at the end of the file
  is an error.
- At least one FROM is required. FROM/DRAFT/ADAPTER paths that are not absolute (or `~`) are
  resolved against the Modelfile's folder.
- PARAMETER names are the JSON names of `api.Options` + `api.Runner`; each value must parse as the
  field's type (Go `strconv` rules); `stop` may repeat and collects a list. A few deprecated names
  only warn. REQUIRES must be a semantic version.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from qwythos.core.errors import QwythosError

#: Command words Ollama accepts (lower case); "from" is stored as "model".
COMMANDS: tuple[str, ...] = (
    "from",
    "license",
    "template",
    "system",
    "adapter",
    "draft",
    "renderer",
    "parser",
    "parameter",
    "message",
    "requires",
)
MESSAGE_ROLES: tuple[str, ...] = ("system", "user", "assistant")

#: PARAMETER name -> value type (api.Options and api.Runner JSON names). "list" collects strings.
PARAMETER_TYPES: dict[str, str] = {
    "num_keep": "int",
    "seed": "int",
    "num_predict": "int",
    "top_k": "int",
    "top_p": "float",
    "min_p": "float",
    "typical_p": "float",
    "repeat_last_n": "int",
    "temperature": "float",
    "repeat_penalty": "float",
    "presence_penalty": "float",
    "frequency_penalty": "float",
    "stop": "list",
    "num_ctx": "int",
    "num_batch": "int",
    "num_gpu": "int",
    "main_gpu": "int",
    "use_mmap": "bool",
    "num_thread": "int",
    "draft_num_predict": "int",
}
#: Names Ollama still parses but ignores with a warning.
DEPRECATED_PARAMETERS: tuple[str, ...] = (
    "penalize_newline",
    "low_vram",
    "f16_kv",
    "logits_all",
    "vocab_only",
    "use_mlock",
    "mirostat",
    "mirostat_tau",
    "mirostat_eta",
)
#: Commands whose value is a local path (or, for FROM, a model name when no such path exists).
PATH_COMMANDS: tuple[str, ...] = ("model", "draft", "adapter")

_BLANKS = " \t"
_BREAKS = "\r\n"
_INT_RE = re.compile(r"[+-]?[0-9]+")
_FLOAT_RE = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[+-]?(?i:inf|infinity|nan)")
_BOOL_VALUES = {
    **dict.fromkeys(("1", "t", "T", "TRUE", "true", "True"), True),
    **dict.fromkeys(("0", "f", "F", "FALSE", "false", "False"), False),
}
_SEMVER_RE = re.compile(
    r"v?(0|[1-9][0-9]*)(?:\.(0|[1-9][0-9]*)(?:\.(0|[1-9][0-9]*)"
    r"(?:-[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?)?)?"
)


@dataclass(frozen=True)
class Command:
    """One Modelfile command as Ollama stores it: `name` is lower case ("model" for FROM, the
    parameter name for PARAMETER), `args` the unquoted value ("role: text" for MESSAGE)."""

    name: str
    args: str


@dataclass
class ModelfileRequest:
    """What `ollama create` would send to the server for a parsed Modelfile."""

    model: str
    model_path: Path | None
    drafts: list[Path] = field(default_factory=list)
    #: GGUFs of later FROM lines: Ollama merges every FROM path into the request's files and
    #: server/create.go takes a clip GGUF among them as the vision projector
    files: list[Path] = field(default_factory=list)
    template: str | None = None
    system: str | None = None
    renderer: str | None = None
    parser: str | None = None
    requires: str | None = None
    licenses: list[str] = field(default_factory=list)
    messages: list[tuple[str, str]] = field(default_factory=list)
    parameters: dict[str, object] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def _error(source: str, line: int, msg: str) -> QwythosError:
    return QwythosError(
        f"{source} (line {line}): {msg}", "follow Ollama's Modelfile syntax (docs/modelfile.mdx)"
    )


def _unquote(value: str) -> tuple[str, bool]:
    """Strip one level of quotes; False when a quote is still open."""
    if value.startswith('"""'):
        if len(value) >= 6 and value.endswith('"""'):
            return value[3:-3], True
        return "", False
    if value.startswith('"'):
        if len(value) >= 2 and value.endswith('"'):
            return value[1:-1], True
        return "", False
    return value, True


def parse_modelfile(text: str, source: str = "Modelfile") -> list[Command]:
    """Parse `text` by Ollama's rules; raise QwythosError (with the line) where `ollama create` fails."""
    if text.startswith("\ufeff"):
        text = text[1:]
    commands: list[Command] = []
    n = len(text)
    i = 0
    line = 1

    def word(start: int, allowed: str) -> tuple[str, int]:
        j = start
        while j < n and text[j].isascii() and (text[j].isalpha() or text[j] in allowed):
            j += 1
        return text[start:j], j

    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
            i += 1
            continue
        if c in _BLANKS or c == "\r":
            i += 1
            continue
        if c == "#":
            while i < n and text[i] not in _BREAKS:
                i += 1
            continue
        # command word: the first character, then letters, then one blank
        name, j = word(i + 1, "")
        name = c + name
        if j >= n:
            raise _error(source, line, f"unexpected end of file after {name!r}")
        if name.lower() not in COMMANDS:
            raise _error(source, line, f"unknown command {name!r}: must be one of {', '.join(COMMANDS)}")
        if text[j] not in _BLANKS:
            raise _error(source, line, f"{name} must be followed by a blank and its value")
        kind = name.lower()
        i = j + 1
        role = ""
        if kind == "parameter":
            pname, j = word(i, "0123456789_")
            if j >= n or text[j] not in _BLANKS:
                raise _error(
                    source, line, "PARAMETER needs a name of [A-Za-z0-9_] and one blank before its value"
                )
            cmd_name, i = pname, j + 1
        elif kind == "message":
            role, j = word(i, "")
            if j >= n or text[j] not in _BLANKS:
                raise _error(source, line, "MESSAGE needs a role and one blank before its text")
            if role not in MESSAGE_ROLES:
                raise _error(source, line, f"message role must be one of {', '.join(MESSAGE_ROLES)}")
            cmd_name, i = "message", j + 1
        else:
            cmd_name = "model" if kind == "from" else kind
        # the value: to the end of the line, or on while a quote is open
        start_line = line
        buf: list[str] = []
        while True:
            if i >= n:
                value, ok = _unquote("".join(buf).strip())
                if not ok:
                    raise _error(source, start_line, "a quoted value is never closed")
                break
            ch = text[i]
            if ch in _BREAKS:
                value, ok = _unquote("".join(buf).strip())
                if ok:
                    break
                buf.append(ch)
                if ch == "\n":
                    line += 1
            elif ch in _BLANKS or ch.isprintable():
                buf.append(ch)
            i += 1
        commands.append(Command(cmd_name, f"{role}: {value}" if role else value))

    if not any(cmd.name == "model" for cmd in commands):
        raise QwythosError(f"{source} has no FROM line", "add `FROM ./MODEL.gguf`")
    return commands


def _typed(name: str, kind: str, value: str, source: str) -> object:
    bad = QwythosError(f"{source}: PARAMETER {name} {value!r} is not a valid {kind}", "fix the value")
    if kind == "int":
        if not _INT_RE.fullmatch(value):
            raise bad
        return int(value)
    if kind == "float":
        if not _FLOAT_RE.fullmatch(value):
            raise bad
        f = float(value)
        if math.isfinite(f) and abs(f) > 3.4028234663852886e38:
            raise bad  # out of float32 range: strconv.ParseFloat(.., 32) fails
        return f
    if kind == "bool":
        if value not in _BOOL_VALUES:
            raise bad
        return _BOOL_VALUES[value]
    return value


def _resolve(value: str, folder: Path) -> Path:
    p = Path(value).expanduser() if value.startswith("~") else Path(value)
    # Go's filepath.Join cleans the path lexically ("a/b/../c" -> "a/c") before it is opened.
    return Path(os.path.normpath(p if p.is_absolute() else (folder / p)))


def to_request(commands: list[Command], folder: Path, source: str = "Modelfile") -> ModelfileRequest:
    """Apply `ollama create`'s checks to parsed commands: parameter names/types, REQUIRES, paths."""
    req = ModelfileRequest(model="", model_path=None)
    for cmd in commands:
        if cmd.name == "model" and req.model:
            path = _resolve(cmd.args, folder)
            if not path.exists():
                raise QwythosError(f"{source}: FROM {cmd.args} does not exist", "fix the path")
            req.files.append(path)
        elif cmd.name == "model":
            path = _resolve(cmd.args, folder)
            req.model = cmd.args
            req.model_path = path if path.exists() else None
        elif cmd.name in ("draft", "adapter"):
            path = _resolve(cmd.args, folder)
            if not path.exists():
                raise QwythosError(f"{source}: {cmd.name.upper()} {cmd.args} does not exist", "fix the path")
            req.drafts.append(path)
        elif cmd.name in ("template", "system", "renderer", "parser"):
            setattr(req, cmd.name, cmd.args)
        elif cmd.name == "license":
            req.licenses.append(cmd.args)
        elif cmd.name == "requires":
            if not _SEMVER_RE.fullmatch(cmd.args):
                raise QwythosError(f"{source}: REQUIRES {cmd.args!r} is not a version", "use e.g. 0.17.1")
            req.requires = cmd.args.removeprefix("v")
        elif cmd.name == "message":
            role, _, text = cmd.args.partition(": ")
            req.messages.append((role, text))
        elif cmd.name in DEPRECATED_PARAMETERS:
            req.warnings.append(f"parameter {cmd.name} is deprecated")
        else:
            kind = PARAMETER_TYPES.get(cmd.name)
            if kind is None:
                raise QwythosError(
                    f"{source}: unknown parameter '{cmd.name}'",
                    f"Ollama accepts: {', '.join(PARAMETER_TYPES)}",
                )
            value = _typed(cmd.name, kind, cmd.args, source)
            if kind == "list":
                req.parameters.setdefault(cmd.name, []).append(value)  # type: ignore[union-attr]
            else:
                req.parameters[cmd.name] = value
    return req


def _quote(value: str) -> str:
    """Quote a value only when Ollama needs it, and only in a way that parses back to `value`."""
    needs = any(c in value for c in _BREAKS) or value != value.strip() or value.startswith('"') or not value
    if not needs:
        return value
    for q in ('"""', '"'):
        quoted = f"{q}{value}{q}"
        if _roundtrips(quoted, value):
            return quoted
    raise QwythosError(
        f"cannot write the value {value[:40]!r}... in a Modelfile",
        "a line of it ends with a quote that would end the value early; reword it",
    )


def _roundtrips(quoted: str, value: str) -> bool:
    try:
        cmds = parse_modelfile(f"FROM x\nSYSTEM {quoted}\n")
    except QwythosError:
        return False
    return len(cmds) == 2 and cmds[1].args == value


def format_command(cmd: Command) -> str:
    """One command as Modelfile text (upper-case command word)."""
    if cmd.name == "model":
        return f"FROM {_quote(cmd.args)}"
    if cmd.name in ("license", "template", "system", "adapter", "renderer", "parser", "requires", "draft"):
        return f"{cmd.name.upper()} {_quote(cmd.args)}"
    if cmd.name == "message":
        role, _, text = cmd.args.partition(": ")
        return f"MESSAGE {role} {_quote(text)}"
    return f"PARAMETER {cmd.name} {_quote(cmd.args)}"


def render_modelfile(commands: list[Command], header: list[str] = ()) -> str:
    """Comment header lines + commands, one per line, checked to parse back to the same commands."""
    lines = [f"# {h}".rstrip() for h in header]
    if header:
        lines.append("")
    lines += [format_command(c) for c in commands]
    text = "\n".join(lines) + "\n"
    if parse_modelfile(text) != list(commands):  # never write a file Ollama would read differently
        raise QwythosError("internal error: the Modelfile does not parse back to its commands", None)
    return text
