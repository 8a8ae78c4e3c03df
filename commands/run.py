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
from qwythos.core.release import START_CONTEXT


def _sampling_from(temp, top_k, top_p, min_p, repeat_penalty, seed):
    from qwythos.runtime.chat import CARD_SAMPLING
    from qwythos.runtime.sampling import SamplingParams

    c = CARD_SAMPLING
    return SamplingParams(
        temperature=c.temperature if temp is None else temp,
        top_k=c.top_k if top_k is None else top_k,
        top_p=c.top_p if top_p is None else top_p,
        min_p=c.min_p if min_p is None else min_p,
        repeat_penalty=c.repeat_penalty if repeat_penalty is None else repeat_penalty,
        seed=seed,
    )


def _open_engine(model_path: Path, draft: int | None, no_mtp: bool, ctx: int, draft_model: Path | None):
    """Load the model and its engine; MTP by default when the file has a head (warn if it has not)."""
    from qwythos.core.llama import load_model
    from qwythos.runtime.speculative import Engine

    if draft is not None and no_mtp:
        raise QwythosError("--draft and --no-mtp contradict each other", "pass one of them")
    insist = draft is not None and draft > 0
    model = load_model(
        model_path, mtp=False if no_mtp else (True if insist else None), draft_path=draft_model
    )
    n = 0 if no_mtp else (draft if draft is not None else 2)
    if n > 0 and not model.has_mtp:
        err_console.print(f"[yellow]warning:[/] {model_path} has no MTP layer; decoding without drafts")
        n = 0
    try:
        return model, Engine(model, n_ctx=ctx, draft=n)
    except BaseException:
        model.close()
        raise


def _stats_line(s) -> str:
    line = f"prompt {s.prompt_tokens} tok at {s.prompt_tps:.1f} tok/s, generated {s.gen_tokens} tok at {s.gen_tps:.1f} tok/s"
    if s.draft:
        per = " ".join(f"{r:.0%}" for r in s.acceptance_per_depth)
        line += f"; MTP draft {s.draft}: accepted {s.accepted}/{s.drafted} ({per}), {s.tokens_per_pass:.2f} tok/pass"
    return line


_DRAFT_HELP = "MTP draft length (default 2 when the GGUF has a head)."


@app.command("run")
def run_cmd(
    model_path: Path = typer.Argument(..., help="A qwen35 .gguf (with an MTP head for drafting)."),
    prompt: str = typer.Option(..., "-p", "--prompt", help="The user message."),
    system: str | None = typer.Option(None, "--system", help="A system message."),
    draft: int | None = typer.Option(None, "--draft", help=_DRAFT_HELP),
    no_mtp: bool = typer.Option(False, "--no-mtp", help="Plain decoding, no drafts."),
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
    json_out: bool = JsonOption,
) -> None:
    """Generate one reply (with exact MTP speculative decoding when the GGUF has a head)."""
    from qwythos.runtime.chat import TURN_END, load_tools, parse_output, render_chat

    tools = load_tools(tools_file) if tools_file is not None else None
    sp = _sampling_from(temp, top_k, top_p, min_p, repeat_penalty, seed)
    model, eng = _open_engine(model_path, draft, no_mtp, ctx, draft_model)
    try:
        if raw:
            text, think_open = prompt, False
        else:
            msgs = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": prompt}
            ]
            text = render_chat(model.info.chat_template, msgs, tools=tools, enable_thinking=not no_think)
            think_open = text.rstrip().endswith("<think>")
        gen = eng.generate(model.tokenize(text), max_tokens=max_tokens, sampling=sp, stop=list(TURN_END))
    finally:
        eng.close()
        model.close()
    out = parse_output(gen.text, think_open=think_open) if not raw else None
    if json_out:
        print_json({"generation": gen.to_dict(), "parsed": out.to_dict() if out else None})
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


@app.command("chat")
def chat_cmd(
    model_path: Path = typer.Argument(..., help="A qwen35 .gguf."),
    system: str | None = typer.Option(None, "--system"),
    draft: int | None = typer.Option(None, "--draft", help=_DRAFT_HELP),
    no_mtp: bool = typer.Option(False, "--no-mtp"),
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
) -> None:
    """Interactive chat with streaming output. /exit (or Ctrl-D) quits; Ctrl-C stops a reply."""
    from qwythos.runtime.chat import TURN_END, parse_output, render_chat

    sp = _sampling_from(temp, top_k, top_p, min_p, repeat_penalty, seed)
    model, eng = _open_engine(model_path, draft, no_mtp, ctx, draft_model)
    msgs = [{"role": "system", "content": system}] if system else []
    try:
        while True:
            try:
                line = input("> ")
            except (EOFError, KeyboardInterrupt):
                break
            if line.strip() in ("/exit", "/quit"):
                break
            if not line.strip():
                continue
            msgs.append({"role": "user", "content": line})
            text = render_chat(model.info.chat_template, msgs)
            state = {"thinking": text.rstrip().endswith("<think>"), "buf": ""}

            def show(piece: str, state: dict = state) -> None:
                state["buf"] += piece
                if state["thinking"] and "</think>" in state["buf"]:
                    before, after = state["buf"].split("</think>", 1)
                    if not hide_thinking:
                        console.print(before, style="dim", end="", markup=False, highlight=False)
                    state["thinking"], state["buf"] = False, ""
                    console.print()
                    piece = after.lstrip("\n")
                    if not piece:
                        return
                elif state["thinking"]:
                    if len(state["buf"]) > 16:
                        out, state["buf"] = state["buf"][:-16], state["buf"][-16:]
                        if not hide_thinking:
                            console.print(out, style="dim", end="", markup=False, highlight=False)
                    return
                else:
                    state["buf"] = ""
                console.print(piece, end="", markup=False, highlight=False)

            try:
                gen = eng.generate(
                    model.tokenize(text),
                    max_tokens=max_tokens,
                    sampling=sp,
                    stop=list(TURN_END),
                    on_text=show,
                )
            except QwythosError as e:
                err_console.print(f"[bold red]error:[/] {e.message}")
                msgs.pop()
                continue
            console.print()
            out = parse_output(gen.text, think_open=text.rstrip().endswith("<think>"))
            for c in out.tool_calls:
                console.print(f"[cyan]tool call:[/] {c.name} {json.dumps(c.arguments)}")
            msgs.append({"role": "assistant", "content": out.answer, "reasoning_content": out.reasoning})
            err_console.print(f"[dim]{_stats_line(gen.stats)}[/]")
    finally:
        eng.close()
        model.close()


@app.command("bench")
def bench_cmd(
    model_path: Path = typer.Argument(..., help="A qwen35 .gguf with an MTP head."),
    max_tokens: int = typer.Option(64, "--max-tokens"),
    drafts: str = typer.Option("1,2,3,4", "--drafts", help="Draft lengths to compare with plain."),
    threads: int | None = typer.Option(None, "--threads"),
    json_out: bool = JsonOption,
) -> None:
    """Plain decoding against MTP drafts (greedy) on a fixed prompt set: tok/s, acceptance, speed-up."""
    from qwythos.runtime.speed import run_bench

    try:
        ds = tuple(int(x) for x in drafts.split(",") if x.strip())
    except ValueError:
        fail(QwythosError(f"--drafts {drafts!r} is not a list of numbers", "e.g. --drafts 1,2,3"))
        return
    r = run_bench(model_path, drafts=ds, max_tokens=max_tokens, threads=threads)
    if json_out:
        print_json(r)
        return
    rows = [
        [
            x.mode,
            f"{x.gen_tps:.1f}",
            f"{x.speedup:.2f}x",
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
        "accept",
        "per depth",
        "tok/pass",
        "same output",
        "draft/verify/rollback/py s",
    ]
    console.print(
        simple_table(
            f"qwythos bench {model_path.name} ({r.prompts} prompts x {r.max_tokens} tokens, greedy)",
            cols,
            rows,
        )
    )


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
