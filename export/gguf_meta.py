"""What the exporters need to know about a GGUF, read from its header (no tensor data is loaded).

The exporters only hand on files this project can vouch for: `read_gguf_summary` refuses anything
that is not a GGUF of an accepted architecture (`qwen35`), so a Modelfile, model.yaml or .kcpps is
never written for a file the tools would load with the wrong handling.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np

from qwythos.errors import QwythosError
from qwythos.quantize.gguf_file import file_type_name, read_header

#: Architectures the exporters accept. A second arch (qwen35moe) would be added here with its table.
ACCEPTED_ARCHS: tuple[str, ...] = ("qwen35",)

#: Turn-ending tokens of the Qwen3.5 chat format, used when a file carries no vocabulary to read.
QWEN35_TURN_END_TOKENS: tuple[str, ...] = ("<|im_end|>", "<|endoftext|>")

#: The model's names, as its Hugging Face repositories spell them.
MODEL_REPO = "empero-ai/Qwythos-9B-Claude-Mythos-5-1M"
GGUF_REPO = "empero-ai/Qwythos-9B-Claude-Mythos-5-1M-GGUF"
BASE_NAME = "Qwythos"
SIZE_LABEL = "9B"
FINETUNE = "Claude-Mythos-5-1M"
#: Full context of the released model (YaRN factor 4 over 262144 positions).
MODEL_CONTEXT = 1_048_576

# llama.cpp quant names (upper case) as they appear at the end of file names.
_QUANT_RE = re.compile(
    r"(?i)-(F32|F16|BF16|Q[1-8]_[01]|Q[2-8]_K(?:_[SML]|_XL)?|IQ[1-4]_(?:XXS|XS|S|M|NL|XL)|TQ[12]_0|MXFP4(?:_MOE)?)$"
)


_BLK_RE = re.compile(r"blk\.(\d+)\.")


def gguf_file_name(quant: str, mtp: bool = False) -> str:
    """The release's file name for one quant, llama.cpp naming convention (gguf-py naming_convention).

    `<BaseName>-<SizeLabel>-<FineTune>-<Type>.gguf`, e.g. `Qwythos-9B-Claude-Mythos-5-1M-Q4_K_M.gguf`.
    The official GGUF repo marks files carrying the MTP head with `-MTP` before the type
    (`...-1M-MTP-Q8_0.gguf`); we do the same.
    """
    finetune = f"{FINETUNE}-MTP" if mtp else FINETUNE
    return gguf.naming_convention(None, BASE_NAME, finetune, None, SIZE_LABEL, quant) + ".gguf"


def split_quant_suffix(stem: str) -> tuple[str, str | None]:
    """`Qwythos-9B-...-1M-MTP-Q4_K_M` -> (`Qwythos-9B-...-1M-MTP`, `Q4_K_M`); no suffix -> (stem, None)."""
    m = _QUANT_RE.search(stem)
    if not m:
        return stem, None
    return stem[: m.start()], m.group(1).upper()


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
        if not all(t in present for t in QWEN35_TURN_END_TOKENS):
            present = set(tokens)
        candidates += [t for t in QWEN35_TURN_END_TOKENS if t in present]
        for t in candidates:
            if t and t not in turn_end:
                turn_end.append(t)
    if not turn_end:
        turn_end = list(QWEN35_TURN_END_TOKENS)

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


def write_stub_gguf(
    path: Path,
    *,
    arch: str = "qwen35",
    nextn_layers: int = 1,
    block_count: int = 33,
    context_length: int = MODEL_CONTEXT,
    file_type: gguf.LlamaFileType | None = gguf.LlamaFileType.MOSTLY_Q4_K_M,
    chat_template: str | None = "{% if enable_thinking is defined %}{% endif %}<|im_start|>",
    tokens: list[str] | None = None,
    eos_token: str = "<|im_end|>",
) -> Path:
    """A metadata-only GGUF (a few tiny tensors) shaped like a Qwythos file: for tests and demos.

    `nextn_layers` > 0 adds `<arch>.nextn_predict_layers` and a `blk.{n-1}.nextn.eh_proj` tensor.
    """
    path = Path(path)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("Qwythos-9B-Claude-Mythos-5-1M")
    w.add_block_count(block_count)
    w.add_context_length(context_length)
    if file_type is not None:
        w.add_file_type(int(file_type))
    if nextn_layers:
        w.add_nextn_predict_layers(nextn_layers)
    vocab = tokens if tokens is not None else ["a", "b", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    w.add_tokenizer_model("gpt2")
    w.add_token_list(vocab)
    if eos_token in vocab:
        w.add_eos_token_id(vocab.index(eos_token))
    if chat_template is not None:
        w.add_chat_template(chat_template)
    w.add_tensor("token_embd.weight", np.zeros((len(vocab), 4), dtype=np.float32))
    w.add_tensor("blk.0.attn_norm.weight", np.ones((4,), dtype=np.float32))
    if nextn_layers:
        w.add_tensor(f"blk.{block_count - 1}.nextn.eh_proj.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
