"""What the exporters need to know about a GGUF, read from its header (no tensor data is loaded).

The exporters only hand on files this project can vouch for: `read_gguf_summary` refuses anything
that is not a GGUF of an accepted architecture (`qwen35`), so a Modelfile, model.yaml or .kcpps is
never written for a file the tools would load with the wrong handling.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from qwythos.core.errors import QwythosError
from qwythos.core.gguf_file import file_type_name, read_header
from qwythos.core.release import TURN_END_TOKENS, split_quant_suffix

#: Architectures the exporters accept. A second arch (qwen35moe) would be added here with its table.
ACCEPTED_ARCHS: tuple[str, ...] = ("qwen35",)

_BLK_RE = re.compile(r"blk\.(\d+)\.")


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


def read_gguf_summary(path: Path, accept_archs: tuple[str, ...] = ACCEPTED_ARCHS) -> GGUFSummary:
    """Read the header of `path`; refuse files that are not a GGUF of an accepted architecture.

    Uses the project's header reader (quantize.gguf_file.read_header): it parses a 248k-token
    vocabulary in ~0.1 s (gguf-py's GGUFReader takes seconds) and refuses truncated files.
    """
    path = Path(path)
    if not path.is_file():
        raise QwythosError(f"{path} does not exist or is not a file", "pass the path of a .gguf file")
    try:
        hdr = read_header(path)
    except QwythosError:
        raise
    except OSError as e:
        raise QwythosError(f"cannot read {path}: {e.strerror}", "check the file's permissions") from e
    except Exception as e:  # anything else a corrupt header can raise
        raise QwythosError(
            f"{path} has an unreadable GGUF header: {e}", "re-download or re-convert the file"
        ) from e
    kv = hdr.kv

    arch = kv.get("general.architecture")
    if not isinstance(arch, str) or arch not in accept_archs:
        raise QwythosError(
            f"{path.name} is a {arch!r} GGUF, not {' / '.join(accept_archs)} (Qwythos-9B)",
            "export only files made from Qwythos-9B / Qwen3.5-9B (`qwythos inspect FILE` shows the arch)",
        )

    def arch_int(key: str) -> int | None:
        v = kv.get(f"{arch}.{key}")
        return int(v) if isinstance(v, int) and not isinstance(v, bool) else None

    ft = kv.get("general.file_type")
    file_type = file_type_name(ft) if isinstance(ft, int) else None
    name = kv.get("general.name")
    template = kv.get("tokenizer.chat_template")
    names = [t.name for t in hdr.tensors]
    nextn = arch_int("nextn_predict_layers") or 0
    nextn_tensors = sum(1 for n in names if ".nextn." in n)
    block_count = arch_int("block_count")
    if block_count is not None:
        n_trunk = block_count - nextn
        trunk_blocks = {m.group(1) for n in names if (m := _BLK_RE.match(n)) and int(m.group(1)) < n_trunk}
        if not trunk_blocks or "token_embd.weight" not in names:
            raise QwythosError(
                f"{path.name} has no trunk layers (an MTP-head-only or vocabulary-only GGUF?)",
                "export the full model GGUF; a head alone is a draft for `qwythos mtp`",
            )

    turn_end: list[str] = []
    tokens = kv.get("tokenizer.ggml.tokens")
    if isinstance(tokens, list) and tokens:
        eos = kv.get("tokenizer.ggml.eos_token_id")
        candidates: list[str] = []
        if isinstance(eos, int) and 0 <= eos < len(tokens):
            candidates.append(tokens[eos])
        present = set(tokens[-4096:]) | set(candidates)  # Qwen's specials sit at the end
        if not all(t in present for t in TURN_END_TOKENS):
            present = set(tokens)
        candidates += [t for t in TURN_END_TOKENS if t in present]
        for t in candidates:
            if t and t not in turn_end:
                turn_end.append(t)
    if not turn_end:
        turn_end = list(TURN_END_TOKENS)

    warnings: list[str] = []
    if nextn > 0 and nextn_tensors == 0:
        warnings.append(
            f"{arch}.nextn_predict_layers is {nextn} but the file has no nextn tensors: MTP is off"
        )
    if nextn == 0 and nextn_tensors > 0:
        warnings.append(
            "the file has nextn tensors but nextn_predict_layers is 0: llama.cpp will not use them"
        )
    if not isinstance(template, str):
        warnings.append("the file has no tokenizer.chat_template")

    return GGUFSummary(
        path=path,
        size_bytes=hdr.file_size,
        arch=arch,
        name=name if isinstance(name, str) else None,
        file_type=file_type,
        block_count=block_count,
        nextn_predict_layers=nextn,
        nextn_tensor_count=nextn_tensors,
        context_length=arch_int("context_length"),
        has_chat_template=isinstance(template, str),
        chat_template_has_enable_thinking=isinstance(template, str) and "enable_thinking" in template,
        turn_end_tokens=turn_end,
        tensor_count=len(hdr.tensors),
        warnings=warnings,
    )
