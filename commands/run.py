"""qwythos run, chat, bench and demo."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from qwythos.commands.common import (
    JsonOption,
    app,
    console,
    err_console,
    fail,
    print_json,
    simple_table,
)
from qwythos.core.errors import QwythosError
from qwythos.core.fileio import check_utf8_arg
from qwythos.core.model.release import START_CONTEXT


def _sampling_from(temp, top_k, top_p, min_p, repeat_penalty, seed):
    from qwythos.runtime.chat import CARD_SAMPLING
    from qwythos.runtime.sampling import SamplingParams

    c = CARD_SAMPLING
    for flag, v, ok, want in (
        ("--temp", temp, lambda x: x >= 0, "0 (greedy) or more; the card uses 0.6"),
        ("--top-k", top_k, lambda x: x >= 0, "0 (off) or more; the card uses 20"),
        ("--top-p", top_p, lambda x: 0 < x <= 1, "a number in (0, 1]; the card uses 0.95"),
        ("--min-p", min_p, lambda x: 0 <= x <= 1, "a number from 0 to 1"),
        ("--repeat-penalty", repeat_penalty, lambda x: x > 0, "above 0 (1 = off); the card uses 1.05"),
    ):
        if v is not None and not ok(v):
            raise QwythosError(f"{flag} {v} is out of range", f"use {want}")
    return SamplingParams(
        temperature=c.temperature if temp is None else temp,
        top_k=c.top_k if top_k is None else top_k,
        top_p=c.top_p if top_p is None else top_p,
        min_p=c.min_p if min_p is None else min_p,
        repeat_penalty=c.repeat_penalty if repeat_penalty is None else repeat_penalty,
        seed=seed,
    )


def _parse_draft(draft: str | None) -> int | str | None:
    """--draft: auto or a number (None: not given)."""
    from qwythos.core.drafting.lengths import MAX_DRAFT

    if draft is None or draft.strip().lower() == "auto":
        return None if draft is None else "auto"
    try:
        return int(draft)
    except ValueError:
        raise QwythosError(f"--draft {draft!r} is not a number", f"use auto or 0..{MAX_DRAFT}") from None


def _choose_projector(model_path: Path, mmproj: Path | None, images: list[Path] | None = None):
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


def _open_vision(model, choice, threads: int | None):
    """The libmtmd context on the chosen projector (None without one)."""
    if choice is None:
        return None
    from qwythos.runtime.vision import Vision

    return Vision(model, choice.path, threads=threads)


def _close_all(model, eng) -> None:
    vis = getattr(eng, "vision", None)
    eng.close()
    if vis is not None:
        vis.close()
    model.close()


def _image_text(text: str, vision) -> str:
    """The rendered prompt with the template's image placeholders turned into libmtmd's marker."""
    from qwythos.runtime.vision import IMAGE_PLACEHOLDER

    return text.replace(IMAGE_PLACEHOLDER, vision.marker)


def _open_engine(
    model_path: Path,
    draft: str | None,
    no_mtp: bool,
    ctx: int,
    draft_model: Path | None,
    threads: int | None = None,
    projector=None,
    rpc: str | None = None,
    gpu_layers: int | None = None,
):
    """Load the model and its engine; `--draft auto` by default (plain, with a warning, without a head).
    projector: a core/gguf/mmproj.ProjectorChoice to load for images (engine.vision).
    rpc / gpu_layers: where the layers run (core/llamacpp/handles.load_model)."""
    from qwythos.core.llamacpp.handles import load_model
    from qwythos.runtime.speculative import AUTO, Engine

    d = _parse_draft(draft)
    if d is not None and no_mtp:
        raise QwythosError("--draft and --no-mtp contradict each other", "pass one of them")
    if ctx < 1:
        raise QwythosError(f"--ctx {ctx} must be a positive number of tokens", f"e.g. --ctx {START_CONTEXT}")
    if threads is not None and threads < 1:
        raise QwythosError(f"--threads {threads} must be at least 1", "e.g. -t 4 (default: all CPUs)")
    insist = isinstance(d, int) and d > 0
    model = load_model(
        model_path,
        mtp=False if no_mtp else (True if insist else None),
        draft_path=draft_model,
        rpc=rpc,
        n_gpu_layers=gpu_layers,
    )
    if model.workers:
        err_console.print(f"[dim]{_placement_line(model)}[/]")
    n = 0 if no_mtp else (d if d is not None else AUTO)
    if n != 0 and not model.has_mtp:  # auto on a file without a head: plain (the engine says why)
        err_console.print(f"[yellow]warning:[/] {model_path} has no MTP layer; decoding without drafts")
    vision = None
    try:
        vision = _open_vision(model, projector, threads)
        return model, Engine(model, n_ctx=ctx, draft=n, threads=threads, vision=vision)
    except BaseException:
        if vision is not None:
            vision.close()
        model.close()
        raise


def _placement_line(model) -> str:
    ws = ", ".join(f"{w.endpoint} ({w.devices} device{'s' if w.devices > 1 else ''})" for w in model.workers)
    return f"{min(model.gpu_layers, model.info.n_layer + model.info.n_nextn)} layer(s) offloaded to rpc-server {ws}"


def _draft_choice(eng, gen) -> dict:
    """What `run --json` says about drafting: the mode, and for auto what it chose and why."""
    s = gen.stats
    if s.draft_mode == "auto":
        a = s.auto or {}
        return {"mode": "auto", "chosen": a.get("final_choice"), "reason": a.get("reason"), "auto": a}
    if s.draft_mode == "fixed":
        return {"mode": "fixed", "chosen": s.draft, "reason": "--draft"}
    return {"mode": "plain", "chosen": 0, "reason": eng.auto_reason or "--no-mtp or --draft 0"}


def _stats_line(s) -> str:
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


_DRAFT_HELP = (
    "MTP drafts per step: auto (default: measured on this machine and file, plain when drafting "
    "does not pay), or a number to force it."
)
_THREADS_HELP = "CPU threads (default: all; QWYTHOS_THREADS)."
_RPC_HELP = (
    "llama.cpp rpc-server workers HOST:PORT[,HOST:PORT] that hold layers (start them with "
    "`qwythos rpc-server`); each is checked before loading."
)
_NGL_HELP = "Layers offloaded to GPUs or --rpc workers (default: 0; all of them with --rpc)."


@app.command("run")
def run_cmd(
    model_path: Path = typer.Argument(..., help="A qwen35 .gguf (with an MTP head for drafting)."),
    prompt: str = typer.Option(..., "-p", "--prompt", help="The user message."),
    system: str | None = typer.Option(None, "--system", help="A system message."),
    draft: str | None = typer.Option(None, "--draft", help=_DRAFT_HELP),
    no_mtp: bool = typer.Option(False, "--no-mtp", help="Plain decoding, no drafts."),
    threads: int | None = typer.Option(None, "-t", "--threads", help=_THREADS_HELP),
    draft_model: Path | None = typer.Option(None, "--draft-model", help="A separate MTP draft GGUF."),
    temp: float | None = typer.Option(None, "--temp", help="Temperature (card: 0.6; 0 = greedy)."),
    top_k: int | None = typer.Option(None, "--top-k"),
    top_p: float | None = typer.Option(None, "--top-p"),
    min_p: float | None = typer.Option(None, "--min-p"),
    repeat_penalty: float | None = typer.Option(None, "--repeat-penalty"),
    seed: int | None = typer.Option(None, "--seed"),
    max_tokens: int = typer.Option(1024, "--max-tokens"),
    ctx: int = typer.Option(START_CONTEXT, "--ctx", help="Context length (raise it for long inputs)."),
    raw: bool = typer.Option(False, "--raw", help="Send the prompt as is, without the chat template."),
    no_think: bool = typer.Option(False, "--no-think", help="Ask the template to skip reasoning."),
    tools_file: Path | None = typer.Option(
        None, "--tools", help="JSON file of tool definitions (OpenAI style) the model may call."
    ),
    show_thinking: bool = typer.Option(False, "--show-thinking", help="Print the reasoning too."),
    mmproj: Path | None = typer.Option(
        None, "--mmproj", help="Vision projector GGUF (default: an mmproj*.gguf beside the model)."
    ),
    images: list[Path] | None = typer.Option(
        None, "--image", help="A picture (PNG, JPEG, ...) placed before the message; repeat for more."
    ),
    rpc: str | None = typer.Option(None, "--rpc", help=_RPC_HELP),
    gpu_layers: int | None = typer.Option(None, "-ngl", "--gpu-layers", help=_NGL_HELP),
    json_out: bool = JsonOption,
) -> None:
    """Generate one reply (with exact MTP speculative decoding when the GGUF has a head)."""
    from qwythos.runtime.chat import TURN_END, load_tools, parse_output, render_chat

    check_utf8_arg(prompt, "-p")
    check_utf8_arg(system, "--system")
    if not raw and not prompt.strip():
        raise QwythosError('-p "" is an empty message', "pass the message with -p, or use `qwythos chat`")
    if max_tokens < 0:
        raise QwythosError(
            f"--max-tokens {max_tokens} is out of range", "use 0 or more (0 only reads the prompt)"
        )
    tools = load_tools(tools_file) if tools_file is not None else None
    sp = _sampling_from(temp, top_k, top_p, min_p, repeat_penalty, seed)
    images = list(images or [])
    if images and raw:
        raise QwythosError("--raw cannot place --image", "drop --raw: the chat template places the pictures")
    for img in images:
        if not img.is_file():
            raise QwythosError(
                f"image {img} does not exist", "pass the path of a PNG or JPEG file with --image"
            )
    projector = _choose_projector(model_path, mmproj, images) if images or mmproj else None
    model, eng = _open_engine(
        model_path, draft, no_mtp, ctx, draft_model, threads, projector if images else None, rpc, gpu_layers
    )
    layout = None
    try:
        if raw:
            text, think_open = prompt, False
        else:
            from qwythos.runtime.vision import IMAGE_PLACEHOLDER

            msgs = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": IMAGE_PLACEHOLDER * len(images) + prompt}
            ]
            text = render_chat(model.info.chat_template, msgs, tools=tools, enable_thinking=not no_think)
            think_open = text.rstrip().endswith("<think>")
        if images:
            layout = eng.vision.tokenize(_image_text(text, eng.vision), images)
            gen = eng.generate(layout, max_tokens=max_tokens, sampling=sp, stop=list(TURN_END))
        else:
            gen = eng.generate(model.tokenize(text), max_tokens=max_tokens, sampling=sp, stop=list(TURN_END))
    finally:
        if layout is not None:
            eng.vision.free_layout(layout)
        _close_all(model, eng)
    out = parse_output(gen.text, think_open=think_open, tools=tools) if not raw else None
    if json_out:
        print_json(
            {
                "generation": gen.to_dict(),
                "parsed": out.to_dict() if out else None,
                "draft": _draft_choice(eng, gen),
                "images": [
                    {"path": s.source, "nx": s.nx, "ny": s.ny, "tokens": s.n_tokens, "positions": s.n_pos}
                    for s in (layout.images if layout is not None else [])
                ],
                "mmproj": str(projector.path) if projector is not None else None,
                "placement": {
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
    err_console.print(f"[dim]{_stats_line(gen.stats)}[/]")
    if gen.finish_reason == "interrupted":
        raise typer.Exit(130)  # the partial reply and its stats are shown; the exit says it was cut


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
def chat_cmd(
    model_path: Path = typer.Argument(..., help="A qwen35 .gguf."),
    system: str | None = typer.Option(None, "--system"),
    draft: str | None = typer.Option(None, "--draft", help=_DRAFT_HELP),
    no_mtp: bool = typer.Option(False, "--no-mtp"),
    threads: int | None = typer.Option(None, "-t", "--threads", help=_THREADS_HELP),
    draft_model: Path | None = typer.Option(None, "--draft-model"),
    temp: float | None = typer.Option(None, "--temp"),
    top_k: int | None = typer.Option(None, "--top-k"),
    top_p: float | None = typer.Option(None, "--top-p"),
    min_p: float | None = typer.Option(None, "--min-p"),
    repeat_penalty: float | None = typer.Option(None, "--repeat-penalty"),
    seed: int | None = typer.Option(None, "--seed"),
    max_tokens: int = typer.Option(4096, "--max-tokens"),
    ctx: int = typer.Option(START_CONTEXT, "--ctx"),
    hide_thinking: bool = typer.Option(False, "--hide-thinking", help="Hide reasoning (default: dimmed)."),
    mmproj: Path | None = typer.Option(
        None, "--mmproj", help="Vision projector GGUF for /image (default: an mmproj*.gguf beside the model)."
    ),
    tools_file: Path | None = typer.Option(
        None, "--tools", help="JSON file of tool definitions (OpenAI style) the model may call."
    ),
    rpc: str | None = typer.Option(None, "--rpc", help=_RPC_HELP),
    gpu_layers: int | None = typer.Option(None, "-ngl", "--gpu-layers", help=_NGL_HELP),
) -> None:
    """Interactive chat with streaming output. /image PATH attaches a picture to the next message;
    /exit (or Ctrl-D) quits; Ctrl-C stops a reply."""
    from qwythos.runtime.chat import (
        TURN_END,
        ThinkStream,
        assistant_message,
        load_tools,
        parse_output,
        render_chat,
    )
    from qwythos.runtime.vision import IMAGE_PLACEHOLDER

    check_utf8_arg(system, "--system")
    if max_tokens < 1:
        raise QwythosError(f"--max-tokens {max_tokens} must be at least 1", "e.g. --max-tokens 4096")
    tools = load_tools(tools_file) if tools_file is not None else None
    sp = _sampling_from(temp, top_k, top_p, min_p, repeat_penalty, seed)
    projector = _choose_projector(model_path, mmproj)
    model, eng = _open_engine(
        model_path, draft, no_mtp, ctx, draft_model, threads, projector, rpc, gpu_layers
    )
    from qwythos.runtime.session import ChatSession

    session = ChatSession(eng)  # each turn prefills only what is new since the last prompt
    msgs = [{"role": "system", "content": system}] if system else []
    images: list[Path] = []  # every picture of the conversation, in order
    pending: list[Path] = []  # /image pictures for the next message
    try:
        while True:
            try:
                line = input("> ")
            except (EOFError, KeyboardInterrupt):
                break
            except UnicodeDecodeError:
                line = "\udcff"  # the check below reports it
            try:
                check_utf8_arg(line, "that line")
            except QwythosError as e:
                err_console.print(f"[bold red]error:[/] {e.message}; set a UTF-8 terminal (LANG=C.UTF-8)")
                continue
            if line.strip() in ("/exit", "/quit"):
                break
            if line.strip().startswith("/image"):
                arg = line.strip()[len("/image") :].strip()
                try:
                    pending.append(_chat_image(arg, eng.vision, model_path))
                    err_console.print(f"[dim]attached {arg} to the next message[/]")
                except QwythosError as e:
                    err_console.print(f"[bold red]error:[/] {e.message}" + (f" ({e.hint})" if e.hint else ""))
                continue
            if not line.strip():
                continue
            msgs.append({"role": "user", "content": IMAGE_PLACEHOLDER * len(pending) + line})
            images += pending
            n_new = len(pending)
            pending = []
            text = render_chat(model.info.chat_template, msgs, tools=tools)
            splitter = ThinkStream(thinking=text.rstrip().endswith("<think>"))
            shown: dict = {}

            def show(piece: str, splitter: ThinkStream = splitter, shown: dict = shown) -> None:
                _show_pieces(splitter.feed(piece), hide_thinking, shown)

            layout = None
            try:
                if images:
                    layout = eng.vision.tokenize(_image_text(text, eng.vision), images)
                gen = session.generate(
                    layout if layout is not None else model.tokenize(text),
                    max_tokens=max_tokens,
                    sampling=sp,
                    stop=list(TURN_END),
                    on_text=show,
                )
            except QwythosError as e:
                err_console.print(f"[bold red]error:[/] {e.message}")
                msgs.pop()
                del images[len(images) - n_new :]
                continue
            finally:
                if layout is not None:
                    eng.vision.free_layout(layout)
            _show_pieces(splitter.flush(), hide_thinking, shown)
            console.print()
            out = parse_output(gen.text, think_open=text.rstrip().endswith("<think>"), tools=tools)
            for c in out.tool_calls:
                console.print(f"[cyan]tool call:[/] {c.name} {json.dumps(c.arguments)}")
            for e in out.errors:
                console.print(f"[yellow]warning:[/] {e}")
            msgs.append(assistant_message(out))
            err_console.print(f"[dim]{_stats_line(gen.stats)}[/]")
    finally:
        _close_all(model, eng)


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


@app.command("bench")
def bench_cmd(
    model_path: Path = typer.Argument(..., help="A qwen35 .gguf with an MTP head."),
    max_tokens: int = typer.Option(64, "--max-tokens"),
    drafts: str = typer.Option("1,2,3,4", "--drafts", help="Draft lengths to compare with plain."),
    threads: int | None = typer.Option(None, "-t", "--threads", help=_THREADS_HELP),
    no_auto: bool = typer.Option(False, "--no-auto", help="Skip the auto row (and keep the cache as it is)."),
    rpc: str | None = typer.Option(None, "--rpc", help=_RPC_HELP),
    gpu_layers: int | None = typer.Option(None, "-ngl", "--gpu-layers", help=_NGL_HELP),
    json_out: bool = JsonOption,
) -> None:
    """Plain decoding against MTP drafts (greedy) on a fixed prompt set: tok/s, acceptance, speed-up."""
    from qwythos.runtime.speed import run_bench

    try:
        ds = tuple(int(x) for x in drafts.split(",") if x.strip())
    except ValueError:
        fail(QwythosError(f"--drafts {drafts!r} is not a list of numbers", "e.g. --drafts 1,2,3"))
        return
    if max_tokens < 1:
        raise QwythosError(f"--max-tokens {max_tokens} must be at least 1", "e.g. --max-tokens 64")
    from qwythos.core.drafting.lengths import MAX_DRAFT

    if any(not 1 <= d <= MAX_DRAFT for d in ds):
        raise QwythosError(f"--drafts {drafts} is out of range", f"use draft lengths 1..{MAX_DRAFT}")
    r = run_bench(
        model_path,
        drafts=ds,
        max_tokens=max_tokens,
        threads=threads,
        auto=not no_auto,
        store=not no_auto,
        rpc=rpc,
        gpu_layers=gpu_layers,
    )
    if json_out:
        print_json(r)
        return
    rows = [
        [
            x.mode,
            f"{x.gen_tps:.1f}",
            f"{x.speedup:.2f}x",
            f"{x.predicted_speedup:.2f}x" if x.predicted_speedup is not None else "-",
            f"{x.acceptance:.0%}" if x.draft else "-",
            " ".join(f"{a:.0%}" for a in x.acceptance_per_depth) or "-",
            f"{x.tokens_per_pass:.2f}",
            "yes" if x.same_output else "no",
            f"{x.t_draft:.2f}/{x.t_verify:.2f}/{x.t_rollback:.3f}/{x.t_python:.2f}",
        ]
        for x in r.rows
    ]
    cols = [
        "mode",
        "tok/s",
        "speed-up",
        "predicted",
        "accept",
        "per depth",
        "tok/pass",
        "same output",
        "draft/verify/rollback/py s",
    ]
    console.print(
        simple_table(
            f"qwythos bench {model_path.name} ({r.prompts} prompts x {r.max_tokens} tokens, greedy"
            + (f"; {r.placement}" if r.placement else "")
            + ")",
            cols,
            rows,
        )
    )
    if r.recommended is not None:
        best = {x.draft: x for x in r.rows if x.mode != "auto"}[r.recommended]
        console.print(
            f"recommended: --draft {r.recommended} (predicted {best.predicted_speedup:.2f}x, measured "
            f"{best.speedup:.2f}x plain); `run` and `chat` use it with --draft auto"
            + (f" [dim](costs stored in {r.cache_file})[/]" if r.cache_file else "")
        )
    elif r.note:
        console.print(r.note)


@app.command("demo")
def demo(
    work_dir: Path = typer.Option(
        Path("qwythos-demo"), "-o", "--out", help="Folder for the demo's files (created)."
    ),
    max_tokens: int = typer.Option(48, "--max-tokens", help="Tokens generated per prompt."),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads (default: all)."),
    json_out: bool = JsonOption,
) -> None:
    """The whole job on the bundled trained tiny model, offline: convert, quantize, restore, run."""
    from qwythos.demo import run_demo

    if max_tokens < 1:
        raise QwythosError(f"--max-tokens {max_tokens} must be at least 1", "e.g. --max-tokens 48")

    with console.status("demo") as status:
        rep = run_demo(work_dir, max_tokens=max_tokens, threads=threads, log=status.update)
    if json_out:
        print_json(rep.to_dict())
        return
    rows = [
        [f.step, Path(f.path).name, f"{f.bytes / 2**20:.2f} MiB", f"{f.seconds:.2f} s"] for f in rep.files
    ]
    console.print(simple_table("files", ["step", "file", "size", "time"], rows))
    acc = " ".join(f"d{i + 1} {r:.2f}" for i, r in enumerate(rep.acceptance_per_depth))
    console.print(
        f"MTP head validation: {acc}; expected accepted drafts per step "
        f"{rep.expected_accepted_length:.2f} ({'PASS' if rep.validation_passed else 'FAIL'})"
    )
    rows = [
        [
            r.mode,
            r.gen_tokens,
            f"{r.gen_tps:.0f}",
            " ".join(f"{a:.2f}" for a in r.acceptance_per_depth) or "-",
            f"{r.tokens_per_pass:.2f}",
            "yes" if r.same_as_plain else "[red]NO[/]",
        ]
        for r in rep.runs
    ]
    console.print(
        simple_table(
            "generation (greedy, 3 prompts)",
            ["mode", "tokens", "tok/s", "acceptance per depth", "tok/pass", "identical to plain"],
            rows,
        )
    )
    console.print(f"[dim]sample:[/] {rep.sample_text!r}")
    if not rep.identical:
        raise typer.Exit(2)
