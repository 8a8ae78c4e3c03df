"""Which architecture qwythos handles, named once: the GGUF arch, the HF classes, and the refusal.

Every reader that must turn away another model's file (the runtime, the exporters, restore, fit,
quantize) calls `check_arch`, so the allow-list and its message live here alone.
"""

from __future__ import annotations

from gguf import Keys

from qwythos.core.errors import QwythosError
from qwythos.core.gguf.view import GGUFView

ARCH = "qwen35"
#: The one allow-list of GGUF architectures qwythos reads, runs and exports (a second arch,
#: qwen35moe, would come with its own table).
ARCHS: tuple[str, ...] = (ARCH,)
#: The Hugging Face classes whose checkpoints convert to ARCH.
HF_ARCHITECTURES = ("Qwen3_5ForConditionalGeneration", "Qwen3_5ForCausalLM")


def describe_arch(view: GGUFView) -> str:
    """The file's `general.architecture` as a user should read it, whatever the header holds."""
    raw = view.kv.get(Keys.General.ARCHITECTURE)
    if raw is None:
        return "no architecture (general.architecture is missing)"
    if not isinstance(raw, str):
        return f"a non-text architecture ({type(raw).__name__} {str(raw)[:40]})"
    return f"architecture {raw[:60]!r}"


def check_arch(view: GGUFView, doing: str) -> None:
    """Refuse a GGUF of another architecture, or one whose header states sizes llama.cpp would refuse
    (core/model/hparams.py), before anything reads it further: one message, every command. `doing`
    names what the command does ("quantize", "run", "export") for the fix."""
    if view.arch in ARCHS:
        from qwythos.core.model.hparams import require_hparams  # hparams reads arch-keyed sizes

        require_hparams(view, doing)
        return
    raise QwythosError(
        f"{view.path} is a GGUF of {describe_arch(view)}, not {' / '.join(ARCHS)} (Qwen3.5)",
        f"qwythos can {doing} only Qwen3.5 (qwen35) GGUFs such as Qwythos-9B; "
        "`qwythos inspect FILE` shows a file's architecture",
    )
