"""The release's facts, written once: names, repositories, license, context, the card's sampling,
the chat format's turn-end tokens, file naming and which quant is the default.

Every feature that prints or writes one of these (run, chat, the exports, the Hub card) reads it
from here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import TypeVar

import gguf

#: The publisher (the Hub owner of the release), and the model's names as its Hugging Face
#: repositories spell them.
PUBLISHER = "empero-ai"
MODEL_REPO = f"{PUBLISHER}/Qwythos-9B-Claude-Mythos-5-1M"
GGUF_REPO = f"{PUBLISHER}/Qwythos-9B-Claude-Mythos-5-1M-GGUF"
BASE_MODEL_REPO = "Qwen/Qwen3.5-9B"
BASE_NAME = "Qwythos"
SIZE_LABEL = "9B"
FINETUNE = "Claude-Mythos-5-1M"
#: The name the exports give the model in a local server: Ollama's model name, vLLM's and SGLang's
#: --served-model-name.
LOCAL_NAME = "qwythos-9b"
#: Full context of the released model (YaRN factor 4 over 262144 positions).
MODEL_CONTEXT = 1_048_576
#: Where users start (and what the exports configure): grow to 64k, 128k, 256k as memory allows.
START_CONTEXT = 32768

LICENSE = "apache-2.0"  # the Hub's license id
LICENSE_SPDX = "Apache-2.0"
LICENSE_TEXT = (
    f"Apache License 2.0 (SPDX-License-Identifier: {LICENSE_SPDX})\n"
    f"{MODEL_REPO}, a fine-tune of {BASE_MODEL_REPO}.\n"
    "Full text: https://www.apache.org/licenses/LICENSE-2.0\n"
)

#: The bundled calibration text (code and comments) that validate, eval and fit read by default.
CALIBRATION_TEXT = Path(__file__).resolve().parents[2] / "data" / "calibration.txt"

#: The model card's recommended sampling (greedy or T <= 0.3 falls into repetition loops).
TEMPERATURE = 0.6
TOP_P = 0.95
TOP_K = 20
MIN_P = 0.0
REPEAT_PENALTY = 1.05
MAX_NEW_TOKENS = 16384

#: Turn-ending tokens of the Qwen3.5 chat format (ChatML): a reply stops at either.
TURN_END_TOKENS: tuple[str, ...] = ("<|im_end|>", "<|endoftext|>")

#: The published file a user should pick first, then the next best when it is not there.
DEFAULT_QUANT_ORDER: tuple[str, ...] = ("Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0")

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


def restored_file_name(quant: str) -> str:
    """The name `qwythos mtp restore` gives the release's `quant` file once its head is back:
    `Qwythos-9B-Claude-Mythos-5-1M-Q4_K_M-MTP.gguf`."""
    return gguf_file_name(quant).removesuffix(".gguf") + "-MTP.gguf"


#: The flagship file: the default quant with its MTP head restored (what the README's pipeline makes).
FLAGSHIP_FILE = restored_file_name(DEFAULT_QUANT_ORDER[0])


def split_quant_suffix(stem: str) -> tuple[str, str | None]:
    """`Qwythos-9B-...-1M-MTP-Q4_K_M` -> (`Qwythos-9B-...-1M-MTP`, `Q4_K_M`); no suffix -> (stem, None).
    A `-MTP` after the type (`mtp restore` output, `...-1M-Q4_K_M-MTP`) reads the same way."""
    if stem.upper().endswith("-MTP"):
        base, quant = split_quant_suffix(stem[:-4])
        if quant:
            return f"{base}-MTP", quant
    m = _QUANT_RE.search(stem)
    if not m:
        return stem, None
    return stem[: m.start()], m.group(1).upper()


R = TypeVar("R")


def pick_default(
    rows: Iterable[R], *, quant=lambda r: r.quant, has_mtp=lambda r: r.has_mtp, size=lambda r: r.size_bytes
) -> R | None:
    """The file to recommend first: by DEFAULT_QUANT_ORDER, a file without the head before one with
    it (every tool loads it), else the smallest file. None for no rows."""
    rows = list(rows)
    if not rows:
        return None
    for q in DEFAULT_QUANT_ORDER:
        for want_mtp in (False, True):
            for r in rows:
                if quant(r) == q and bool(has_mtp(r)) == want_mtp:
                    return r
    return min(rows, key=size)
