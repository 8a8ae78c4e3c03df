"""What the exporters need to know about a GGUF, and the refusal of files they must not hand on.

`read_gguf_summary` refuses anything that is not a GGUF of an accepted architecture
(`arch.ARCHS`), so a Modelfile, model.yaml or .kcpps is never written for a file the tools would
load with the wrong handling.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from gguf import Keys

from qwythos.core.errors import QwythosError
from qwythos.core.gguf.view import GGUFView, read_view
from qwythos.core.model.arch import check_arch
from qwythos.core.model.release import TURN_END_TOKENS, split_quant_suffix


@dataclass
class GGUFSummary:
    """The header facts of one GGUF file that the exports depend on."""

    path: Path
    size_bytes: int
    arch: str
    name: str | None
    file_type: str | None  # llama.cpp quant name: "Q4_K_M", "BF16", ...
    block_count: int | None
    nextn_predict_layers: int
    nextn_tensor_count: int
    context_length: int | None
    has_chat_template: bool
    chat_template_has_enable_thinking: bool
    turn_end_tokens: list[str]
    tensor_count: int
    warnings: list[str] = field(default_factory=list)

    @property
    def has_mtp(self) -> bool:
        """An embedded MTP (nextn) head: declared in the metadata and present as tensors."""
        return self.nextn_predict_layers > 0 and self.nextn_tensor_count > 0

    @property
    def quant(self) -> str:
        """The quant label: from general.file_type, else from the file name, else "unknown"."""
        if self.file_type:
            return self.file_type
        return split_quant_suffix(self.path.stem)[1] or "unknown"


def _turn_end_tokens(view: GGUFView) -> list[str]:
    turn_end: list[str] = []
    tokens = view.tokens
    if tokens:
        eos = view.get_int(Keys.Tokenizer.EOS_ID)
        candidates: list[str] = []
        if eos is not None and 0 <= eos < len(tokens):
            candidates.append(tokens[eos])
        present = set(tokens[-4096:]) | set(candidates)  # Qwen's specials sit at the end
        if not all(t in present for t in TURN_END_TOKENS):
            present = set(tokens)
        candidates += [t for t in TURN_END_TOKENS if t in present]
        for t in candidates:
            if t and t not in turn_end:
                turn_end.append(t)
    return turn_end or list(TURN_END_TOKENS)


def read_gguf_summary(path: Path) -> GGUFSummary:
    """Read the header of `path`; refuse files that are not a GGUF of an accepted architecture.

    Uses the project's header reader (core.gguf.file.read_header): it parses a 248k-token
    vocabulary in ~0.1 s (gguf-py's GGUFReader takes seconds) and refuses truncated files.
    """
    path = Path(path)
    if not path.is_file():
        raise QwythosError(f"{path} does not exist or is not a file", "pass the path of a .gguf file")
    view = read_view(path)
    check_arch(view, "export")
    arch = view.arch
    nextn = view.n_nextn
    nextn_tensors = len(view.nextn_tensors)
    if view.block_count is not None and (not view.trunk_blocks() or "token_embd.weight" not in view.by_name):
        raise QwythosError(
            f"{path.name} has no trunk layers (an MTP-head-only or vocabulary-only GGUF?)",
            "export the full model GGUF; a head alone is a draft for `qwythos mtp`",
        )
    template = view.chat_template
    warnings: list[str] = []
    if nextn > 0 and nextn_tensors == 0:
        warnings.append(
            f"{view.key(Keys.LLM.NEXTN_PREDICT_LAYERS)} is {nextn} but the file has no nextn tensors: MTP is off"
        )
    if nextn == 0 and nextn_tensors > 0:
        warnings.append(
            "the file has nextn tensors but nextn_predict_layers is 0: llama.cpp will not use them"
        )
    if template is None:
        warnings.append("the file has no tokenizer.chat_template")

    return GGUFSummary(
        path=path,
        size_bytes=view.header.file_size,
        arch=arch,
        name=view.name,
        file_type=view.file_type_name,
        block_count=view.block_count,
        nextn_predict_layers=nextn,
        nextn_tensor_count=nextn_tensors,
        context_length=view.context_length,
        has_chat_template=template is not None,
        chat_template_has_enable_thinking=template is not None and "enable_thinking" in template,
        turn_end_tokens=_turn_end_tokens(view),
        tensor_count=len(view.tensors),
        warnings=warnings,
    )
