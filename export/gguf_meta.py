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


def _file_type_name(value: int) -> str | None:
    try:
        name = gguf.LlamaFileType(value).name
    except ValueError:
        return None
    for prefix in ("MOSTLY_", "ALL_"):
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


def _scalar(reader: gguf.GGUFReader, key: str) -> object | None:
    f = reader.get_field(key)
    if f is None or not f.types:
        return None
    if f.types[0] == gguf.GGUFValueType.ARRAY:
        return None
    return f.contents()


def read_gguf_summary(path: Path, accept_archs: tuple[str, ...] = ACCEPTED_ARCHS) -> GGUFSummary:
    """Read the header of `path`; refuse files that are not a GGUF of an accepted architecture."""
    path = Path(path)
    if not path.is_file():
        raise QwythosError(f"{path} does not exist or is not a file", "pass the path of a .gguf file")
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as e:
        raise QwythosError(f"cannot read {path}: {e.strerror}", "check the file's permissions") from e
    if magic != b"GGUF":
        raise QwythosError(
            f"{path} is not a GGUF file (no GGUF magic)", "pass a .gguf made by `qwythos convert`"
        )
    try:
        reader = gguf.GGUFReader(path, "r")
    except Exception as e:  # a truncated or corrupt header: gguf raises ValueError, struct errors...
        raise QwythosError(
            f"{path} has an unreadable GGUF header: {e}", "re-download or re-convert the file"
        ) from e

    arch = _scalar(reader, "general.architecture")
    if not isinstance(arch, str) or arch not in accept_archs:
        raise QwythosError(
            f"{path.name} is a {arch!r} GGUF, not {' / '.join(accept_archs)} (Qwythos-9B)",
            "export only files made from Qwythos-9B / Qwen3.5-9B (`qwythos inspect FILE` shows the arch)",
        )

    def arch_int(key: str) -> int | None:
        v = _scalar(reader, f"{arch}.{key}")
        return int(v) if isinstance(v, (int, np.integer)) else None

    ft = _scalar(reader, "general.file_type")
    file_type = _file_type_name(int(ft)) if isinstance(ft, (int, np.integer)) else None
    name = _scalar(reader, "general.name")
    template = _scalar(reader, "tokenizer.chat_template")
    nextn = arch_int("nextn_predict_layers") or 0
    nextn_tensors = sum(1 for t in reader.tensors if ".nextn." in t.name)

    turn_end: list[str] = []
    tokens = reader.get_field("tokenizer.ggml.tokens")
    if tokens is not None and tokens.types and tokens.types[0] == gguf.GGUFValueType.ARRAY:
        n_tokens = len(tokens.data)
        eos = _scalar(reader, "tokenizer.ggml.eos_token_id")
        candidates: list[str] = []
        if isinstance(eos, (int, np.integer)) and 0 <= int(eos) < n_tokens:
            candidates.append(tokens.contents(int(eos)))
        # The two Qwen turn enders, found by a scan of the (special) tail of the vocabulary.
        wanted = set(QWEN35_TURN_END_TOKENS)
        found: dict[str, int] = {}
        for i in range(n_tokens - 1, -1, -1):
            text = bytes(tokens.parts[tokens.data[i]]).decode("utf-8", "replace")
            if text in wanted:
                found[text] = i
                if len(found) == len(wanted):
                    break
        candidates += [t for t in QWEN35_TURN_END_TOKENS if t in found]
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
        size_bytes=path.stat().st_size,
        arch=arch,
        name=name if isinstance(name, str) else None,
        file_type=file_type,
        block_count=arch_int("block_count"),
        nextn_predict_layers=nextn,
        nextn_tensor_count=nextn_tensors,
        context_length=arch_int("context_length"),
        has_chat_template=isinstance(template, str),
        chat_template_has_enable_thinking=isinstance(template, str) and "enable_thinking" in template,
        turn_end_tokens=turn_end,
        tensor_count=len(reader.tensors),
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
    if nextn_layers:
        w.add_tensor(f"blk.{block_count - 1}.nextn.eh_proj.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
