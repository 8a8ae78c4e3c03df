"""A rendered prompt into token ids: only what the chat template itself wrote may become a control
token.

`core/model/chat_template.render_prompt` returns a `Prompt` whose user, system, tool and file text
had every special token's text (`<|im_end|>`, `<|im_start|>`, `<tool_call>` ...) swapped for a
sentinel. Here the template's text is tokenized with special tokens parsed, and each protected
text as plain text. llama.cpp matches USER_DEFINED tokens (Qwen's `<think>`, `<tool_call>` ...)
even with parse_special off, so a protected text that still yields a special token is cut before
its second character: `<` + `tool_call>` are ordinary text tokens.

`PromptTokens` says what came out: the ids, how many of them are special tokens (all written by
the template) and how many texts were protected (`run --json` shows both).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from qwythos.core.model.chat_template import Prompt, render_prompt

if TYPE_CHECKING:
    from qwythos.core.llamacpp.handles import Model


@dataclass
class PromptTokens:
    tokens: list[int]
    n_special: int  # control and user-defined tokens among `tokens`: the template's own
    n_protected: int  # special-token texts from users, tools or files, tokenized as text

    @classmethod
    def counted(cls, model: Model, tokens: list[int], n_protected: int) -> PromptTokens:
        return cls(tokens, sum(1 for t in tokens if model.is_special(t)), n_protected)

    def to_dict(self) -> dict:
        return {
            "tokens": len(self.tokens),
            "special_tokens": self.n_special,
            "protected_texts": self.n_protected,
        }


def render_for(model: Model, messages: list[dict], **kw) -> Prompt:  # noqa: ANN003 - render_prompt's
    """`render_prompt` under the model's own template, protecting its vocabulary's special-token
    texts (control tokens in every message; user-defined ones such as <think> outside the
    assistant's), errors naming the file."""
    info = model.info
    return render_prompt(
        info.chat_template,
        messages,
        control_texts=info.control_texts,
        markup_texts=info.markup_texts,
        source=model.path,
        **kw,
    )


def text_tokens(model: Model, text: str) -> list[int]:
    """`text` as ordinary text tokens: no control or user-defined token, whatever it spells."""
    toks = model.tokenize(text, parse_special=False)
    if len(text) < 2 or not any(model.is_special(t) for t in toks):
        return toks
    return model.tokenize(text[:1], parse_special=False) + text_tokens(model, text[1:])


def tokenize_prompt(model: Model, prompt: Prompt | str) -> PromptTokens:
    """The ids of a rendered prompt. A plain string is template text throughout (a raw prompt the
    user wrote to include control tokens, or text the model wrote)."""
    if isinstance(prompt, str):
        prompt = Prompt(prompt)
    tokens: list[int] = []
    for text, literal in prompt.pieces():
        tokens += text_tokens(model, text) if literal else model.tokenize(text, parse_special=True)
    return PromptTokens.counted(model, tokens, len(prompt.literals))
