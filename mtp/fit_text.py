"""The text `mtp fit` reads: the bundled mixed calibration set and the user's own files.

The bundled set (data/fit-calibration.jsonl, one JSON document a line) mixes prose, code and
reasoning-style chats. A chat is rendered with the model's own chat template (the GGUF's
`tokenizer.chat_template`), `<think>` block included, so the head sees what the model really
reads and writes; data/calibration.txt (code and comments) is added as one more document.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from qwythos.core.errors import QwythosError
from qwythos.core.model.chat_template import render_chat
from qwythos.core.model.release import CALIBRATION_TEXT

DATA = Path(__file__).resolve().parents[1] / "data"
BUNDLED = DATA / "fit-calibration.jsonl"
EXTRA = CALIBRATION_TEXT


@dataclass
class Document:
    source: str  # file name (and line for the bundled set)
    kind: str  # prose | code | chat | file
    text: str


def bundled_documents(chat_template: str | None) -> list[Document]:
    """The bundled calibration set, chats rendered with `chat_template`."""
    docs = []
    for i, line in enumerate(BUNDLED.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        d = json.loads(line)
        where = f"{BUNDLED.name}:{i}"
        if d["kind"] == "chat":
            text = render_chat(chat_template, d["messages"], add_generation_prompt=False)
        else:
            text = d["text"]
        docs.append(Document(where, d["kind"], text))
    docs.append(Document(EXTRA.name, "code", EXTRA.read_text(encoding="utf-8")))
    return docs


def file_documents(paths: list[Path]) -> list[Document]:
    """User text files, each one document; a missing or unreadable file is named."""
    docs = []
    for p in paths:
        p = Path(p)
        if not p.is_file():
            raise QwythosError(f"text file {p} does not exist", "pass existing UTF-8 text files with --text")
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise QwythosError(f"{p} is not UTF-8 text", "convert it to UTF-8 or leave it out") from None
        if not text.strip():
            raise QwythosError(f"{p} is empty", "pass a file with text in it")
        docs.append(Document(str(p), "file", text))
    return docs


def documents(
    paths: list[Path] | None, chat_template: str | None, *, bundled: bool | None = None
) -> list[Document]:
    """--text files (bundled set only when asked) or, without any, the bundled set."""
    files = file_documents(paths or [])
    use_bundled = bundled if bundled is not None else not files
    return (bundled_documents(chat_template) if use_bundled else []) + files
