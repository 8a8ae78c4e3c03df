"""What the generating commands share (run, chat; bench the placement): their flags, declared once
as flag groups (commands/common.FlagGroup), and opening an engine from them.

- ENGINE_FLAGS: --draft --no-mtp -t --draft-model --ctx -> EngineFlags (the draft value checked once, by
  runtime/draft_plan.parse_draft);
- SAMPLING_FLAGS: --temp --top-k --top-p --min-p --repeat-penalty --seed -> SamplingParams (the
  model card's values where a flag is not given);
- PLACEMENT_FLAGS: --rpc -ngl -> PlacementFlags (where the layers run, -ngl auto by default; a
  placement choice adds its flags here, and run, chat and bench all take them);
- `open_engine`: the model loaded where the placement says, its draft plan, the vision projector,
  and the Engine on them; `close_engine` undoes it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import typer

from qwythos.commands.common import FlagGroup, err_console
from qwythos.core import limits
from qwythos.core.errors import QwythosError
from qwythos.core.llamacpp.placement import AUTO as AUTO_LAYERS
from qwythos.core.llamacpp.placement import may_offload, parse_gpu_layers
from qwythos.core.model import release
from qwythos.runtime.sampling import CARD_SAMPLING, SamplingParams


@dataclass(frozen=True)
class EngineFlags:
    """How to draft ("auto", or a length; 0: plain) and the flags that said so, the threads, the context."""

    draft: int | str
    no_mtp: bool = False
    threads: int | None = None
    draft_model: Path | None = None
    ctx: int | None = None  # None: START_CONTEXT, or the model's trained context when smaller

    @property
    def mtp(self) -> bool | None:
        """Load the MTP head: False with --no-mtp, True when a length insists on it, else if present."""
        return False if self.no_mtp else (True if isinstance(self.draft, int) and self.draft > 0 else None)


@dataclass(frozen=True)
class PlacementFlags:
    """Where the layers run (core/llamacpp/handles.load_model): rpc-server workers, layers offloaded
    ("auto": placed from the GPUs' free memory, core/llamacpp/placement.py)."""

    rpc: str | None = None
    gpu_layers: int | str = AUTO_LAYERS


def placement_from_flags(rpc: str | None, gpu_layers: str) -> PlacementFlags:
    """--rpc and -ngl (auto or a number of layers), checked."""
    return PlacementFlags(rpc, parse_gpu_layers(gpu_layers))


GPU_LAYERS_OPTION = typer.Option(
    AUTO_LAYERS,
    "-ngl",
    "--gpu-layers",
    help="Layers offloaded to GPUs or --rpc workers: auto (default: every layer that fits in the GPUs' "
    "free memory, else as many as fit; none without a GPU; all with --rpc), 0 (CPU only) or a number.",
)


def engine_from_flags(
    draft: str | None, no_mtp: bool, threads: int | None, draft_model: Path | None, ctx: int | None
) -> EngineFlags:
    """--draft (auto by default), --no-mtp, --threads, --draft-model and --ctx, checked."""
    from qwythos.runtime.draft_plan import AUTO, parse_draft

    d = None if draft is None else parse_draft(draft)
    if d is not None and no_mtp:
        raise QwythosError("--draft and --no-mtp contradict each other", "pass one of them")
    limits.check_threads(threads)
    if ctx is not None and ctx < 1:
        raise QwythosError(
            f"--ctx {ctx} must be a positive number of tokens", f"e.g. --ctx {release.START_CONTEXT}"
        )
    return EngineFlags(0 if no_mtp else (AUTO if d is None else d), no_mtp, threads, draft_model, ctx)


def sampling_from_flags(
    temp: float | None,
    top_k: int | None,
    top_p: float | None,
    min_p: float | None,
    repeat_penalty: float | None,
    seed: int | None,
) -> SamplingParams:
    """The model card's sampling with the flags given in its place, checked."""
    c = CARD_SAMPLING
    limits.check_seed(seed)
    for flag, v, ok, want in (
        ("--temp", temp, lambda x: x >= 0, f"0 (greedy) or more; the card uses {c.temperature}"),
        ("--top-k", top_k, lambda x: x >= 0, f"0 (off) or more; the card uses {c.top_k}"),
        ("--top-p", top_p, lambda x: 0 < x <= 1, f"a number in (0, 1]; the card uses {c.top_p}"),
        ("--min-p", min_p, lambda x: 0 <= x <= 1, "a number from 0 to 1"),
        (
            "--repeat-penalty",
            repeat_penalty,
            lambda x: x > 0,
            f"above 0 (1 = off); the card uses {c.repeat_penalty}",
        ),
    ):
        if v is not None and not ok(limits.check_finite(v, flag)):
            raise QwythosError(f"{flag} {v} is out of range", f"use {want}")
    given = dict(temperature=temp, top_k=top_k, top_p=top_p, min_p=min_p, repeat_penalty=repeat_penalty)
    return replace(c, seed=seed, **{k: v for k, v in given.items() if v is not None})


THREADS_OPTION = typer.Option(None, "-t", "--threads", help="CPU threads (default: all; QWYTHOS_THREADS).")
TOOLS_OPTION = typer.Option(
    None, "--tools", help="JSON file of tool definitions (OpenAI style) the model may call."
)

ENGINE_FLAGS = FlagGroup(
    engine_from_flags,
    draft=(
        str | None,
        typer.Option(
            None,
            "--draft",
            help="MTP drafts per step: auto (default: measured on this machine and file, plain when "
            "drafting does not pay), or a number to force it.",
        ),
    ),
    no_mtp=(bool, typer.Option(False, "--no-mtp", help="Plain decoding, no drafts.")),
    threads=(int | None, THREADS_OPTION),
    draft_model=(Path | None, typer.Option(None, "--draft-model", help="A separate MTP draft GGUF.")),
    ctx=(
        int | None,
        typer.Option(
            None,
            "--ctx",
            help=f"Context length (default {release.START_CONTEXT}, or the model's trained context when "
            "smaller; at most the trained context).",
        ),
    ),
)
SAMPLING_FLAGS = FlagGroup(
    sampling_from_flags,
    temp=(
        float | None,
        typer.Option(None, "--temp", help=f"Temperature (card: {release.TEMPERATURE}; 0 = greedy)."),
    ),
    top_k=(int | None, typer.Option(None, "--top-k", help=f"Top-k (card: {release.TOP_K}; 0 = off).")),
    top_p=(float | None, typer.Option(None, "--top-p", help=f"Top-p (card: {release.TOP_P}; 1 = off).")),
    min_p=(float | None, typer.Option(None, "--min-p", help=f"Min-p (card: {release.MIN_P}; 0 = off).")),
    repeat_penalty=(
        float | None,
        typer.Option(
            None, "--repeat-penalty", help=f"Repetition penalty (card: {release.REPEAT_PENALTY}; 1 = off)."
        ),
    ),
    seed=(int | None, typer.Option(None, "--seed", help="Sampling seed (default: a random one).")),
)
PLACEMENT_FLAGS = FlagGroup(
    placement_from_flags,
    rpc=(
        str | None,
        typer.Option(
            None,
            "--rpc",
            help="llama.cpp rpc-server workers HOST:PORT[,HOST:PORT] that hold layers (start them with "
            "`qwythos rpc-server`); each is checked before loading.",
        ),
    ),
    gpu_layers=(str, GPU_LAYERS_OPTION),
)


def choose_projector(model_path: Path, mmproj: Path | None, images: list[Path] | None = None):
    """--mmproj, else the mmproj*.gguf beside the model (said on stderr); None when there is none.
    Images without any projector: one message."""
    from qwythos.core.gguf.mmproj import choose_mmproj

    choice = choose_mmproj(model_path, mmproj)
    if choice is None and images:
        raise QwythosError(
            f"--image {images[0]} needs a vision projector, and none lies beside {model_path.name}",
            "pass the mmproj file with --mmproj (`qwythos convert SRC -o MODEL.gguf --mmproj MMPROJ.gguf` writes one)",
        )
    if choice is not None and choice.how != "--mmproj":
        err_console.print(f"[dim]{choice.note}[/]")
    return choice


def open_engine(model_path: Path, engine: EngineFlags, placement: PlacementFlags, projector=None):
    """Load the model and its engine (model, engine); `--draft auto` by default (plain, with a
    warning, without a head). projector: a core/gguf/mmproj.ProjectorChoice to load for images
    (engine.vision)."""
    from qwythos.core.llamacpp.handles import load_model
    from qwythos.core.model.memory import check_context
    from qwythos.runtime.draft_plan import draft_plan
    from qwythos.runtime.speculative import Engine
    from qwythos.runtime.vision import Vision

    # --ctx against the model's trained context and this machine's memory, from the header alone
    offloaded = may_offload(placement.gpu_layers, placement.rpc)
    n_ctx = check_context(model_path, engine.ctx, offloaded=offloaded).ctx
    model = load_model(
        model_path,
        mtp=engine.mtp,
        draft_path=engine.draft_model,
        rpc=placement.rpc,
        n_gpu_layers=placement.gpu_layers,
        n_ctx=n_ctx,
    )
    if model.workers:
        err_console.print(f"[dim]{placement_line(model)}[/]")
    elif model.gpu_layers and model.placed is not None:  # on a GPU (a CPU-only run says nothing)
        err_console.print(f"[dim]placement: {model.placed.reason}[/]", soft_wrap=True, highlight=False)
    if engine.draft != 0 and not model.has_mtp:  # auto on a file without a head: plain (the plan says why)
        err_console.print(f"[yellow]warning:[/] {model_path} has no MTP layer; decoding without drafts")
    vision = None
    try:
        plan = draft_plan(model, engine.draft, threads=engine.threads)
        if projector is not None:
            vision = Vision(model, projector.path, threads=engine.threads)
        return model, Engine(model, plan, n_ctx=n_ctx, threads=engine.threads, vision=vision)
    except BaseException:
        if vision is not None:
            vision.close()
        model.close()
        raise


def close_engine(model, eng) -> None:
    vis = eng.vision
    eng.close()
    if vis is not None:
        vis.close()
    model.close()


def image_text(text, vision):  # noqa: ANN001, ANN201 - a str or a core/model/chat_template.Prompt
    """The rendered prompt (text or Prompt) with the template's image placeholders turned into
    libmtmd's marker."""
    from qwythos.runtime.vision import IMAGE_PLACEHOLDER

    return text.replace(IMAGE_PLACEHOLDER, vision.marker)


def placement_line(model) -> str:
    ws = ", ".join(f"{w.endpoint} ({w.devices} device{'s' if w.devices > 1 else ''})" for w in model.workers)
    return f"{min(model.gpu_layers, model.info.n_layer + model.info.n_nextn)} layer(s) offloaded to rpc-server {ws}"


def stats_line(s) -> str:
    """A generation's GenStats as the one dim line run and chat print after a reply."""
    line = f"prompt {s.prompt_tokens} tok at {s.prompt_tps:.1f} tok/s, generated {s.gen_tokens} tok at {s.gen_tps:.1f} tok/s"
    if s.prefilled_tokens < s.prompt_tokens:
        line = line.replace(" tok at", f" tok ({s.prefilled_tokens} new) at", 1)
    if s.draft:
        per = " ".join(f"{r:.0%}" for r in s.acceptance_per_depth)
        what = (
            f"auto (up to {s.draft}, now {(s.auto or {}).get('final_choice')})"
            if s.draft_mode == "auto"
            else s.draft
        )
        line += (
            f"; MTP draft {what}: accepted {s.accepted}/{s.drafted} ({per}), {s.tokens_per_pass:.2f} tok/pass"
        )
    return line
