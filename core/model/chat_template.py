"""Chat prompts from the GGUF's own template (the model's chat format, used by run, chat and `mtp fit`).

`render_chat` runs the template stored in the GGUF (`tokenizer.chat_template`) in a sandboxed
jinja2 environment with the helpers Qwen templates call (`raise_exception`, `tojson`, `strftime_now`).
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

from qwythos.core.errors import QwythosError
from qwythos.core.model.release import TURN_END_TOKENS

ROLES = ("system", "user", "assistant", "tool")
TURN_END = TURN_END_TOKENS

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
            f"the model's chat template failed: {e}",
            "`qwythos run --raw` sends the prompt without it; or fix the GGUF's tokenizer.chat_template",
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
