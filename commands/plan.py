"""`qwythos plan`: file sizes (llama.cpp's dry run, no weights) and memory at a context.

A thin layer over quantize/plan.py; `--mtp-type` is `qwythos quantize`'s option; `--types` defaults
to the smaller sizes as well (quantize.plan.PLAN_TYPES).
"""

from __future__ import annotations

import typer

from qwythos.commands.common import JsonOption, app, console, print_json, simple_table
from qwythos.commands.quantize import MtpTypeOption
from qwythos.core.errors import QwythosError
from qwythos.core.model.memory import KV_TYPES
from qwythos.core.model.release import START_CONTEXT
from qwythos.quantize.plan import PLAN_TYPES
from qwythos.quantize.plan import plan as run_plan

PlanTypesOption = typer.Option(
    ",".join(PLAN_TYPES), "--types", help="Comma-separated llama.cpp types (default: the common sizes)."
)


@app.command()
def plan(
    src: str = typer.Argument(..., help="GGUF, HF folder, or config.json."),
    types: str = PlanTypesOption,
    ctx: int = typer.Option(START_CONTEXT, "--ctx", help="Context length for the memory estimate."),
    kv_type: str = typer.Option(
        KV_TYPES[0], "--kv-type", help=f"KV cache type: {', '.join(KV_TYPES[:-1])} or {KV_TYPES[-1]}."
    ),
    mtp_type: str = MtpTypeOption,
    json_out: bool = JsonOption,
) -> None:
    """Predict file sizes (llama.cpp's dry run, no weights needed) and memory at a context."""
    if ctx < 1:
        raise QwythosError(f"--ctx {ctx} must be a positive number of tokens", f"e.g. --ctx {START_CONTEXT}")
    p = run_plan(src, types, ctx, kv_type, mtp_type=mtp_type)
    if json_out:
        print_json(p)
        return
    console.print(
        simple_table(
            f"plan for {src} ({p.n_params / 1e9:.2f} B params, ctx {ctx}, KV {kv_type})",
            ["type", "file GiB", "+MTP GiB", "bpw", "MTP type", "memory GiB", "imatrix"],
            [
                [
                    t.type,
                    f"{t.file_gib:.3f}",
                    "-" if t.with_mtp_gib is None else f"{t.with_mtp_gib:.3f}",
                    f"{t.bpw:.2f}",
                    t.mtp_type,
                    f"{t.memory_gib:.2f}",
                    "needed" if t.needs_imatrix else "-",
                ]
                for t in p.types
            ],
        )
    )
    console.print(
        f"KV cache {p.kv_cache_bytes / 2**30:.3f} GiB, recurrent state {p.recurrent_state_bytes / 2**20:.1f} MiB "
        "(compute buffers not included)"
    )
    if p.mmproj_bytes is not None:
        console.print(
            f"vision projector (mmproj, {(p.mmproj_type or '?').upper()}) {p.mmproj_bytes / 2**30:.3f} GiB "
            f"({p.mmproj_bytes:,} B, {p.mmproj_source})"
        )
    for n in p.notes:
        console.print(f"[yellow]note:[/] {n}")
