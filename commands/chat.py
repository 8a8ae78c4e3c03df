"""qwythos chat: an interactive conversation, streamed, reusing the cache between turns; its commands
and state are runtime/repl.py's, this is the terminal loop around them."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape

from qwythos.commands import engine_flags as flags
from qwythos.commands.common import app, console, err_console, with_flag_groups
from qwythos.core.errors import QwythosError
from qwythos.core.fileio import check_utf8_arg, register_inputs
from qwythos.runtime.sampling import SamplingParams


def _show_pieces(pieces: list[tuple[str, str]], hide_thinking: bool, shown: dict) -> None:
    """Print streamed (kind, text) pieces: reasoning dimmed (or hidden), a line break where the
    shown reasoning ends and the answer begins. `shown` remembers the last kind printed."""
    for kind, text in pieces:
        if kind == "reasoning":
            if not hide_thinking:
                console.print(text, style="dim", end="", markup=False, highlight=False)
                shown["last"] = kind
        else:
            if shown.get("last") == "reasoning":
                console.print()
            console.print(text, end="", markup=False, highlight=False)
            shown["last"] = kind


@app.command("chat")
@with_flag_groups
def chat_cmd(
    model_path: Path = typer.Argument(..., help="A qwen35 .gguf."),
    system: str | None = typer.Option(None, "--system", help="A system message."),
    engine: flags.EngineFlags = flags.ENGINE_FLAGS,
    sampling: SamplingParams = flags.SAMPLING_FLAGS,
    max_tokens: int = typer.Option(4096, "--max-tokens"),
    hide_thinking: bool = typer.Option(False, "--hide-thinking", help="Hide reasoning (default: dimmed)."),
    mmproj: Path | None = typer.Option(
        None, "--mmproj", help="Vision projector GGUF for /image (default: an mmproj*.gguf beside the model)."
    ),
    tools_file: Path | None = flags.TOOLS_OPTION,
    placement: flags.PlacementFlags = flags.PLACEMENT_FLAGS,
) -> None:
    """Interactive chat with streaming output, as `ollama run`: /help lists the commands (/set,
    /think, /clear, /image, /save, /load, \"\"\" for several lines); /bye (or Ctrl-D) quits; Ctrl-C stops
    a reply."""
    from qwythos.core.llamacpp.prompt_tokens import render_for, tokenize_prompt
    from qwythos.runtime import repl as R
    from qwythos.runtime.chat import TURN_END, ThinkStream, assistant_message, load_tools, parse_output
    from qwythos.runtime.vision import IMAGE_PLACEHOLDER

    check_utf8_arg(system, "--system")
    if max_tokens < 1:
        raise QwythosError(f"--max-tokens {max_tokens} must be at least 1", "e.g. --max-tokens 4096")
    tools = load_tools(tools_file) if tools_file is not None else None
    projector = flags.choose_projector(model_path, mmproj)
    register_inputs(model_path, projector.path if projector else None)  # /save never replaces them
    model, eng = flags.open_engine(model_path, engine, placement, projector)
    from qwythos.runtime.session import ChatSession

    session = ChatSession(eng)  # each turn prefills only what is new since the last prompt
    repl = R.Repl(
        system=system,
        sampling=sampling,
        check_image=lambda arg: _chat_image(arg, eng.vision, model_path),
        check_sampling=flags.sampling_from_flags,
    )
    plan = eng.plan
    console.print(
        R.banner(
            model_path.name, eng.n_ctx, plan.mode, plan.max_draft, engine.draft != 0 and not model.has_mtp
        ),
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    try:
        while True:
            try:
                line = input(repl.prompt)
            except EOFError:
                break
            except KeyboardInterrupt:
                if repl.cancel_input():  # Ctrl-C inside \"\"\" ... \"\"\" drops that message
                    console.print()
                    continue
                break
            except UnicodeDecodeError:
                line = "\udcff"  # the check below reports it
            try:
                check_utf8_arg(line, "that line")
            except QwythosError as e:
                err_console.print(f"[bold red]error:[/] {e.message}; set a UTF-8 terminal (LANG=C.UTF-8)")
                continue
            step = repl.feed(line)
            if step.kind == R.QUIT:
                break
            if step.kind == R.RESET:
                session.reset()
            if step.kind in (R.SHOW, R.RESET):
                console.print(step.text, markup=False, highlight=False)
            elif step.kind == R.ERROR:
                err_console.print(f"[bold red]error:[/] {escape(step.text)}")
            if step.kind != R.SEND:
                continue
            n_new = repl.begin_turn(step.text)
            rendered = render_for(
                model, repl.messages, tools=tools, image_text=IMAGE_PLACEHOLDER, enable_thinking=repl.thinking
            )
            think_open = rendered.text.rstrip().endswith("<think>")
            splitter = ThinkStream(thinking=think_open)
            shown: dict = {}

            def show(piece: str, splitter: ThinkStream = splitter, shown: dict = shown) -> None:
                _show_pieces(splitter.feed(piece), hide_thinking, shown)

            layout = None
            try:
                if repl.images:
                    layout = eng.vision.tokenize(flags.image_text(rendered, eng.vision), repl.images)
                gen = session.generate(
                    layout if layout is not None else tokenize_prompt(model, rendered).tokens,
                    max_tokens=max_tokens,
                    sampling=repl.sampling,
                    stop=list(TURN_END),
                    on_text=show,
                )
            except QwythosError as e:
                err_console.print(f"[bold red]error:[/] {escape(e.message)}")
                repl.drop_turn(n_new)
                continue
            finally:
                if layout is not None:
                    eng.vision.free_layout(layout)
            _show_pieces(splitter.flush(), hide_thinking, shown)
            console.print()
            out = parse_output(gen.text, think_open=think_open, tools=tools)
            for c in out.tool_calls:
                console.print(f"[cyan]tool call:[/] {escape(c.name)} {escape(json.dumps(c.arguments))}")
            for e in out.errors:
                console.print(f"[yellow]warning:[/] {escape(e)}")
            repl.end_turn(assistant_message(out))
            err_console.print(f"[dim]{flags.stats_line(gen.stats)}[/]")
    finally:
        repl.close()
        flags.close_engine(model, eng)


def _chat_image(arg: str, vision, model_path: Path) -> Path:
    """A `/image PATH` line's picture, checked now (decodable, a projector loaded)."""
    if not arg:
        raise QwythosError("/image needs a path", "e.g. /image photo.png")
    if vision is None:
        raise QwythosError(
            f"/image needs a vision projector, and none lies beside {model_path.name}",
            "restart with --mmproj FILE",
        )
    path = Path(arg).expanduser()
    vision.check_image(path)
    return path
