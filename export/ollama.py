"""Write an Ollama Modelfile for a Qwythos GGUF that `ollama create NAME -f Modelfile` takes unchanged.

Decisions, with where in Ollama's source (ollama/ollama) they come from:

- `RENDERER qwen3.5` + `PARSER qwen3.5`: Ollama only uses its built-in Qwen3.5 prompt renderer and
  output parser (thinking split out, tool calls parsed) when the Modelfile names them; an imported
  GGUF gets neither by itself.
- No `TEMPLATE`. The parser accepts TEMPLATE next to RENDERER (both are stored), but
  `server/prompt.go` renderPrompt uses the renderer whenever one is set, so the template would be
  dead text.
- `REQUIRES` (stored and shown by Ollama, not enforced, so the README names the version too):
  - 0.17.6 for a trunk-only file. The names `qwen3.5` exist since 0.17.1, but there they were the
    Qwen3-VL renderer and the Qwen3 parser; the dedicated Qwen3.5 renderer and parser came in
    0.17.6 (commit 82848a780, #14605). Loading GGUFs made by llama.cpp was fixed in 0.17.5 (#14517).
  - 0.30.0 for any file that declares an MTP (nextn) layer, even with drafting off: its
    `block_count` counts the nextn layer, and the engine before 0.30 expects one more recurrent
    layer there. From 0.30.0 every GGML model runs through llama-server (#16031), which knows the
    layer, and `draft_num_predict` exists (api/types.go `Runner.DraftNumPredict`).
- `PARAMETER draft_num_predict N` only when the file carries an MTP (nextn) head:
  `llm/llama_server.go` adds `--spec-type draft-mtp` only when `<arch>.nextn_predict_layers > 0`
  and N > 0, and `server/routes.go` zeroes N for a model whose Modelfile did not set it.
- `stop` for both Qwen turn enders, the card's sampling, `num_ctx`, a LICENSE naming Apache-2.0.
- `FROM ./file.gguf` relative to the Modelfile: Ollama resolves relative paths against the
  Modelfile's folder (`parser.expandPath`).
- The vision projector (`--mmproj FILE`, else an mmproj*.gguf beside the GGUF) as a second `FROM`:
  create merges every FROM path into its files and `server/create.go` detects a projector GGUF.
"""

from __future__ import annotations

import os
import re
import shlex
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from qwythos.core.drafting.lengths import DEFAULT_DRAFT
from qwythos.core.errors import QwythosError
from qwythos.core.fileio import ensure_writable_dir, write_export_text
from qwythos.core.gguf.mmproj import choose_mmproj
from qwythos.core.gguf.view import read_view
from qwythos.core.model.release import (
    DEFAULT_QUANT_ORDER,
    FLAGSHIP_FILE,
    LICENSE_TEXT,
    LOCAL_NAME,
    REPEAT_PENALTY,
    START_CONTEXT,
    TEMPERATURE,
    TOP_K,
    TOP_P,
    TURN_END_TOKENS,
)
from qwythos.core.model.summary import exportable
from qwythos.export.modelfile import Command, parse_modelfile, render_modelfile, to_request
from qwythos.export.settings import load_settings

#: Ollama model names: [namespace/]name[:tag] of letters, digits, '.', '_', '-'.
_NAME_RE = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9._-]*(?:/[A-Za-z0-9][A-Za-z0-9._-]*)?(?::[A-Za-z0-9_][A-Za-z0-9._-]*)?"
)
#: The model card's sampling as Ollama PARAMETER names, in the order they are written.
SAMPLING: dict[str, float | int] = {
    "temperature": TEMPERATURE,
    "top_p": TOP_P,
    "top_k": TOP_K,
    "repeat_penalty": REPEAT_PENALTY,
}
RENDERER = "qwen3.5"
PARSER = "qwen3.5"
#: Trunk-only files: the dedicated Qwen3.5 renderer/parser (0.17.6, #14605).
MIN_OLLAMA = "0.17.6"
#: Files with an MTP (nextn) layer: the llama-server engine (0.30.0, #16031), draft_num_predict.
MIN_OLLAMA_HEAD = "0.30.0"
#: Why, as the Modelfile's comment says it.
WHY_REQUIRES = {
    MIN_OLLAMA: (
        "0.17.6 brought Ollama's dedicated Qwen3.5 renderer and parser (#14605); before it the name "
        "qwen3.5 meant the Qwen3-VL renderer and the Qwen3 parser."
    ),
    MIN_OLLAMA_HEAD: (
        "this file has an MTP (nextn) layer, counted in its block_count: only Ollama's llama-server "
        "engine (0.30.0, #16031) loads it, even with drafting off, and draft_num_predict exists "
        "since 0.30.0."
    ),
}


@dataclass
class ModelfileSpec:
    """Everything the Modelfile text depends on (no file access needed to render it)."""

    from_path: str  # as written after FROM: relative to the Modelfile's folder
    file_name: str
    quant: str
    has_mtp: bool
    #: the file declares a nextn layer (nextn_predict_layers > 0), with or without its tensors
    declares_head: bool | None = None  # None: same as has_mtp
    num_ctx: int = START_CONTEXT
    draft: int = 0  # draft_num_predict; 0 = not written
    stop: list[str] = field(default_factory=lambda: list(TURN_END_TOKENS))
    name: str = LOCAL_NAME
    generated_by: str = "`qwythos export ollama`"
    modelfile_name: str = "Modelfile"
    projector_path: str | None = None  # the vision projector, a second FROM (relative like from_path)


@dataclass
class OllamaExport:
    modelfile: Path
    gguf: Path
    name: str
    quant: str
    has_mtp: bool
    draft: int
    num_ctx: int
    unchanged: bool
    create_command: str
    requires: str
    text: str
    warnings: list[str] = field(default_factory=list)
    mmproj_note: str | None = None  # "vision projector: FILE (how it was chosen)"


def required_version(spec: ModelfileSpec) -> str:
    """The lowest Ollama release that runs the file as the Modelfile configures it."""
    head = spec.has_mtp if spec.declares_head is None else spec.declares_head
    return MIN_OLLAMA_HEAD if head or spec.has_mtp or spec.draft > 0 else MIN_OLLAMA


def modelfile_commands(spec: ModelfileSpec) -> list[Command]:
    cmds = [Command("model", spec.from_path)]
    if spec.projector_path:
        cmds.append(Command("model", spec.projector_path))
    cmds += [
        Command("requires", required_version(spec)),
        Command("renderer", RENDERER),
        Command("parser", PARSER),
    ]
    cmds += [Command(k, _num(v)) for k, v in SAMPLING.items()]
    cmds.append(Command("num_ctx", str(spec.num_ctx)))
    cmds += [Command("stop", s) for s in spec.stop]
    if spec.draft > 0:
        cmds.append(Command("draft_num_predict", str(spec.draft)))
    cmds.append(Command("license", LICENSE_TEXT))
    return cmds


def _num(v: float | int) -> str:
    return str(v) if isinstance(v, int) else repr(float(v))


def render(spec: ModelfileSpec) -> str:
    """The Modelfile text for `spec`, with a comment header naming the file and the quant."""
    mtp = (
        f"embedded MTP head: yes, drafting {spec.draft} tokens per step (draft_num_predict)"
        if spec.draft > 0
        else ("embedded MTP head: yes, drafting off" if spec.has_mtp else "embedded MTP head: no")
    )
    version = required_version(spec)
    header = [
        f"Ollama Modelfile for {spec.file_name}",
        f"Qwythos-9B-Claude-Mythos-5-1M, quant {spec.quant}; {mtp}.",
        f"Generated by {spec.generated_by}; regenerate rather than edit.",
        f"Create:  ollama create {spec.name} -f {shlex.quote(spec.modelfile_name)}   "
        "(the GGUF sits next to this file)",
        f"Needs Ollama >= {version} (REQUIRES is recorded, not checked: install {version} or newer):",
        *_wrap(WHY_REQUIRES[version]),
        "RENDERER/PARSER qwen3.5: Ollama's own Qwen3.5 chat format, thinking and tool calls separated.",
    ]
    if spec.projector_path:
        header.append("The second FROM is the vision projector (mmproj): Ollama's create detects it.")
    return render_modelfile(modelfile_commands(spec), header)


def _wrap(text: str, width: int = 96) -> list[str]:
    return ["  " + line for line in textwrap.wrap(text, width)]


def default_spec() -> ModelfileSpec:
    """The repository's top-level Modelfile: the flagship the README's pipeline produces, the
    Q4_K_M file with its MTP head restored (`...-Q4_K_M-MTP.gguf`), drafting on."""
    return ModelfileSpec(
        from_path=f"./{FLAGSHIP_FILE}",
        file_name=FLAGSHIP_FILE,
        quant=DEFAULT_QUANT_ORDER[0],
        has_mtp=True,
        draft=DEFAULT_DRAFT,
        generated_by="scripts/make_modelfile.py",
    )


def _from_path(gguf: Path, modelfile: Path) -> str:
    rel = os.path.relpath(gguf.resolve(), modelfile.resolve().parent)
    rel = rel.replace(os.sep, "/")
    return rel if rel.startswith("../") else f"./{rel}"


def export_ollama(
    gguf: Path,
    out: Path | None = None,
    *,
    name: str = LOCAL_NAME,
    ctx: int | None = None,
    draft: int | None = None,
    force: bool = False,
    mmproj: Path | None = None,
) -> OllamaExport:
    """Validate `gguf` (a qwen35 GGUF) and write its Modelfile (default: beside the GGUF).

    `ctx` and `draft` as `settings.load_settings` checks them (START_CONTEXT, or the file's trained
    context when that is smaller; DEFAULT_DRAFT with an MTP head)."""
    gguf = Path(gguf)
    if not _NAME_RE.fullmatch(name):
        raise QwythosError(
            f"--name {name!r} is not an Ollama model name", f"use letters, digits, . _ - (e.g. {LOCAL_NAME})"
        )
    view = read_view(gguf)
    summary = exportable(view)
    out = Path(out) if out is not None else gguf.parent / "Modelfile"
    if out.is_dir():
        out = out / "Modelfile"
    ctx, draft = load_settings(summary, "Ollama", ctx, draft)
    ensure_writable_dir(out.parent, "folder")
    projector = choose_mmproj(view, mmproj)
    spec = ModelfileSpec(
        from_path=_from_path(gguf, out),
        file_name=gguf.name,
        quant=summary.quant,
        has_mtp=summary.mtp_present,
        declares_head=summary.nextn_predict_layers > 0,
        num_ctx=ctx,
        draft=draft,
        stop=list(summary.turn_end_tokens),
        name=name,
        modelfile_name=out.name,
        projector_path=_from_path(projector.path, out) if projector is not None else None,
    )
    text = render(spec)
    # The file must mean to Ollama what we meant: parse it back and apply create's checks.
    req = to_request(parse_modelfile(text, str(out)), out.resolve().parent, str(out))
    if req.model_path is None or req.model_path.resolve() != gguf.resolve():
        raise QwythosError(f"internal error: FROM in {out} does not resolve to {gguf}", None)
    if projector is not None and [f.resolve() for f in req.files] != [projector.path.resolve()]:
        raise QwythosError(
            f"internal error: the second FROM in {out} does not resolve to {projector.path}", None
        )

    unchanged = write_export_text(out, text, force)
    return OllamaExport(
        modelfile=out,
        gguf=gguf,
        name=name,
        quant=summary.quant,
        has_mtp=summary.mtp_present,
        draft=draft,
        num_ctx=ctx,
        unchanged=unchanged,
        create_command=f"ollama create {name} -f {shlex.quote(str(out))}",
        requires=required_version(spec),
        text=text,
        warnings=list(summary.warnings),
        mmproj_note=projector.note if projector is not None else None,
    )
