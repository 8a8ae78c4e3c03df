"""What a GGUF holds, summarized once from its header view: the one summary `qwythos inspect` shows
and the exporters read, and the refusal of files the exporters must not hand on.

`summarize(view)` describes any GGUF (inspect shows other architectures too) with the structural
check's problems (core/model/structure.py); `exportable(view)` first refuses anything that is not a
GGUF of an accepted architecture (`arch.ARCHS`) with trunk layers, so a Modelfile, model.yaml or
.kcpps is never written for a file the tools would load with the wrong handling. Both take the view
a command already read (or a path, read once).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from gguf import Keys

from qwythos.core.errors import QwythosError
from qwythos.core.gguf.view import GGUFView, as_view
from qwythos.core.model.arch import check_arch
from qwythos.core.model.release import MODEL_CONTEXT, TURN_END_TOKENS, split_quant_suffix
from qwythos.core.model.structure import check_model


@dataclass
class GGUFSummary:
    """The header facts of one GGUF file: what inspect prints (and `--json` writes), what the
    exports depend on."""

    path: Path
    file_size: int
    arch: str
    name: str
    file_type: str  # llama.cpp's name ("Q4_K_M", "BF16"); the id when unknown; "?" when absent
    quant: str  # the quant label: file_type's name, else the file name's suffix, else "unknown"
    context_length: int | None
    block_count: int | None
    trunk_layers: int | None  # block_count minus nextn layers
    linear_attention_layers: int
    full_attention_layers: int
    layer_layout: str
    nextn_predict_layers: int
    nextn_tensor_count: int
    mtp_present: bool  # an MTP (nextn) head declared in the metadata and really in the file
    mtp_note: str
    vocab_size: int
    chat_template: bool
    chat_template_thinking: bool  # the template reads `enable_thinking` (LM Studio's switch)
    chat_template_tools: bool  # the template renders tools (KoboldCpp's jinja_tools)
    turn_end_tokens: list[str]
    n_tensors: int
    tensors_by_type: dict[str, int] = field(default_factory=dict)
    bytes_by_type: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # what the exports print before their result
    issues: list[str] = field(default_factory=list)  # structural problems llama.cpp would refuse

    @property
    def ok(self) -> bool:
        return not self.issues

    @property
    def trained_context(self) -> int:
        """The context the file was trained for: its header's, else the release's (MODEL_CONTEXT)."""
        return self.context_length or MODEL_CONTEXT


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


def _layers(view: GGUFView) -> tuple[int, int, str]:
    """(linear-attention layers, full-attention layers, the layout in words) of the trunk."""
    trunk = view.n_trunk
    recurrent = view.recurrent_layers
    if recurrent is None or trunk is None:
        return 0, trunk or 0, f"{trunk} layers" if trunk is not None else "unknown"
    n_lin = sum(1 for r in recurrent[:trunk] if r)
    interval = view.get_int(Keys.LLM.FULL_ATTENTION_INTERVAL)
    layout = f"{n_lin} linear-attention + {trunk - n_lin} full-attention" + (
        f" (every {interval}th full)" if interval else ""
    )
    return n_lin, trunk - n_lin, layout


def _mtp(view: GGUFView) -> tuple[str, list[str]]:
    """The MTP head in words (inspect's line) and the exports' warnings about it."""
    nextn, present = view.n_nextn, bool(view.nextn_tensors)
    if nextn and present:
        return f"MTP head present ({nextn} nextn layer(s), block {min(view.nextn_blocks)})", []
    if nextn:
        return (
            "metadata declares an MTP layer but the file has no nextn tensors: llama.cpp will refuse it",
            [
                f"{view.key(Keys.LLM.NEXTN_PREDICT_LAYERS)} is {nextn} but the file has no nextn tensors: "
                "MTP is off"
            ],
        )
    if present:
        return "nextn tensors present but nextn_predict_layers is 0", [
            "the file has nextn tensors but nextn_predict_layers is 0: llama.cpp will not use them"
        ]
    return "no MTP head (`qwythos mtp restore` can add one)", []


def summarize(src: GGUFView | str | Path) -> GGUFSummary:
    """Summarize a GGUF from its header (any architecture) and check its structure. A file that is
    not a GGUF gets a QwythosError; a GGUF llama.cpp would refuse gets its problems in `issues`."""
    view = as_view(src)
    n_lin, n_full, layout = _layers(view)
    mtp_note, warnings = _mtp(view)
    template = view.chat_template
    if template is None:
        warnings.append("the file has no tokenizer.chat_template")
    ft = view.file_type
    return GGUFSummary(
        path=view.path,
        file_size=view.file_size,
        arch=view.arch or str(view.kv.get(Keys.General.ARCHITECTURE, "?")),
        name=view.name or "",
        file_type=(view.file_type_name or str(ft)) if ft is not None else "?",
        quant=view.file_type_name or split_quant_suffix(view.path.stem)[1] or "unknown",
        context_length=view.context_length,
        block_count=view.block_count,
        trunk_layers=view.n_trunk,
        linear_attention_layers=n_lin,
        full_attention_layers=n_full,
        layer_layout=layout,
        nextn_predict_layers=view.n_nextn,
        nextn_tensor_count=len(view.nextn_tensors),
        mtp_present=view.n_nextn > 0 and bool(view.nextn_tensors),
        mtp_note=mtp_note,
        vocab_size=len(view.tokens or []),
        chat_template=template is not None,
        chat_template_thinking=template is not None and "enable_thinking" in template,
        chat_template_tools=template is not None and "tools" in template,
        turn_end_tokens=_turn_end_tokens(view),
        n_tensors=len(view.tensors),
        tensors_by_type=dict(view.tensors_by_type),
        bytes_by_type=dict(view.bytes_by_type),
        warnings=warnings,
        issues=[str(i) for i in check_model(view)],
    )


def exportable(src: GGUFView | str | Path) -> GGUFSummary:
    """The summary of a file the exports may hand on, the one gate every export passes: a GGUF the
    header reader accepts (llama.cpp's format rules), of an accepted architecture whose sizes pass
    core/model/hparams, with its trunk layers and no tensor present with the wrong shape or type;
    anything else is refused with one message. What the file lacks (a tensor, a declared head's
    tensors) stays in the summary's issues and warnings, as the tools themselves name it."""
    view = as_view(src)
    check_arch(view, "export")
    if view.block_count is not None and (not view.trunk_blocks() or "token_embd.weight" not in view.by_name):
        raise QwythosError(
            f"{view.path.name} has no trunk layers (an MTP-head-only or vocabulary-only GGUF?)",
            "export the full model GGUF; a head alone is a draft for `qwythos mtp`",
        )
    wrong = [i for i in check_model(view) if not i.absent]
    if wrong:  # a tensor present with the wrong shape or type, or one llama.cpp would not take
        more = f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""
        raise QwythosError(
            f"{view.path} is not a loadable {view.arch} GGUF: {wrong[0]}{more}",
            "convert or download the file again; `qwythos inspect FILE --json` lists every problem",
        )
    return summarize(view)
