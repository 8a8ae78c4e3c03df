"""Write a KoboldCpp `.kcpps` launch config for a Qwythos GGUF and the matching launch command.

A `.kcpps` is a JSON object keyed by koboldcpp.py's argparse destination names. `--config FILE`
parses the command line first, so every argument already holds its default, then sets each key of
the file on that namespace (flags given on the command line win). So a partial file loads: keys it
lacks keep KoboldCpp's own defaults. We write only what matters for this model and nothing we
would have to guess (e.g. no GPU backend: KoboldCpp picks one, `--usecuda`/`--usevulkan` can be
added at launch).

The keys follow KoboldCpp 1.117's arguments (re-stated, not copied; tests/test_export_koboldcpp.py
writes the same rules down as an argparse parser):

- `model` is a list of paths and `model_param` the path the loader uses; we write both, absolute
  (KoboldCpp opens it relative to its working folder, not the .kcpps).
- `contextsize` is checked to 256..524288.
- `quantkv` is a string choice: f16, bf16, q8_0, q5_1, q4_0.
- No `flashattention`: the key is deprecated, flash attention is on by default.
- `gendefaults`: the model card's sampling as the JSON text KoboldCpp reads for request defaults
  (`rep_pen` is KoboldCpp's name for the repetition penalty, which it takes as the largest of
  `rep_pen` / `repetition_penalty` / `repeat_penalty`).
- `jinja` (the GGUF's own chat template) and `jinja_tools` when that template handles tools
  (tool calls through the template; without it KoboldCpp formats tool calls its own way).
- `mmproj`: the vision projector, absolute (`--mmproj FILE`, else an mmproj*.gguf beside the GGUF).
- `usemtp` + `draftamount` only for a file with the MTP head. MTP needs KoboldCpp >= 1.116: 1.115
  (where `usemtp` arrived) ran the draft on the CPU (#2275); the printed launch lines say so.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from qwythos.core.errors import QwythosError
from qwythos.core.fileio import write_export_text
from qwythos.core.gguf.mmproj import choose_mmproj
from qwythos.core.gguf.view import read_view
from qwythos.core.model.release import MIN_P, REPEAT_PENALTY, START_CONTEXT, TEMPERATURE, TOP_K, TOP_P
from qwythos.core.model.summary import exportable
from qwythos.export.settings import check_draft, load_settings

#: The KoboldCpp release whose arguments the config is written for.
KOBOLD_VERSION = "1.117"
#: MTP drafting on the GPU (1.115 drafted on the CPU, #2275).
KOBOLD_MTP_VERSION = "1.116"
CONTEXT_MIN = 256
CONTEXT_MAX = 524288
DEFAULT_GPULAYERS = -1  # KoboldCpp: -1 = detect how many layers fit
#: KoboldCpp's KV cache types (--quantkv choices).
QUANTKV_CHOICES = ("f16", "bf16", "q8_0", "q5_1", "q4_0")
#: The model card's sampling, under the request field names KoboldCpp's API uses.
GENDEFAULTS: dict[str, float | int] = {
    "temperature": TEMPERATURE,
    "top_p": TOP_P,
    "top_k": TOP_K,
    "min_p": MIN_P,
    "rep_pen": REPEAT_PENALTY,
}


@dataclass
class KoboldExport:
    kcpps: Path
    gguf: Path
    config: dict
    has_mtp: bool
    unchanged: bool
    launch_command: str
    launch_command_flags: str
    requires: str  # the KoboldCpp version the printed lines name
    note: str  # why that version, appended to the printed lines as a shell comment
    warnings: list[str] = field(default_factory=list)
    mmproj: str | None = None  # "vision projector: FILE (how it was chosen)"


def kcpps_config(
    model: Path,
    *,
    contextsize: int = START_CONTEXT,
    gpulayers: int = DEFAULT_GPULAYERS,
    threads: int | None = None,
    quantkv: str = "f16",
    draft: int = 0,
    tools: bool = True,
) -> dict:
    """The .kcpps dict (argparse dest -> value); raises QwythosError on values KoboldCpp refuses.
    `draft` > 0 turns MTP drafting on (`usemtp`) with that many tokens (`draftamount`)."""
    if not CONTEXT_MIN <= contextsize <= CONTEXT_MAX:
        raise QwythosError(
            f"--ctx {contextsize} is outside KoboldCpp's range {CONTEXT_MIN}..{CONTEXT_MAX}",
            f"pick e.g. {START_CONTEXT}, {2 * START_CONTEXT} or {4 * START_CONTEXT}",
        )
    if gpulayers < -1:
        raise QwythosError(f"--gpulayers {gpulayers} is invalid", "use -1 (auto), 0 (CPU) or a layer count")
    if threads is not None and threads < 1:
        raise QwythosError(f"--threads {threads} is invalid", "use a positive count or leave it out")
    if quantkv not in QUANTKV_CHOICES:
        raise QwythosError(f"--quantkv {quantkv!r} is invalid", f"use one of {', '.join(QUANTKV_CHOICES)}")
    path = str(Path(model).resolve())
    cfg: dict = {
        "model": [path],
        "model_param": path,
        "contextsize": contextsize,
        "gpulayers": gpulayers,
        "quantkv": quantkv,
        "jinja": True,
    }
    if tools:
        cfg["jinja_tools"] = True
    cfg["gendefaults"] = json.dumps(GENDEFAULTS, separators=(",", ":"))
    if threads is not None:
        cfg["threads"] = threads
    if check_draft(draft) > 0:
        cfg["usemtp"] = True
        cfg["draftamount"] = draft
    return cfg


def launch_flags(cfg: dict) -> list[str]:
    """The command-line flags equal to `cfg` (booleans as bare flags, lists as several values)."""
    flags: list[str] = []
    for key, value in cfg.items():
        if key == "model_param":
            continue
        if value is True:
            flags.append(f"--{key}")
        elif value is False or value is None:
            continue
        elif isinstance(value, list):
            flags += [f"--{key}", *map(str, value)]
        else:
            flags += [f"--{key}", str(value)]
    return flags


def export_koboldcpp(
    gguf: Path,
    out: Path | None = None,
    *,
    contextsize: int | None = None,
    gpulayers: int = DEFAULT_GPULAYERS,
    threads: int | None = None,
    quantkv: str = "f16",
    draft: int | None = None,
    force: bool = False,
    mmproj: Path | None = None,
) -> KoboldExport:
    """Validate `gguf`, write `<stem>.kcpps` (default: beside the GGUF) and return the launch command.
    The vision projector (`mmproj`, else an mmproj*.gguf beside the GGUF) goes in the `mmproj` key.

    `contextsize` and `draft` as `settings.load_settings` checks them, inside KoboldCpp's range."""
    gguf = Path(gguf)
    view = read_view(gguf)
    summary = exportable(view)
    contextsize, draft = load_settings(
        summary, "KoboldCpp", contextsize, draft, ctx_range=(CONTEXT_MIN, CONTEXT_MAX)
    )
    cfg = kcpps_config(
        gguf,
        contextsize=contextsize,
        gpulayers=gpulayers,
        threads=threads,
        quantkv=quantkv,
        draft=draft,
        tools=summary.chat_template_tools,
    )
    projector = choose_mmproj(view, mmproj)
    if projector is not None:
        cfg["mmproj"] = str(projector.path.resolve())
    out = Path(out) if out is not None else gguf.with_suffix(".kcpps")
    if out.is_dir():
        out = out / gguf.with_suffix(".kcpps").name
    if out.suffix.lower() not in (".kcpps",):
        raise QwythosError(
            f"{out} does not end in .kcpps", "KoboldCpp recognises configs by the .kcpps ending"
        )
    text = json.dumps(cfg, indent=2) + "\n"
    unchanged = write_export_text(out, text, force)
    if draft > 0:
        note = (
            f"KoboldCpp >= {KOBOLD_VERSION} (config keys of {KOBOLD_VERSION}; MTP needs >= "
            f"{KOBOLD_MTP_VERSION}: 1.115 ran the draft on the CPU, #2275)"
        )
    else:
        note = f"KoboldCpp >= {KOBOLD_VERSION} (config keys of {KOBOLD_VERSION})"
    return KoboldExport(
        kcpps=out,
        gguf=gguf,
        config=cfg,
        has_mtp=draft > 0,
        unchanged=unchanged,
        launch_command=f"koboldcpp --config {shlex.quote(str(out))}  # {note}",
        launch_command_flags="koboldcpp "
        + " ".join(shlex.quote(f) for f in launch_flags(cfg))
        + f"  # {note}",
        requires=KOBOLD_VERSION,
        note=note,
        warnings=list(summary.warnings),
        mmproj=projector.note if projector is not None else None,
    )
