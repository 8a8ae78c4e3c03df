"""A reply split into reasoning and answer while it streams, so that the deltas join to exactly
what the finished reply's `parse_output` says (its reasoning and answer are stripped, and the
answer ends where the first `<tool_call>` begins).

`ThinkStream` (runtime/chat.py) cuts the text at `</think>`; each channel then drops leading
whitespace, holds trailing whitespace back until more text follows, and the answer channel holds
back what could be the start of `<tool_call>` and closes at it (the calls come as `tool_calls`).
"""

from __future__ import annotations

from qwythos.runtime.server.backend import ThinkStream, partial_suffix

TOOL_CALL_OPEN = "<tool_call>"
#: The delta field each ThinkStream part streams into (OpenAI's `content`, llama-server's
#: and DeepSeek's `reasoning_content`).
FIELDS = {"reasoning": "reasoning_content", "answer": "content"}


class _Channel:
    """One part of the reply, trimmed as `str.strip` would trim the whole, cut at `cut`."""

    def __init__(self, cut: str | None = None) -> None:
        self.cut = cut
        self.started = False
        self.closed = False
        self.space = ""  # trailing whitespace held back
        self.held = ""  # a possible beginning of `cut`

    def feed(self, text: str) -> str:
        if self.closed:
            return ""
        text, self.held = self.held + text, ""
        if self.cut:
            i = text.find(self.cut)
            if i >= 0:
                text, self.closed = text[:i], True
            else:
                k = partial_suffix(text, self.cut)
                if k:
                    text, self.held = text[:-k], text[-k:]
        return self._trim(text)

    def _trim(self, text: str) -> str:
        if not self.started:
            text = text.lstrip()
            if not text:
                return ""
            self.started = True
        body = text.rstrip()
        if not body:
            self.space += text
            return ""
        out, self.space = self.space + body, text[len(body) :]
        return out

    def flush(self) -> str:
        text, self.held = self.held, ""
        return "" if self.closed else self._trim(text)


class StreamSplit:
    """Reply text in, `{"reasoning_content": ...}` / `{"content": ...}` deltas out."""

    def __init__(self, think_open: bool) -> None:
        self._think = ThinkStream(thinking=think_open)
        self._channels = {"reasoning": _Channel(), "answer": _Channel(cut=TOOL_CALL_OPEN)}

    def _deltas(self, pieces: list[tuple[str, str]]) -> list[dict]:
        out = []
        for kind, text in pieces:
            sent = self._channels[kind].feed(text)
            if sent:
                out.append({FIELDS[kind]: sent})
        return out

    def feed(self, piece: str) -> list[dict]:
        return self._deltas(self._think.feed(piece))

    def flush(self) -> list[dict]:
        """The end of the reply: what the splitter and the channels still hold."""
        out = self._deltas(self._think.flush())
        for kind, ch in self._channels.items():
            sent = ch.flush()
            if sent:
                out.append({FIELDS[kind]: sent})
        return out
