"""qwythos run: one reply, printed (or as JSON)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from qwythos.commands import engine_flags as flags
from qwythos.commands.common import JsonOption, app, console, err_console, print_json, with_flag_groups
from qwythos.core.errors import QwythosError
from qwythos.core.fileio import check_utf8_arg
from qwythos.runtime.sampling import SamplingParams


def _draft_choice(eng, gen) -> dict:
    """What `run --json` says about drafting: the mode, and for auto what it chose and why."""
    s = gen.stats
    if s.draft_mode == "auto":
        a = s.auto or {}
        return {"mode": "auto", "chosen": a.get("final_choice"), "reason": a.get("reason"), "auto": a}
    if s.draft_mode == "fixed":
        return {"mode": "fixed", "chosen": s.draft, "reason": "--draft"}
    return {"mode": "plain", "chosen": 0, "reason": eng.plan.reason or "--no-mtp or --draft 0"}


@app.command("run")
@with_flag_groups
def run_cmd(
    model_path: Path = typer.Argument(..., help="A qwen35 .gguf (with an MTP head for drafting)."),
    prompt: str = typer.Option(..., "-p", "--prompt", help="The user message."),
    system: str | None = typer.Option(None, "--system", help="A system message."),
    engine: flags.EngineFlags = flags.ENGINE_FLAGS,
    sampling: SamplingParams = flags.SAMPLING_FLAGS,
    max_tokens: int = typer.Option(1024, "--max-tokens"),
    raw: bool = typer.Option(False, "--raw", help="Send the prompt as is, without the chat template."),
    no_think: bool = typer.Option(False, "--no-think", help="Ask the template to skip reasoning."),
    tools_file: Path | None = flags.TOOLS_OPTION,
    show_thinking: bool = typer.Option(False, "--show-thinking", help="Print the reasoning too."),
    mmproj: Path | None = typer.Option(
        None, "--mmproj", help="Vision projector GGUF (default: an mmproj*.gguf beside the model)."
    ),
    images: list[Path] | None = typer.Option(
        None, "--image", help="A picture (PNG, JPEG, ...) placed before the message; repeat for more."
    ),
    placement: flags.PlacementFlags = flags.PLACEMENT_FLAGS,
    json_out: bool = JsonOption,
) -> None:
    """Generate one reply (with exact MTP speculative decoding when the GGUF has a head)."""
    from qwythos.core.llamacpp.prompt_tokens import PromptTokens, render_for, tokenize_prompt
    from qwythos.core.model.chat_template import IMAGE_PART, Prompt
    from qwythos.runtime.chat import TURN_END, load_tools, parse_output
    from qwythos.runtime.speculative import check_max_tokens

    check_utf8_arg(prompt, "-p")
    check_utf8_arg(system, "--system")
    if not raw and not prompt.strip():
        raise QwythosError('-p "" is an empty message', "pass the message with -p, or use `qwythos chat`")
    check_max_tokens(max_tokens)
    tools = load_tools(tools_file) if tools_file is not None else None
    images = list(images or [])
    if images and raw:
        raise QwythosError("--raw cannot place --image", "drop --raw: the chat template places the pictures")
    for img in images:
        if not img.is_file():
            what = "is a folder, not a picture" if img.is_dir() else "does not exist"
            raise QwythosError(f"--image {img} {what}", "pass the path of a PNG or JPEG file with --image")
    projector = flags.choose_projector(model_path, mmproj, images) if images or mmproj else None
    model, eng = flags.open_engine(model_path, engine, placement, projector if images else None)
    layout = None
    try:
        if raw:  # the user writes the whole prompt, control tokens included
            rendered, think_open = Prompt(prompt), False
        else:
            from qwythos.runtime.vision import IMAGE_PLACEHOLDER

            content = [IMAGE_PART] * len(images) + [{"type": "text", "text": prompt}]
            msgs = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": content}
            ]
            rendered = render_for(
                model, msgs, tools=tools, enable_thinking=not no_think, image_text=IMAGE_PLACEHOLDER
            )
            think_open = rendered.text.rstrip().endswith("<think>")
        if images:
            layout = eng.vision.tokenize(flags.image_text(rendered, eng.vision), images)
            text_tokens = [t for s in layout.segments if s.kind == "text" for t in s.tokens]
            prompt_tokens = PromptTokens.counted(model, text_tokens, len(rendered.literals))
            gen = eng.generate(layout, max_tokens=max_tokens, sampling=sampling, stop=list(TURN_END))
        else:
            prompt_tokens = tokenize_prompt(model, rendered)
            gen = eng.generate(
                prompt_tokens.tokens, max_tokens=max_tokens, sampling=sampling, stop=list(TURN_END)
            )
    finally:
        if layout is not None:
            eng.vision.free_layout(layout)
        flags.close_engine(model, eng)
    out = parse_output(gen.text, think_open=think_open, tools=tools) if not raw else None
    if json_out:
        print_json(
            {
                "generation": gen.to_dict(),
                "prompt": prompt_tokens.to_dict(),
                "parsed": out.to_dict() if out else None,
                "draft": _draft_choice(eng, gen),
                "images": [
                    {"path": s.source, "nx": s.nx, "ny": s.ny, "tokens": s.n_tokens, "positions": s.n_pos}
                    for s in (layout.images if layout is not None else [])
                ],
                "mmproj": str(projector.path) if projector is not None else None,
                "placement": {
                    **(model.placed.to_dict() if model.placed is not None else {}),
                    "gpu_layers": model.gpu_layers,
                    "rpc": [w.to_dict() for w in model.workers],
                },
            }
        )
        if gen.finish_reason == "interrupted":
            raise typer.Exit(130)
        return
    if out is None:
        console.print(gen.text, markup=False, highlight=False)
    else:
        if show_thinking and out.reasoning:
            console.print(out.reasoning, style="dim", markup=False, highlight=False)
            console.print()
        console.print(out.answer, markup=False, highlight=False)
        for c in out.tool_calls:
            console.print(f"[cyan]tool call:[/] {c.name} {json.dumps(c.arguments)}")
        for e in out.errors:
            console.print(f"[yellow]warning:[/] {e}")
    if gen.finish_reason == "interrupted":
        err_console.print("[yellow]interrupted[/]")
    err_console.print(f"[dim]{flags.stats_line(gen.stats)}[/]")
    if gen.finish_reason == "interrupted":
        raise typer.Exit(130)  # the partial reply and its stats are shown; the exit says it was cut
