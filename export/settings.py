"""The two load settings every export writes, checked once: the context and the MTP draft length.

Ollama, LM Studio and KoboldCpp configure a context (`START_CONTEXT` unless told, never past what
the file was trained for) and an MTP draft length (`DEFAULT_DRAFT` for a file that carries the head,
0 without it, at most `MAX_DRAFT`); drafting with a file that has no head is refused, naming the
tool. vLLM and SGLang serve a folder, not a GGUF: they check the draft length with `check_draft`.
"""

from __future__ import annotations

from qwythos.core.drafting.lengths import DEFAULT_DRAFT, MAX_DRAFT
from qwythos.core.errors import QwythosError
from qwythos.core.model.release import START_CONTEXT
from qwythos.core.model.summary import GGUFSummary


def check_draft(draft: int) -> int:
    """`--draft` as given, once it is a length the runtime and the engines take (0 = off)."""
    if not 0 <= draft <= MAX_DRAFT:
        raise QwythosError(
            f"--draft {draft} is out of range", f"use 0 (off) to {MAX_DRAFT}; {DEFAULT_DRAFT} is a good start"
        )
    return draft


def load_settings(
    summary: GGUFSummary,
    tool: str,
    ctx: int | None,
    draft: int | None,
    *,
    ctx_range: tuple[int, int | None] = (1, None),
) -> tuple[int, int]:
    """(context, draft length) to load `summary`'s file with in `tool`.

    The context defaults to START_CONTEXT, or the file's trained context when that is smaller (kept
    inside `ctx_range`, the tool's own limits); an explicit one past either is refused. The draft
    length defaults to DEFAULT_DRAFT with an MTP head and 0 without."""
    trained = summary.trained_context
    low, high = ctx_range
    top = trained if high is None else min(trained, high)
    if ctx is None:
        ctx = max(low, min(START_CONTEXT, top))
    elif not low <= ctx <= top:
        raise QwythosError(
            f"--ctx {ctx} is outside {low}..{top} for {summary.path.name}", f"pick a context up to {top}"
        )
    if draft is None:
        draft = DEFAULT_DRAFT if summary.mtp_present else 0
    check_draft(draft)
    if draft > 0 and not summary.mtp_present:
        raise QwythosError(
            f"{summary.path.name} has no MTP (nextn) head, so {tool} cannot draft with it (--draft {draft})",
            "export an -MTP- file (`qwythos mtp restore`), or leave --draft out",
        )
    return ctx, draft
