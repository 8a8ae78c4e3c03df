"""`qwythos export llama-server MODEL.gguf`: the llama-server command line for a Qwythos GGUF, for
users who move to llama.cpp's C++ server; written to a small shell script and printed.

The flags are those of the llama.cpp that llama-cpp-python 0.3.36 vendors (common/arg.cpp; the test
re-states them as a parser):

- `-m FILE`, `--alias` (the exports' local model name), `-c/--ctx-size` (START_CONTEXT, or the
  file's trained context when smaller, as every export), `--jinja` (the GGUF's own chat template:
  Qwen3.5's tools and reasoning);
- `-ngl N|auto|all` (default auto: llama.cpp fits the layers to the GPUs' free memory);
- the model card's sampling as the server's defaults: `--temp --top-p --top-k --min-p
  --repeat-penalty` (core/model/release.py);
- with an MTP head: `--spec-type draft-mtp --spec-draft-n-max N`, N the draft length `qwythos bench`
  recommended for this file on this machine (the draft-cost cache), else DEFAULT_DRAFT; no MTP
  flags for a file without a head;
- `--mmproj FILE` when a vision projector is given or lies beside the model (core/gguf/mmproj).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

from qwythos.core.errors import QwythosError
from qwythos.core.fileio import write_export_text
from qwythos.core.gguf.mmproj import choose_mmproj
from qwythos.core.gguf.view import read_view
from qwythos.core.model.release import LOCAL_NAME, MIN_P, REPEAT_PENALTY, TEMPERATURE, TOP_K, TOP_P
from qwythos.core.model.summary import exportable
from qwythos.export.engines import choose_draft
from qwythos.export.settings import load_settings

#: The executable llama.cpp builds (tools/server).
LLAMA_SERVER = "llama-server"
#: llama-server's speculative type for a GGUF's own MTP head.
SPEC_TYPE_MTP = "draft-mtp"
#: `-ngl` words llama-server takes besides a layer count.
GPU_LAYER_WORDS = ("auto", "all")
DEFAULT_GPU_LAYERS = "auto"
#: The script name beside the GGUF: `<stem>` + this.
SCRIPT_SUFFIX = ".llama-server.sh"


@dataclass
class LlamaServerExport:
    gguf: Path
    script: Path
    argv: list[str]  # llama-server and its flags
    command: str  # argv as one shell line
    draft: int  # 0: no MTP flags
    draft_source: str  # "--draft" | "bench" | "default" | "off"
    unchanged: bool
    warnings: list[str] = field(default_factory=list)
    mmproj: str | None = None  # "vision projector: FILE (how it was chosen)"


def check_gpu_layers(value: str | int) -> str:
    """`-ngl` as llama-server takes it: a layer count >= 0, auto or all."""
    text = str(value).strip().lower()
    if text in GPU_LAYER_WORDS or (text.isdigit() and int(text) >= 0):
        return text
    raise QwythosError(f"-ngl {value!r} is invalid", "use a layer count (0 = CPU only), auto or all")


def server_argv(
    gguf: Path,
    *,
    ctx: int,
    draft: int,
    gpu_layers: str = DEFAULT_GPU_LAYERS,
    mmproj: Path | None = None,
    alias: str = LOCAL_NAME,
) -> list[str]:
    """llama-server's command line (argv) for `gguf`; `draft` > 0 adds the MTP flags."""
    argv = [LLAMA_SERVER, "-m", str(Path(gguf).resolve()), "--alias", alias, "--ctx-size", str(ctx)]
    argv += ["-ngl", check_gpu_layers(gpu_layers), "--jinja"]
    argv += ["--temp", str(TEMPERATURE), "--top-p", str(TOP_P), "--top-k", str(TOP_K)]
    argv += ["--min-p", str(MIN_P), "--repeat-penalty", str(REPEAT_PENALTY)]
    if draft > 0:
        argv += ["--spec-type", SPEC_TYPE_MTP, "--spec-draft-n-max", str(draft)]
    if mmproj is not None:
        argv += ["--mmproj", str(Path(mmproj).resolve())]
    return argv


def _draft(gguf: Path, draft: int | None, has_head: bool) -> tuple[int, str]:
    """--draft, else what `qwythos bench` recommended here for the file, else DEFAULT_DRAFT."""
    if not has_head or draft is not None:
        return choose_draft(draft, None, has_head)
    try:
        return choose_draft(None, gguf, True)
    except QwythosError:  # bench measured nothing for this file on this machine
        return choose_draft(None, None, True)


def export_llama_server(
    gguf: Path,
    out: Path | None = None,
    *,
    ctx: int | None = None,
    draft: int | None = None,
    gpu_layers: str | int = DEFAULT_GPU_LAYERS,
    mmproj: Path | None = None,
    alias: str = LOCAL_NAME,
    force: bool = False,
) -> LlamaServerExport:
    """Validate `gguf`, write the launch script (`<stem>.llama-server.sh` beside it unless `out`)
    and return the command line. An existing script with other content is replaced only with force."""
    gguf = Path(gguf)
    view = read_view(gguf)
    summary = exportable(view)
    ctx, _ = load_settings(summary, "llama-server", ctx, draft)  # draft: checked against the head
    n, source = _draft(gguf, draft, summary.mtp_present)
    projector = choose_mmproj(view, mmproj)
    argv = server_argv(
        gguf,
        ctx=ctx,
        draft=n,
        gpu_layers=gpu_layers,
        mmproj=projector.path if projector is not None else None,
        alias=alias,
    )
    command = shlex.join(argv)
    out = Path(out) if out is not None else gguf.with_name(gguf.stem + SCRIPT_SUFFIX)
    if out.is_dir():
        out = out / (gguf.stem + SCRIPT_SUFFIX)
    text = f'#!/bin/sh\n# written by `qwythos export llama-server`; extra flags go after it\nexec {command} "$@"\n'
    unchanged = write_export_text(out, text, force, mode=0o755)
    return LlamaServerExport(
        gguf=gguf,
        script=out,
        argv=argv,
        command=command,
        draft=n,
        draft_source=source,
        unchanged=unchanged,
        warnings=list(summary.warnings),
        mmproj=projector.note if projector is not None else None,
    )
