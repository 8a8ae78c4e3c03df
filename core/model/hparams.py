"""The sizes a qwen35 GGUF's header states, checked before anything is built from them.

A header is untrusted: `qwen35.block_count = 2**31` in a 2.7 MB file once made `inspect` build
per-layer tables for two billion layers and made llama.cpp abort on an assertion. `check_hparams`
holds every count and size the header states (layers, nextn layers, context, widths, heads,
vocabulary) against llama.cpp's limits (src/llama-hparams.h, src/llama-model.cpp) and against the
tensors really in the file, reading nothing but the header. It runs first in the structural check
(core/model/structure.py, which inspect shows) and in `arch.check_arch`, which every command calls
before it builds anything from a file or passes it to C (run, quantize, mtp restore, the exports).
"""

from __future__ import annotations

from dataclasses import dataclass

from gguf import Keys

from qwythos.core.errors import QwythosError
from qwythos.core.gguf.view import NEXTN_RE, RECURRENT_LAYERS, GGUFView

#: llama.cpp's most blocks per model (src/llama-hparams.h; `llm_load_hparams` asserts it)
LLAMA_MAX_LAYERS = 512
#: the largest value of a UINT32 key, the type llama.cpp reads every size below as
U32_MAX = 2**32 - 1
#: nextn (MTP) blocks llama.cpp's qwen35 runs (src/models/qwen35.cpp asserts exactly one)
MAX_NEXTN_LAYERS = 1

L, A, S = Keys.LLM, Keys.Attention, Keys.SSM
#: every integer size qwen35's loader reads (a UINT32 each)
SIZE_KEYS = (
    L.BLOCK_COUNT,
    L.NEXTN_PREDICT_LAYERS,
    L.CONTEXT_LENGTH,
    L.EMBEDDING_LENGTH,
    L.FEED_FORWARD_LENGTH,
    L.VOCAB_SIZE,
    A.HEAD_COUNT,
    A.HEAD_COUNT_KV,
    A.KEY_LENGTH,
    A.VALUE_LENGTH,
    S.CONV_KERNEL,
    S.STATE_SIZE,
    S.GROUP_COUNT,
    S.TIME_STEP_RANK,
    S.INNER_SIZE,
    L.FULL_ATTENTION_INTERVAL,
    Keys.Rope.DIMENSION_COUNT,
)
#: the sizes that may be 0 (no head, no tokens listed, no rotary split); every other one must not be
#: 0 when present (a divisor or a width)
MAY_BE_ZERO = (L.BLOCK_COUNT, L.NEXTN_PREDICT_LAYERS, L.VOCAB_SIZE, Keys.Rope.DIMENSION_COUNT)
POSITIVE_KEYS = tuple(k for k in SIZE_KEYS if k not in MAY_BE_ZERO)
POSITIVE_KEYS = (
    L.CONTEXT_LENGTH,
    L.EMBEDDING_LENGTH,
    L.FEED_FORWARD_LENGTH,
    A.HEAD_COUNT,
    A.HEAD_COUNT_KV,
    A.KEY_LENGTH,
    A.VALUE_LENGTH,
    S.CONV_KERNEL,
    S.STATE_SIZE,
    S.GROUP_COUNT,
    S.TIME_STEP_RANK,
    S.INNER_SIZE,
    L.FULL_ATTENTION_INTERVAL,
)


@dataclass
class HeadIssue:
    """One structural problem: the tensor or metadata key, and what is wrong with it."""

    tensor: str
    problem: str
    #: something the file lacks (a tensor, a metadata key, a declared head's tensors), as opposed
    #: to something present and wrong: the exports refuse only the latter (the tools name a gap)
    absent: bool = False

    def __str__(self) -> str:
        return f"{self.tensor} {self.problem}"


def _sizes(v: GGUFView, issues: list[HeadIssue]) -> dict[str, int]:
    """The present size keys that are integers inside a UINT32 (each other one is an issue)."""
    out: dict[str, int] = {}
    for template in SIZE_KEYS:
        key = v.key(template)
        if key not in v.kv:
            continue
        val = v.kv[key]
        if isinstance(val, list):
            continue  # a per-layer array (llama.cpp allows it for widths and heads): not read here
        if not isinstance(val, int) or isinstance(val, bool):
            issues.append(HeadIssue(key, f"is a {type(val).__name__} ({str(val)[:40]}), not an integer"))
        elif not 0 <= val <= U32_MAX:
            issues.append(HeadIssue(key, f"is {val}, outside the UINT32 llama.cpp reads it as"))
        else:
            out[template] = val
    return out


def check_hparams(v: GGUFView) -> list[HeadIssue]:
    """Every count and size a qwen35 header states, against llama.cpp's limits and the tensors in
    the file. [] = sound; each issue names the key and what is wrong. Reads the header only."""
    issues: list[HeadIssue] = []
    size = _sizes(v, issues)
    if issues:
        return issues
    bc_key, nextn_key = v.key(L.BLOCK_COUNT), v.key(L.NEXTN_PREDICT_LAYERS)
    bc = size.get(L.BLOCK_COUNT)
    if bc is None:
        return [HeadIssue(bc_key, "is missing (every qwen35 GGUF states its block count)")]
    if not 1 <= bc <= LLAMA_MAX_LAYERS:
        return [
            HeadIssue(bc_key, f"is {bc}; llama.cpp loads 1 to {LLAMA_MAX_LAYERS} blocks (LLAMA_MAX_LAYERS)")
        ]
    n_nextn = size.get(L.NEXTN_PREDICT_LAYERS, 0)
    if n_nextn >= bc:
        return [HeadIssue(nextn_key, f"is {n_nextn} but {bc_key} is {bc}: no trunk block would be left")]
    if n_nextn > MAX_NEXTN_LAYERS:
        issues.append(
            HeadIssue(
                nextn_key, f"is {n_nextn}; llama.cpp's qwen35 runs at most {MAX_NEXTN_LAYERS} MTP block"
            )
        )
    n_trunk = bc - n_nextn
    for template in POSITIVE_KEYS:
        if size.get(template) == 0:
            issues.append(HeadIssue(v.key(template), "is 0"))
    _divides(v, size, A.HEAD_COUNT_KV, A.HEAD_COUNT, issues)
    _divides(v, size, S.GROUP_COUNT, S.TIME_STEP_RANK, issues)
    _divides(v, size, S.TIME_STEP_RANK, S.INNER_SIZE, issues)
    rec = v.recurrent_layers
    if rec is not None and len(rec) != bc:
        issues.append(HeadIssue(v.key(RECURRENT_LAYERS), f"has {len(rec)} entries for {bc} blocks"))
    _against_tensors(v, size, bc, n_trunk, issues)
    return issues


def _divides(v: GGUFView, size: dict[str, int], small: str, big: str, issues: list[HeadIssue]) -> None:
    a, b = size.get(small), size.get(big)
    if a and b is not None and b % a:
        issues.append(HeadIssue(v.key(big), f"is {b}, not a multiple of {v.key(small)} ({a})"))


def _against_tensors(
    v: GGUFView, size: dict[str, int], bc: int, n_trunk: int, issues: list[HeadIssue]
) -> None:
    """The sizes the tensors themselves show: block indices, the embedding's width and rows, the
    feed-forward width."""
    past = sorted({i for n in v.tensor_names if (i := _block_index(n)) is not None and i >= bc})
    if past:
        issues.append(
            HeadIssue(f"blk.{past[0]}.*", f"is past the {bc} blocks {v.key(L.BLOCK_COUNT)} declares")
        )
    early = [n for n in v.nextn_tensors if (m := NEXTN_RE.match(n)) and int(m.group(1)) < n_trunk]
    if early:
        issues.append(
            HeadIssue(
                early[0],
                f"is a nextn tensor in trunk block {NEXTN_RE.match(early[0]).group(1)} "  # type: ignore[union-attr]
                f"(the MTP block is blk.{n_trunk})",
            )
        )
    emb = v.by_name.get("token_embd.weight")
    if emb is not None and len(emb.shape) == 2:
        n_embd = size.get(L.EMBEDDING_LENGTH)
        if n_embd is not None and emb.shape[1] != n_embd:
            issues.append(
                HeadIssue(
                    v.key(L.EMBEDDING_LENGTH),
                    f"is {n_embd} but token_embd.weight has rows of {emb.shape[1]}: every tensor's shape "
                    "is read against it",
                )
            )
        tokens = v.tokens
        if tokens is not None and len(tokens) != emb.shape[0]:
            issues.append(
                HeadIssue(
                    "tokenizer.ggml.tokens",
                    f"lists {len(tokens)} tokens but token_embd.weight has {emb.shape[0]} rows",
                )
            )
    n_ff = size.get(L.FEED_FORWARD_LENGTH)
    up = next((t for t in v.tensors if t.name.endswith(".ffn_up.weight") and len(t.shape) == 2), None)
    if n_ff is not None and up is not None and up.shape[0] != n_ff:
        issues.append(
            HeadIssue(v.key(L.FEED_FORWARD_LENGTH), f"is {n_ff} but {up.name} has {up.shape[0]} rows")
        )


def _block_index(name: str) -> int | None:
    if not name.startswith("blk."):
        return None
    idx = name[4:].partition(".")[0]
    return int(idx) if idx.isdecimal() else None


def require_hparams(v: GGUFView, doing: str) -> None:
    """Refuse a header whose sizes llama.cpp would refuse (or that would make qwythos allocate for
    sizes the file does not have): one message naming the file and the first problem."""
    issues = check_hparams(v)
    if issues:
        more = f" (and {len(issues) - 1} more)" if len(issues) > 1 else ""
        raise QwythosError(
            f"{v.path} states sizes llama.cpp would refuse: {issues[0]}{more}",
            f"qwythos cannot {doing} it: download or convert the file again "
            "(`qwythos inspect FILE --json` lists every problem)",
        )
