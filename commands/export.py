"""`qwythos export ollama|lmstudio|koboldcpp|llama-server FILE.gguf` and `qwythos export vllm|sglang FOLDER`: one
group, every default and help text built from the constant the export itself uses."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from qwythos.commands.common import JsonOption, console, err_console, export_app, fail, print_json
from qwythos.core.drafting.lengths import DEFAULT_DRAFT
from qwythos.core.errors import QwythosError
from qwythos.core.fileio import register_inputs
from qwythos.core.model.release import LOCAL_NAME, PUBLISHER, START_CONTEXT
from qwythos.export.engines import DEFAULT_HOST, Engine, EngineExport, export_engine
from qwythos.export.koboldcpp import (
    CONTEXT_MAX,
    CONTEXT_MIN,
    DEFAULT_GPULAYERS,
    QUANTKV_CHOICES,
    export_koboldcpp,
)
from qwythos.export.llama_server import DEFAULT_GPU_LAYERS, SCRIPT_SUFFIX, export_llama_server
from qwythos.export.lmstudio import export_lmstudio
from qwythos.export.ollama import export_ollama
from qwythos.export.sglang import SGLANG
from qwythos.export.vllm import VLLM

_MMPROJ_HELP = "Vision projector GGUF (default: an mmproj*.gguf beside the model, if any)."
_DRAFT_GGUF_HELP = f"MTP draft tokens; default {DEFAULT_DRAFT} with an MTP head, 0 = off."


def _plain(text: str) -> None:
    """A line holding paths or commands: printed as is (no markup, no highlighting, not wrapped)."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def _printed_json(r: object, json_out: bool, projector: str | None = None) -> bool:
    """With --json print the result whole and say so; else lead with its warnings and the vision
    projector's line."""
    if json_out:
        print_json(r)
        return True
    for w in getattr(r, "warnings", []):
        err_console.print(f"[yellow]warning:[/] {w}")
    if projector:
        _plain(projector)
    return False


@export_app.command("ollama")
def export_ollama_cmd(
    model: Path = typer.Argument(..., help="The qwen35 GGUF to run in Ollama."),
    out: Path | None = typer.Option(None, "-o", "--out", help="Modelfile path (default: beside the GGUF)."),
    name: str = typer.Option(LOCAL_NAME, "--name", help="Model name for `ollama create`."),
    ctx: int | None = typer.Option(
        None, "--ctx", help=f"num_ctx (default {START_CONTEXT}, or the file's context when smaller)."
    ),
    draft: int | None = typer.Option(None, "--draft", help=f"draft_num_predict: {_DRAFT_GGUF_HELP}"),
    force: bool = typer.Option(False, "--force", help="Replace an existing, different Modelfile."),
    mmproj: Path | None = typer.Option(None, "--mmproj", help=_MMPROJ_HELP),
    json_out: bool = JsonOption,
) -> None:
    """Write an Ollama Modelfile (qwen3.5 renderer/parser, card sampling, MTP drafting)."""
    register_inputs(model)  # the Modelfile may never replace the GGUF, whatever the flags
    r = export_ollama(model, out, name=name, ctx=ctx, draft=draft, force=force, mmproj=mmproj)
    if _printed_json(r, json_out, r.mmproj_note):
        return
    state = "unchanged" if r.unchanged else "written"
    _plain(f"{r.modelfile} {state} ({r.quant}, MTP head: {'yes' if r.has_mtp else 'no'}, draft {r.draft})")
    console.print(f"needs Ollama >= {r.requires} (install it: REQUIRES is recorded, not checked)")
    console.print(f"next: [bold]{escape(r.create_command)}[/]", soft_wrap=True)


@export_app.command("lmstudio")
def export_lmstudio_cmd(
    model: Path = typer.Argument(..., help="The qwen35 GGUF to add to LM Studio."),
    publisher: str = typer.Option(
        PUBLISHER, "--publisher", help="Publisher (owner) name: models folder and Hub definition."
    ),
    copy: bool = typer.Option(False, "--copy", help="Copy the file (default)."),
    link: bool = typer.Option(False, "--link", help="Hard-link the file (same file system)."),
    symlink: bool = typer.Option(False, "--symlink", help="Symbolic link to the file."),
    move: bool = typer.Option(False, "--move", help="Move the file (what `lms import` does by default)."),
    home: Path | None = typer.Option(
        None, "--lmstudio-home", help="LM Studio's home (default: as LM Studio finds it, ~/.lmstudio)."
    ),
    models_dir: Path | None = typer.Option(
        None, "--models-dir", help="LM Studio models folder (default: its settings, <home>/models)."
    ),
    ctx: int | None = typer.Option(
        None, "--ctx", help=f"Context length to load with (default {START_CONTEXT})."
    ),
    draft: int | None = typer.Option(None, "--draft", help=_DRAFT_GGUF_HELP),
    mmproj: Path | None = typer.Option(None, "--mmproj", help=_MMPROJ_HELP),
    json_out: bool = JsonOption,
) -> None:
    """Place a GGUF like `lms import`; write its model.yaml + manifest.json into LM Studio's hub."""
    chosen = [m for m, on in (("copy", copy), ("hardlink", link), ("symlink", symlink), ("move", move)) if on]
    if len(chosen) > 1:
        fail(QwythosError("choose one of --copy, --link, --symlink, --move", None))
    r = export_lmstudio(
        model,
        publisher=publisher,
        home=home,
        models_dir=models_dir,
        mode=chosen[0] if chosen else "copy",
        context=ctx,
        draft=draft,
        mmproj=mmproj,
    )
    if _printed_json(r, json_out, r.mmproj_note and f"{r.mmproj_note} -> {r.mmproj}"):
        return
    drafting = (
        f"MTP drafting {r.draft} tokens"
        if r.draft
        else "MTP drafting off" + ("" if r.has_mtp else ": no head")
    )
    _plain(f"{r.dest}: {r.action}")
    _plain(f"{r.model_yaml} + manifest.json: {r.yaml_action} ({drafting})")
    console.print(f"lms equivalent: [bold]{escape(r.lms_command)}[/]", soft_wrap=True)
    console.print(f"load:           [bold]{escape(r.load_command)}[/]", soft_wrap=True)


@export_app.command("koboldcpp")
def export_koboldcpp_cmd(
    model: Path = typer.Argument(..., help="The qwen35 GGUF to run in KoboldCpp."),
    out: Path | None = typer.Option(None, "-o", "--out", help=".kcpps path (default: beside the GGUF)."),
    ctx: int | None = typer.Option(
        None, "--ctx", help=f"contextsize, {CONTEXT_MIN}..{CONTEXT_MAX} (default {START_CONTEXT})."
    ),
    gpulayers: int = typer.Option(
        DEFAULT_GPULAYERS, "--gpulayers", help="Layers on the GPU (-1 auto, 0 CPU only)."
    ),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads (default: KoboldCpp decides)."),
    quantkv: str = typer.Option(
        QUANTKV_CHOICES[0], "--quantkv", help=f"KV cache type: {', '.join(QUANTKV_CHOICES)}."
    ),
    draft: int | None = typer.Option(None, "--draft", help=f"draftamount: {_DRAFT_GGUF_HELP}"),
    force: bool = typer.Option(False, "--force", help="Replace an existing, different .kcpps."),
    mmproj: Path | None = typer.Option(None, "--mmproj", help=_MMPROJ_HELP),
    json_out: bool = JsonOption,
) -> None:
    """Write a KoboldCpp .kcpps launch config and print the launch command."""
    register_inputs(model)
    r = export_koboldcpp(
        model,
        out,
        contextsize=ctx,
        gpulayers=gpulayers,
        threads=threads,
        quantkv=quantkv,
        draft=draft,
        force=force,
        mmproj=mmproj,
    )
    if _printed_json(r, json_out, r.mmproj):
        return
    _plain(f"{r.kcpps} {'unchanged' if r.unchanged else 'written'} (MTP: {'on' if r.has_mtp else 'off'})")
    console.print(f"launch: [bold]{escape(r.launch_command)}[/]", soft_wrap=True)
    console.print(f"   or: {escape(r.launch_command_flags)}", soft_wrap=True)


@export_app.command("llama-server")
def export_llama_server_cmd(
    model: Path = typer.Argument(..., help="The qwen35 GGUF to serve with llama.cpp's llama-server."),
    out: Path | None = typer.Option(
        None, "-o", "--out", help=f"Launch script path (default: beside the GGUF, <name>{SCRIPT_SUFFIX})."
    ),
    ctx: int | None = typer.Option(
        None, "--ctx", help=f"--ctx-size (default {START_CONTEXT}, or the file's context when smaller)."
    ),
    draft: int | None = typer.Option(
        None,
        "--draft",
        help=f"--spec-draft-n-max (default: what `qwythos bench` recommended here for the file, else "
        f"{DEFAULT_DRAFT}; 0 = off; no MTP flags without a head).",
    ),
    gpu_layers: str = typer.Option(
        DEFAULT_GPU_LAYERS, "-ngl", "--gpu-layers", help="Layers on the GPU: a count, auto or all."
    ),
    name: str = typer.Option(LOCAL_NAME, "--name", help="--alias (the model name clients see)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing, different script."),
    mmproj: Path | None = typer.Option(None, "--mmproj", help=_MMPROJ_HELP),
    json_out: bool = JsonOption,
) -> None:
    """Write and print the llama-server command line (MTP drafting, -ngl, --jinja, card sampling)."""
    register_inputs(model)
    r = export_llama_server(
        model, out, ctx=ctx, draft=draft, gpu_layers=gpu_layers, mmproj=mmproj, alias=name, force=force
    )
    if _printed_json(r, json_out, r.mmproj):
        return
    drafting = f"MTP draft {r.draft} ({r.draft_source})" if r.draft else "MTP drafting off"
    _plain(f"{r.script} {'unchanged' if r.unchanged else 'written'} ({drafting})")
    _plain(r.command)


def _print_engine(r: EngineExport, json_out: bool) -> None:
    if _printed_json(r, json_out):
        return
    for change in r.config_changes:
        console.print(f"[yellow]changed:[/] {escape(change)}")
    drafting = f"MTP draft {r.draft} ({r.draft_source})" if r.draft else "MTP drafting off"
    console.print(
        f"{r.engine}: TP {r.tensor_parallel} = {r.gpus_per_node} GPU(s) x {r.nodes} node(s), "
        f"context {r.ctx}, {drafting}"
    )
    for n in r.launches:
        console.print(f"node {n.rank}: {escape(str(n.script))}")
    console.print(f"README: {escape(str(r.readme))}")


def _add_engine_command(engine: Engine) -> None:
    """`qwythos export <engine> FOLDER`: one set of options for every engine, its defaults from the
    engine's row."""

    def command(
        folder: Path = typer.Argument(
            ..., help="The HF folder with its mtp.* head (from `qwythos mtp restore --hf`)."
        ),
        out: Path | None = typer.Option(
            None,
            "-o",
            "--out",
            help=f"Output folder (default: FOLDER-serve-{engine.name} beside FOLDER, which is never written).",
        ),
        gpus: int = typer.Option(1, "--gpus", help="GPUs per node (tensor parallel = GPUs x nodes)."),
        nodes: int = typer.Option(
            1, "--nodes", help=f"Nodes (multi-node through {engine.title}'s --nnodes launcher)."
        ),
        ctx: int | None = typer.Option(
            None,
            "--ctx",
            help=f"Context length (default {START_CONTEXT}); past the native window YaRN goes into an overlay's config.json.",
        ),
        draft: int | None = typer.Option(
            None,
            "--draft",
            help=f"Speculative tokens per step (default: bench's recommendation with --bench, else {DEFAULT_DRAFT}; 0 = off).",
        ),
        bench: Path | None = typer.Option(
            None, "--bench", help="A GGUF `qwythos bench` measured: use its recommended draft length."
        ),
        name: str = typer.Option(LOCAL_NAME, "--name", help="--served-model-name."),
        host: str = typer.Option(DEFAULT_HOST, "--host", help="HTTP bind address of the head node."),
        port: int = typer.Option(engine.port, "--port", help="HTTP port."),
        master_addr: str | None = typer.Option(
            None, "--master-addr", help="Head node address every node can reach (needed with --nodes > 1)."
        ),
        master_port: int = typer.Option(
            engine.master_port, "--master-port", help="Rendezvous port on the head node."
        ),
        write_config: bool = typer.Option(
            True,
            "--write-config/--no-write-config",
            help="Write the overlay folder (OUT/model: its own config.json with YaRN, links to FOLDER's files).",
        ),
        force: bool = typer.Option(False, "--force", help="Replace earlier launch scripts."),
        json_out: bool = JsonOption,
    ) -> None:
        from qwythos.core.limits import check_host, check_port

        check_host(host, "--host")  # what reaches a launch script is checked before anything is written
        check_host(master_addr, "--master-addr")
        check_port(port, "--port")
        check_port(master_port, "--master-port")
        r = export_engine(
            engine,
            folder,
            out,
            gpus=gpus,
            nodes=nodes,
            ctx=ctx,
            draft=draft,
            bench_gguf=bench,
            name=name,
            host=host,
            port=port,
            master_addr=master_addr,
            master_port=master_port,
            write_config=write_config,
            force=force,
        )
        _print_engine(r, json_out)

    command.__doc__ = f"{engine.title} launch commands per node + README: TP, multi-node, MTP drafting, YaRN, the known traps."
    export_app.command(engine.name)(command)


for _engine in (VLLM, SGLANG):
    _add_engine_command(_engine)
