"""The `qwythos` command: one typer command per verb, a thin layer over the library.

Each command parses flags, calls a library function that returns data, and renders it with rich
(or prints it as JSON with --json). Errors the user can meet are `QwythosError`s: printed as one
message and a fix, never a traceback.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from qwythos.errors import QwythosError

app = typer.Typer(
    name="qwythos",
    help="Qwythos-9B (qwen35) from safetensors to fast local llama.cpp inference.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
mtp_app = typer.Typer(help="Find, graft and validate the MTP (nextn) head.", no_args_is_help=True)
export_app = typer.Typer(help="Hand GGUFs to Ollama, LM Studio, KoboldCpp.", no_args_is_help=True)
app.add_typer(mtp_app, name="mtp")
app.add_typer(export_app, name="export")

console = Console()
err_console = Console(stderr=True)


def fail(error: QwythosError) -> None:
    """Print a user-facing error and exit 1 (no traceback)."""
    err_console.print(f"[bold red]error:[/] {error.message}")
    if error.hint:
        err_console.print(f"[yellow]fix:[/] {error.hint}")
    raise typer.Exit(1)


def to_jsonable(obj: Any) -> Any:
    """Dataclasses, paths and nested containers as plain JSON values."""
    if is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(asdict(obj))
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(to_jsonable(obj), indent=2) + "\n")


def simple_table(title: str, columns: list[str], rows: list[list[Any]]) -> Table:
    table = Table(title=title)
    for c in columns:
        table.add_column(c)
    for r in rows:
        table.add_row(*[str(v) for v in r])
    return table


# ---------------------------------------------------------------- section: doctor
@app.command()
def doctor(
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    fresh: bool = typer.Option(False, "--fresh", help="Probe again instead of using the cached verdict."),
) -> None:
    """Check that the installed llama.cpp build runs quantized models on this CPU (AMX crash probe)."""
    from qwythos.runtime import probe

    result = probe.probe_build(use_cache=not fresh)
    if json_out:
        print_json({**to_jsonable(result), "verdict": result.verdict, "model_kwargs": result.model_kwargs()})
    else:
        rows = [
            ["llama.cpp library", result.library],
            ["CPU reports AMX", "yes" if result.cpu_reports_amx else "no"],
            ["build has AMX kernels", "yes" if result.build_has_amx else "no"],
        ]
        for run in result.runs:
            label = "default buffers" if run.use_extra_bufts else "use_extra_bufts=False"
            state = "ok" if run.ok else f"crashed ({run.signal or run.returncode}) {run.detail}".strip()
            rows.append([f"probe: Q8_0 batch decode, {label}", state])
        rows.append(["verdict", result.verdict])
        console.print(simple_table("qwythos doctor", ["check", "result"], rows))
        if not result.default_ok:
            console.print(f"[yellow]fix:[/] rebuild llama-cpp-python without AMX:\n  {probe.REBUILD_COMMAND}")
    if not result.default_ok and not result.fallback_ok:
        raise typer.Exit(1)


# ---------------------------------------------------------------- end: doctor


# ---------------------------------------------------------------- section: convert/inspect
def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.2f} MiB"


@app.command()
def convert(
    src: str = typer.Argument(..., help="Checkpoint folder or Hugging Face repo id (owner/name)."),
    out: Path | None = typer.Option(
        None, "-o", "--out", help="Output .gguf (default: ./<name>-<OUTTYPE>.gguf)."
    ),
    outtype: str = typer.Option("bf16", "--outtype", help="bf16, f16 or f32."),
    no_mtp: bool = typer.Option(False, "--no-mtp", help="Leave the MTP (nextn) head out."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Convert Qwen3.5 safetensors to GGUF (text model; the vision tower is left out)."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    from qwythos.quantize.convert import convert as run_convert

    try:
        if json_out:
            result = run_convert(src, out, outtype=outtype, mtp=not no_mtp, force=force)
        else:
            with Progress(
                TextColumn("[bold]converting[/] {task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=err_console,
                transient=True,
            ) as bar:
                task = bar.add_task("", total=None)

                def progress(name: str, done: int, total: int) -> None:
                    bar.update(task, completed=done, total=total, description=name)

                result = run_convert(
                    src, out, outtype=outtype, mtp=not no_mtp, force=force, progress=progress
                )
    except QwythosError as e:
        fail(e)
        return
    if json_out:
        print_json(result)
        return
    rows = [
        ["output", result.output],
        ["source", result.hub_id or result.source],
        ["type", result.outtype.upper()],
        [
            "layers",
            f"{result.n_layer} (+{result.nextn_layers} nextn)" if result.nextn_layers else result.n_layer,
        ],
        ["MTP head", result.mtp],
        ["tensors", f"{result.n_tensors} ({result.tensors_copied} copied byte-for-byte)"],
        ["size", _gib(result.bytes_written)],
        ["time", f"{result.seconds:.1f} s"],
    ]
    console.print(simple_table("qwythos convert", ["", ""], rows))
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}")


@app.command()
def inspect(
    file: Path = typer.Argument(..., help="A .gguf file."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Architecture, context, layer layout, MTP head, tensors and bytes by type of a GGUF file."""
    from qwythos.quantize.inspect import inspect_gguf

    try:
        s = inspect_gguf(file)
    except QwythosError as e:
        fail(e)
        return
    if json_out:
        print_json(s)
        return
    rows = [
        ["file", f"{s.path} ({_gib(s.file_size)})"],
        ["architecture", s.arch],
        ["name", s.name],
        ["file type", s.file_type],
        ["context length", s.context_length],
        ["layers", f"{s.trunk_layers}: {s.layer_layout}"],
        ["MTP", s.mtp_note],
        ["vocabulary", f"{s.vocab_size} tokens" + (", chat template" if s.chat_template else "")],
        ["tensors", s.n_tensors],
    ]
    rows += [[f"  {t}", f"{s.tensors_by_type[t]} tensors, {_gib(b)}"] for t, b in s.bytes_by_type.items()]
    console.print(simple_table("qwythos inspect", ["", ""], rows))


# ---------------------------------------------------------------- end: convert/inspect

# ---------------------------------------------------------------- section: quantize/plan/eval
Q_DEFAULT_TYPES = "Q4_K_M,Q5_K_M,Q6_K,Q8_0,BF16"


def _eval_table(report: Any) -> Table:
    return simple_table(
        f"quality vs {Path(report.base).name} ({report.n_tokens_scored} tokens, base PPL {report.base_ppl:.3f})",
        ["type", "size GiB", "PPL", "mean KLD", "top-1 agree"],
        [
            [r.type, f"{r.gib:.3f}", f"{r.ppl:.4f}", f"{r.mean_kld:.6f}", f"{100 * r.top1_agreement:.2f}%"]
            for r in report.rows
        ],
    )


@app.command()
def quantize(
    src: str = typer.Argument(..., help="HF folder / repo id, or a BF16/F16/F32 qwen35 GGUF."),
    out: Path | None = typer.Option(None, "-o", "--out", help="Output folder (default: current folder)."),
    types: str = typer.Option(Q_DEFAULT_TYPES, "--types", help="Comma-separated llama.cpp types."),
    imatrix: Path | None = typer.Option(None, "--imatrix", help="llama-imatrix file (GGUF or legacy .dat)."),
    mtp_type: str = typer.Option(
        "q8_0", "--mtp-type", help="Type of the MTP block: q8_0 (default), bf16, same, or any GGML type."
    ),
    output_tensor_type: str | None = typer.Option(
        None, "--output-tensor-type", help="Type of output.weight."
    ),
    token_embedding_type: str | None = typer.Option(
        None, "--token-embedding-type", help="Type of token_embd."
    ),
    threads: int | None = typer.Option(None, "--threads", help="Quantizer threads (default: all)."),
    requantize: bool = typer.Option(False, "--requantize", help="Allow an already-quantized input."),
    eval_text: Path | None = typer.Option(None, "--eval", help="Text file: measure PPL/KLD vs the BF16."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Quantize with llama.cpp's own quantizer; every output verified, hashed and recorded."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from qwythos.fileio import write_text_atomic
    from qwythos.quantize.run import quantize as run_quantize

    try:
        if eval_text is not None and not eval_text.is_file():
            raise QwythosError(f"--eval text {eval_text} not found", "pass a text file with --eval")
        kw = dict(
            types=types,
            imatrix=imatrix,
            mtp_type=mtp_type,
            output_tensor_type=output_tensor_type,
            token_embedding_type=token_embedding_type,
            threads=threads,
            requantize=requantize,
        )
        if json_out:
            report = run_quantize(src, out, **kw)
        else:
            with Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=err_console,
            ) as bar:
                tasks: dict[str, Any] = {}

                def progress(tname: str, done: int, total: int) -> None:
                    if tname not in tasks:
                        tasks[tname] = bar.add_task(tname, total=total)
                    bar.update(tasks[tname], completed=done, total=total)

                report = run_quantize(src, out, progress=progress, **kw)
        evaluation = None
        if eval_text is not None:
            from qwythos.quantize.evaluate import evaluate

            base = next((o.path for o in report.outputs if o.type == "BF16"), report.source_gguf)
            quants = [o.path for o in report.outputs if o.path != base]
            evaluation = evaluate(base, quants, eval_text.read_text())
            write_text_atomic(
                Path(report.out_dir) / "quality.json", json.dumps(to_jsonable(evaluation), indent=2) + "\n"
            )
    except QwythosError as e:
        fail(e)
    if json_out:
        print_json({"quantize": report, "eval": evaluation})
        return
    console.print(
        simple_table(
            f"quantized {report.source}",
            ["type", "size GiB", "bpw", "MTP", "time s", "verified", "file"],
            [
                [
                    o.type,
                    f"{o.gib:.3f}",
                    f"{o.bpw:.2f}",
                    o.mtp_type,
                    "skipped (current)" if o.skipped else f"{o.seconds:.1f}",
                    "yes" if o.verified else "-",
                    Path(o.path).name,
                ]
                for o in report.outputs
            ],
        )
    )
    for n in report.notes:
        console.print(f"[yellow]note:[/] {n}")
    console.print(f"manifest: {report.manifest}   sums: {report.sums}")
    if evaluation is not None:
        console.print(_eval_table(evaluation))


@app.command()
def plan(
    src: str = typer.Argument(..., help="GGUF, HF folder, or config.json."),
    types: str = typer.Option(Q_DEFAULT_TYPES, "--types", help="Comma-separated llama.cpp types."),
    ctx: int = typer.Option(32768, "--ctx", help="Context length for the memory estimate."),
    kv_type: str = typer.Option("f16", "--kv-type", help="KV cache type: f16, q8_0 or q4_0."),
    mtp_type: str = typer.Option(
        "q8_0", "--mtp-type", help="Type of the MTP block: q8_0 (default), bf16, same, or any GGML type."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
) -> None:
    """Predict file sizes (llama.cpp's dry run, no weights needed) and memory at a context."""
    from qwythos.quantize.plan import plan as run_plan

    try:
        p = run_plan(src, types, ctx, kv_type, mtp_type=mtp_type)
    except QwythosError as e:
        fail(e)
    if json_out:
        print_json(p)
        return
    console.print(
        simple_table(
            f"plan for {src} ({p.n_params / 1e9:.2f} B params, ctx {ctx}, KV {kv_type})",
            ["type", "file GiB", "+MTP GiB", "bpw", "MTP type", "memory GiB"],
            [
                [
                    t.type,
                    f"{t.file_gib:.3f}",
                    "-" if t.with_mtp_gib is None else f"{t.with_mtp_gib:.3f}",
                    f"{t.bpw:.2f}",
                    t.mtp_type,
                    f"{t.memory_gib:.2f}",
                ]
                for t in p.types
            ],
        )
    )
    console.print(
        f"KV cache {p.kv_cache_bytes / 2**30:.3f} GiB, recurrent state {p.recurrent_state_bytes / 2**20:.1f} MiB "
        "(compute buffers not included)"
    )
    for n in p.notes:
        console.print(f"[yellow]note:[/] {n}")


@app.command("eval")
def eval_cmd(
    base: Path = typer.Argument(..., help="The BF16 GGUF."),
    quants: list[Path] = typer.Argument(..., help="Quantized GGUFs of the same model."),
    text: Path = typer.Option(..., "--text", help="Text file to score."),
    plot: Path | None = typer.Option(None, "--plot", help="Write a PNG of size vs KLD."),
    ctx: int = typer.Option(256, "--ctx", help="Window length in tokens (the second half is scored)."),
    max_windows: int = typer.Option(8, "--max-windows", help="Score at most this many windows."),
    threads: int = typer.Option(2, "--threads", help="CPU threads."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Perplexity, mean KL divergence and top-1 agreement against the BF16 base."""
    from qwythos.fileio import ensure_writable_dir
    from qwythos.quantize.evaluate import evaluate, plot_png

    try:
        if not text.is_file():
            raise QwythosError(f"{text} not found", "pass a text file with --text")
        if ctx < 32 or max_windows < 1:
            raise QwythosError(
                f"--ctx {ctx} / --max-windows {max_windows} too small", "e.g. --ctx 256 --max-windows 8"
            )
        if plot is not None:
            ensure_writable_dir(plot.parent, "plot folder")
        report = evaluate(
            base, list(quants), text.read_text(), n_ctx=ctx, max_windows=max_windows, threads=threads
        )
        if plot is not None:
            plot_png(report, plot)
    except QwythosError as e:
        fail(e)
    if json_out:
        print_json(report)
        return
    console.print(_eval_table(report))
    if plot is not None:
        console.print(f"plot: {plot}")


# ---------------------------------------------------------------- end: quantize/plan/eval


# ---------------------------------------------------------------- section: mtp
@mtp_app.command("restore")
def mtp_restore(
    trunk: Path = typer.Argument(..., help="The converted (possibly quantized) trunk .gguf."),
    src: str = typer.Option(
        ...,
        "--from",
        help="HF folder / repo id with mtp.* tensors, a GGUF with a nextn block, or an MTP GGUF.",
    ),
    out: Path | None = typer.Option(None, "-o", "--out", help="Output .gguf (default: next to TRUNK)."),
    separate: bool = typer.Option(False, "--separate", help="Write a stand-alone MTP draft GGUF instead."),
    head_type: str = typer.Option(
        "bf16", "--type", help="Type of the head's matrices: bf16, f16, f32, q8_0, ..."
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite the output / replace an existing head."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Give a trunk GGUF its MTP head (grafted into a copy, or as a separate draft file)."""
    from qwythos.mtp.graft import restore

    try:
        r = restore(trunk, src, out, separate=separate, head_type=head_type, force=force)
    except QwythosError as e:
        fail(e)
        return
    if json_out:
        print_json(r)
        return
    rows = [
        ["output", r.output],
        ["mode", "stand-alone MTP draft" if r.mode == "separate" else "grafted into the trunk"],
        ["head from", f"{r.source} ({r.source_kind})"],
        ["head block", f"blk.{r.head_block} (block_count {r.block_count}, nextn_predict_layers 1)"],
        ["head type", r.head_type.upper()],
        ["tensors", r.n_tensors],
        ["size", _gib(r.bytes_written)],
        ["time", f"{r.seconds:.1f} s"],
    ]
    console.print(simple_table("qwythos mtp restore", ["", ""], rows))
    for note in r.notes:
        console.print(f"[yellow]note:[/] {note}")


@mtp_app.command("validate")
def mtp_validate(
    model: Path = typer.Argument(..., help="A GGUF with its MTP head (or the trunk, with --draft)."),
    draft: Path | None = typer.Option(None, "--draft", help="A stand-alone MTP GGUF for MODEL."),
    text: Path | None = typer.Option(None, "--text", help="Calibration text (default: the bundled one)."),
    depth: int = typer.Option(3, "--depth", help="Draft depth to measure."),
    min_accept: float = typer.Option(
        0.1, "--min-accept", help="Fail below this depth-1 acceptance rate (a wrong head scores ~0)."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Check the head's structure, then measure its draft acceptance with llama.cpp's MTP context."""
    from qwythos.mtp.validate import validate

    try:
        rep = validate(model, draft=draft, text=text, depth=depth, min_accept=min_accept)
    except QwythosError as e:
        fail(e)
        return
    if json_out:
        print_json(rep.to_dict())
    else:
        st = rep.draft_structure or rep.structure
        console.print(
            f"structure: {st.kind}, block {st.head_block}, "
            + ("[green]ok[/]" if st.ok else f"[red]{len(st.issues)} problem(s)[/]")
        )
        for issue in st.issues:
            console.print(f"  [red]{issue.tensor}[/] {issue.problem}")
        if rep.depths:
            rows = [[d.depth, f"{d.accepted}/{d.total}", f"{d.rate:.3f}"] for d in rep.depths]
            console.print(
                simple_table(f"MTP acceptance on {Path(rep.text).name}", ["depth", "accepted", "rate"], rows)
            )
            console.print(f"expected accepted length per step: {rep.expected_accepted_length:.2f}")
        console.print(("[green]PASS[/] " if rep.passed else "[red]FAIL[/] ") + rep.reason)
    if not rep.passed:
        raise typer.Exit(2)


# ---------------------------------------------------------------- end: mtp


# ---------------------------------------------------------------- section: run/chat/bench/demo
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
    from qwythos.runtime.backend import load_model
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
    ctx: int = typer.Option(32768, "--ctx", help="Context length (raise it for long inputs)."),
    raw: bool = typer.Option(False, "--raw", help="Send the prompt as is, without the chat template."),
    no_think: bool = typer.Option(False, "--no-think", help="Ask the template to skip reasoning."),
    tools_file: Path | None = typer.Option(
        None, "--tools", help="JSON file of tool definitions (OpenAI style) the model may call."
    ),
    show_thinking: bool = typer.Option(False, "--show-thinking", help="Print the reasoning too."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Generate one reply (with exact MTP speculative decoding when the GGUF has a head)."""
    from qwythos.runtime.chat import TURN_END, load_tools, parse_output, render_chat

    try:
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
    except QwythosError as e:
        fail(e)
        return
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
    ctx: int = typer.Option(32768, "--ctx"),
    hide_thinking: bool = typer.Option(False, "--hide-thinking", help="Hide reasoning (default: dimmed)."),
) -> None:
    """Interactive chat with streaming output. /exit (or Ctrl-D) quits; Ctrl-C stops a reply."""
    from qwythos.runtime.chat import TURN_END, parse_output, render_chat

    try:
        sp = _sampling_from(temp, top_k, top_p, min_p, repeat_penalty, seed)
        model, eng = _open_engine(model_path, draft, no_mtp, ctx, draft_model)
    except QwythosError as e:
        fail(e)
        return
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
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Plain decoding against MTP drafts (greedy) on a fixed prompt set: tok/s, acceptance, speed-up."""
    from qwythos.runtime.bench import run_bench

    try:
        ds = tuple(int(x) for x in drafts.split(",") if x.strip())
    except ValueError:
        fail(QwythosError(f"--drafts {drafts!r} is not a list of numbers", "e.g. --drafts 1,2,3"))
        return
    try:
        r = run_bench(model_path, drafts=ds, max_tokens=max_tokens, threads=threads)
    except QwythosError as e:
        fail(e)
        return
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
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """The whole job on the bundled trained tiny model, offline: convert, quantize, restore, run."""
    from qwythos.demo import run_demo

    try:
        with console.status("demo") as status:
            rep = run_demo(work_dir, max_tokens=max_tokens, threads=threads, log=status.update)
    except QwythosError as e:
        fail(e)
        return
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


# ---------------------------------------------------------------- end: run/chat/bench/demo

# ---------------------------------------------------------------- section: export/hub


def _show_warnings(warnings: list[str]) -> None:
    for w in warnings:
        err_console.print(f"[yellow]warning:[/] {w}")


@export_app.command("ollama")
def export_ollama_cmd(
    model: Path = typer.Argument(..., help="The qwen35 GGUF to run in Ollama."),
    out: Path | None = typer.Option(None, "-o", "--out", help="Modelfile path (default: beside the GGUF)."),
    name: str = typer.Option("qwythos-9b", "--name", help="Model name for `ollama create`."),
    ctx: int | None = typer.Option(
        None, "--ctx", help="num_ctx (default 32768, or the file's context when smaller)."
    ),
    draft: int | None = typer.Option(
        None, "--draft", help="draft_num_predict (MTP draft tokens); default 3 with an MTP head, 0 = off."
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing, different Modelfile."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Write an Ollama Modelfile (qwen3.5 renderer/parser, card sampling, MTP drafting)."""
    from qwythos.export.ollama import export_ollama

    try:
        r = export_ollama(model, out, name=name, ctx=ctx, draft=draft, force=force)
    except QwythosError as e:
        fail(e)
    if json_out:
        print_json(r)
        return
    _show_warnings(r.warnings)
    state = "unchanged" if r.unchanged else "written"
    console.print(
        f"{r.modelfile} {state} ({r.quant}, MTP head: {'yes' if r.has_mtp else 'no'}, draft {r.draft})"
    )
    console.print(f"next: [bold]{r.create_command}[/]")


@export_app.command("lmstudio")
def export_lmstudio_cmd(
    model: Path = typer.Argument(..., help="The qwen35 GGUF to add to LM Studio."),
    publisher: str = typer.Option("empero-ai", "--publisher", help="Publisher folder under the models dir."),
    copy: bool = typer.Option(False, "--copy", help="Copy the file (default)."),
    link: bool = typer.Option(False, "--link", help="Hard-link the file (same file system)."),
    symlink: bool = typer.Option(False, "--symlink", help="Symbolic link to the file."),
    move: bool = typer.Option(False, "--move", help="Move the file (what `lms import` does by default)."),
    models_dir: Path | None = typer.Option(
        None, "--models-dir", help="LM Studio models folder (~/.lmstudio/models)."
    ),
    ctx: int | None = typer.Option(None, "--ctx", help="Context length for model.yaml (default 32768)."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Place a GGUF like `lms import` and write model.yaml (sampling, reasoning/tools, MTP)."""
    from qwythos.export.lmstudio import export_lmstudio

    chosen = [m for m, on in (("copy", copy), ("hardlink", link), ("symlink", symlink), ("move", move)) if on]
    if len(chosen) > 1:
        fail(QwythosError("choose one of --copy, --link, --symlink, --move", None))
    try:
        r = export_lmstudio(
            model,
            publisher=publisher,
            models_dir=models_dir,
            mode=chosen[0] if chosen else "copy",
            context=ctx,
        )
    except QwythosError as e:
        fail(e)
    if json_out:
        print_json(r)
        return
    _show_warnings(r.warnings)
    console.print(f"{r.dest}: {r.action}")
    console.print(f"{r.model_yaml}: {r.yaml_action} (MTP drafting {'on' if r.has_mtp else 'off: no head'})")
    console.print(f"lms equivalent: [bold]{r.lms_command}[/]")


@export_app.command("koboldcpp")
def export_koboldcpp_cmd(
    model: Path = typer.Argument(..., help="The qwen35 GGUF to run in KoboldCpp."),
    out: Path | None = typer.Option(None, "-o", "--out", help=".kcpps path (default: beside the GGUF)."),
    ctx: int | None = typer.Option(None, "--ctx", help="contextsize, 256..262144 (default 32768)."),
    gpulayers: int = typer.Option(-1, "--gpulayers", help="Layers on the GPU (-1 auto, 0 CPU only)."),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads (default: KoboldCpp decides)."),
    quantkv: int = typer.Option(0, "--quantkv", help="KV cache: 0 f16, 1 q8, 2 q4."),
    draft: int | None = typer.Option(
        None, "--draft", help="draftamount with an MTP head (default 3, 0 = off)."
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing, different .kcpps."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Write a KoboldCpp .kcpps launch config and print the launch command."""
    from qwythos.export.koboldcpp import export_koboldcpp

    try:
        r = export_koboldcpp(
            model,
            out,
            contextsize=ctx,
            gpulayers=gpulayers,
            threads=threads,
            quantkv=quantkv,
            draft=draft,
            force=force,
        )
    except QwythosError as e:
        fail(e)
    if json_out:
        print_json(r)
        return
    _show_warnings(r.warnings)
    console.print(
        f"{r.kcpps} {'unchanged' if r.unchanged else 'written'} (MTP: {'on' if r.has_mtp else 'off'})"
    )
    console.print(f"launch: [bold]{r.launch_command}[/]")
    console.print(f"   or: {r.launch_command_flags}")


@app.command()
def download(
    repo_id: str = typer.Argument(
        ..., help="Hugging Face model repo, e.g. empero-ai/Qwythos-9B-Claude-Mythos-5-1M."
    ),
    include: list[str] = typer.Option([], "--include", help="Extra file patterns to fetch (repeatable)."),
    mtp_only: bool = typer.Option(
        False, "--mtp-only", help="Only config/tokenizer + the shards holding mtp.*."
    ),
    local_dir: Path | None = typer.Option(
        None, "--local-dir", help="Target folder (default: ./<repo name>)."
    ),
    revision: str | None = typer.Option(None, "--revision", help="Branch, tag or commit."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the files without downloading."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Fetch what conversion needs (config, tokenizer, safetensors); resumes partial downloads."""
    from qwythos.export.hub import download as hub_download

    try:
        r = hub_download(
            repo_id, local_dir, include=include, mtp_only=mtp_only, revision=revision, dry_run=dry_run
        )
    except QwythosError as e:
        fail(e)
    if json_out:
        print_json(r)
        return
    verb = "would fetch" if r.dry_run else "fetched"
    console.print(simple_table(f"{repo_id}: {verb} into {r.local_dir}", ["file"], [[f] for f in r.files]))
    if r.mtp_shards:
        console.print(f"MTP head in: {', '.join(r.mtp_shards)}")


@app.command()
def upload(
    folder: Path = typer.Argument(..., help="Folder with the GGUFs (+ manifest, SHA256SUMS, Modelfile)."),
    repo_id: str = typer.Argument(
        ..., help="Target repo, e.g. empero-ai/Qwythos-9B-Claude-Mythos-5-1M-GGUF."
    ),
    private: bool = typer.Option(False, "--private", help="Create the repo private."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="List every file and its destination, upload nothing."
    ),
    token: str | None = typer.Option(
        None, "--token", help="Hub token (default: HF_TOKEN or `hf auth login`)."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
) -> None:
    """Upload GGUFs, manifest, SHA256SUMS, Modelfile and a generated README card to the Hub."""
    from qwythos.export.hub import upload as hub_upload

    def progress(path: str, i: int, n: int) -> None:
        if not json_out:
            err_console.print(f"[{i}/{n}] {'uploaded all' if path == 'done' else 'uploading ' + path}")

    try:
        plan = hub_upload(folder, repo_id, private=private, dry_run=dry_run, token=token, progress=progress)
    except QwythosError as e:
        fail(e)
    rows = [[it.source, plan.destination(it), f"{it.size_bytes:,}"] for it in plan.items]
    if json_out:
        print_json(
            {
                "repo_id": plan.repo_id,
                "private": plan.private,
                "dry_run": plan.dry_run,
                "url": plan.url,
                "files": [
                    {"source": r[0], "destination": r[1], "size_bytes": it.size_bytes}
                    for r, it in zip(rows, plan.items, strict=True)
                ],
                "quants": plan.rows,
            }
        )
        return
    verb = "dry run: would upload" if dry_run else "uploaded"
    sys.stdout.write(f"{verb} {len(rows)} files to {repo_id}{' (private)' if private else ''}\n")
    for source, dest, size in rows:
        sys.stdout.write(f"  {source} -> {dest} ({size} bytes)\n")


# ---------------------------------------------------------------- end: export/hub


def main() -> None:
    """Console-script entry: user-facing errors become one message and exit code 1."""
    try:
        app()
    except QwythosError as e:
        err_console.print(f"[bold red]error:[/] {e.message}")
        if e.hint:
            err_console.print(f"[yellow]fix:[/] {e.hint}")
        sys.exit(1)
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        sys.exit(130)


if __name__ == "__main__":
    main()
