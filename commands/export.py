"""qwythos export ollama|lmstudio|koboldcpp, download and upload."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.markup import escape

from qwythos.commands.common import (
    JsonOption,
    app,
    console,
    err_console,
    export_app,
    fail,
    print_json,
    simple_table,
)
from qwythos.core.errors import QwythosError
from qwythos.core.fileio import register_inputs


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
    mmproj: Path | None = typer.Option(
        None, "--mmproj", help="Vision projector GGUF (default: an mmproj*.gguf beside the model, if any)."
    ),
    json_out: bool = JsonOption,
) -> None:
    """Write an Ollama Modelfile (qwen3.5 renderer/parser, card sampling, MTP drafting)."""
    from qwythos.export.ollama import export_ollama

    register_inputs(model)  # the Modelfile may never replace the GGUF, whatever the flags
    r = export_ollama(model, out, name=name, ctx=ctx, draft=draft, force=force, mmproj=mmproj)
    if json_out:
        print_json(r)
        return
    _show_warnings(r.warnings)
    if r.mmproj_note:
        console.print(r.mmproj_note, markup=False, highlight=False, soft_wrap=True)
    state = "unchanged" if r.unchanged else "written"
    console.print(
        f"{r.modelfile} {state} ({r.quant}, MTP head: {'yes' if r.has_mtp else 'no'}, draft {r.draft})",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    console.print(f"needs Ollama >= {r.requires} (install it: REQUIRES is recorded, not checked)")
    console.print(f"next: [bold]{escape(r.create_command)}[/]", soft_wrap=True)


@export_app.command("lmstudio")
def export_lmstudio_cmd(
    model: Path = typer.Argument(..., help="The qwen35 GGUF to add to LM Studio."),
    publisher: str = typer.Option(
        "empero-ai", "--publisher", help="Publisher (owner) name: models folder and Hub definition."
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
    ctx: int | None = typer.Option(None, "--ctx", help="Context length to load with (default 32768)."),
    draft: int | None = typer.Option(
        None, "--draft", help="MTP draft tokens; default 3 with an MTP head, 0 = off."
    ),
    mmproj: Path | None = typer.Option(
        None, "--mmproj", help="Vision projector GGUF (default: an mmproj*.gguf beside the model, if any)."
    ),
    json_out: bool = JsonOption,
) -> None:
    """Place a GGUF like `lms import`; write its model.yaml + manifest.json into LM Studio's hub."""
    from qwythos.export.lmstudio import export_lmstudio

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
    if json_out:
        print_json(r)
        return
    _show_warnings(r.warnings)
    if r.mmproj_note:
        console.print(f"{r.mmproj_note} -> {r.mmproj}", markup=False, highlight=False, soft_wrap=True)
    drafting = (
        f"MTP drafting {r.draft} tokens"
        if r.draft
        else "MTP drafting off" + ("" if r.has_mtp else ": no head")
    )
    console.print(f"{r.dest}: {r.action}", markup=False, highlight=False, soft_wrap=True)
    console.print(
        f"{r.model_yaml} + manifest.json: {r.yaml_action} ({drafting})",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    console.print(f"lms equivalent: [bold]{escape(r.lms_command)}[/]", soft_wrap=True)
    console.print(f"load:           [bold]{escape(r.load_command)}[/]", soft_wrap=True)


@export_app.command("koboldcpp")
def export_koboldcpp_cmd(
    model: Path = typer.Argument(..., help="The qwen35 GGUF to run in KoboldCpp."),
    out: Path | None = typer.Option(None, "-o", "--out", help=".kcpps path (default: beside the GGUF)."),
    ctx: int | None = typer.Option(None, "--ctx", help="contextsize, 256..524288 (default 32768)."),
    gpulayers: int = typer.Option(-1, "--gpulayers", help="Layers on the GPU (-1 auto, 0 CPU only)."),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads (default: KoboldCpp decides)."),
    quantkv: str = typer.Option("f16", "--quantkv", help="KV cache type: f16, bf16, q8_0, q5_1 or q4_0."),
    draft: int | None = typer.Option(
        None, "--draft", help="draftamount with an MTP head (default 3, 0 = off)."
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing, different .kcpps."),
    mmproj: Path | None = typer.Option(
        None, "--mmproj", help="Vision projector GGUF (default: an mmproj*.gguf beside the model, if any)."
    ),
    json_out: bool = JsonOption,
) -> None:
    """Write a KoboldCpp .kcpps launch config and print the launch command."""
    from qwythos.export.koboldcpp import export_koboldcpp

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
    if json_out:
        print_json(r)
        return
    _show_warnings(r.warnings)
    if r.mmproj:
        console.print(r.mmproj, markup=False, highlight=False, soft_wrap=True)
    console.print(
        f"{r.kcpps} {'unchanged' if r.unchanged else 'written'} (MTP: {'on' if r.has_mtp else 'off'})",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    console.print(f"launch: [bold]{escape(r.launch_command)}[/]", soft_wrap=True)
    console.print(f"   or: {escape(r.launch_command_flags)}", soft_wrap=True)


def _print_engine(r, json_out: bool) -> None:  # noqa: ANN001 - EngineExport
    if json_out:
        print_json(r)
        return
    _show_warnings(r.warnings)
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


def _engine_export(engine: str, **kw) -> None:  # noqa: ANN003
    json_out = kw.pop("json_out")
    if engine == "vllm":
        from qwythos.export.vllm import export_vllm as fn
    else:
        from qwythos.export.sglang import export_sglang as fn
    _print_engine(fn(**kw), json_out)


_FOLDER_HELP = "The HF folder with its mtp.* head (from `qwythos mtp restore --hf`)."
_GPUS_HELP = "GPUs per node (tensor parallel = GPUs x nodes)."
_DRAFT_HELP = "Speculative tokens per step (default: bench's recommendation with --bench, else 2; 0 = off)."
_BENCH_HELP = "A GGUF `qwythos bench` measured: use its recommended draft length."
_CTX_HELP = "Context length (default 32768); past the native window YaRN is written into config.json."
_ADDR_HELP = "Head node address every node can reach (needed with --nodes > 1)."


@export_app.command("vllm")
def export_vllm_cmd(
    folder: Path = typer.Argument(..., help=_FOLDER_HELP),
    out: Path | None = typer.Option(None, "-o", "--out", help="Output folder (default: FOLDER/serve-vllm)."),
    gpus: int = typer.Option(1, "--gpus", help=_GPUS_HELP),
    nodes: int = typer.Option(1, "--nodes", help="Nodes (multi-node through vLLM's --nnodes launcher)."),
    ctx: int | None = typer.Option(None, "--ctx", help=_CTX_HELP),
    draft: int | None = typer.Option(None, "--draft", help=_DRAFT_HELP),
    bench: Path | None = typer.Option(None, "--bench", help=_BENCH_HELP),
    name: str = typer.Option("qwythos-9b", "--name", help="--served-model-name."),
    host: str = typer.Option("0.0.0.0", "--host", help="HTTP bind address of the head node."),
    port: int = typer.Option(8000, "--port", help="HTTP port."),
    master_addr: str | None = typer.Option(None, "--master-addr", help=_ADDR_HELP),
    master_port: int = typer.Option(29501, "--master-port", help="Rendezvous port on the head node."),
    write_config: bool = typer.Option(
        True, "--write-config/--no-write-config", help="Write YaRN into config.json."
    ),
    force: bool = typer.Option(False, "--force", help="Replace earlier launch scripts."),
    json_out: bool = JsonOption,
) -> None:
    """vLLM launch commands per node + README: TP, multi-node, MTP drafting, YaRN, the known traps."""
    _engine_export(
        "vllm",
        folder=folder,
        out=out,
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
        json_out=json_out,
    )


@export_app.command("sglang")
def export_sglang_cmd(
    folder: Path = typer.Argument(..., help=_FOLDER_HELP),
    out: Path | None = typer.Option(
        None, "-o", "--out", help="Output folder (default: FOLDER/serve-sglang)."
    ),
    gpus: int = typer.Option(1, "--gpus", help=_GPUS_HELP),
    nodes: int = typer.Option(1, "--nodes", help="Nodes (multi-node through SGLang's --nnodes launcher)."),
    ctx: int | None = typer.Option(None, "--ctx", help=_CTX_HELP),
    draft: int | None = typer.Option(None, "--draft", help=_DRAFT_HELP),
    bench: Path | None = typer.Option(None, "--bench", help=_BENCH_HELP),
    name: str = typer.Option("qwythos-9b", "--name", help="--served-model-name."),
    host: str = typer.Option("0.0.0.0", "--host", help="HTTP bind address."),
    port: int = typer.Option(30000, "--port", help="HTTP port."),
    master_addr: str | None = typer.Option(None, "--master-addr", help=_ADDR_HELP),
    master_port: int = typer.Option(25000, "--master-port", help="--dist-init-addr port on the head node."),
    write_config: bool = typer.Option(
        True, "--write-config/--no-write-config", help="Write YaRN into config.json."
    ),
    force: bool = typer.Option(False, "--force", help="Replace earlier launch scripts."),
    json_out: bool = JsonOption,
) -> None:
    """SGLang launch commands per node + README: TP, multi-node, NEXTN drafting, YaRN, the traps."""
    _engine_export(
        "sglang",
        folder=folder,
        out=out,
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
        json_out=json_out,
    )


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
    json_out: bool = JsonOption,
) -> None:
    """Fetch what conversion needs (config, tokenizer, safetensors); resumes partial downloads."""
    from qwythos.core.hub import download as hub_download

    r = hub_download(
        repo_id, local_dir, include=include, mtp_only=mtp_only, revision=revision, dry_run=dry_run
    )
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
    json_out: bool = JsonOption,
) -> None:
    """Upload GGUFs, manifest, SHA256SUMS, Modelfile and a generated README card to the Hub."""
    from qwythos.export.upload import upload as hub_upload

    def progress(path: str, i: int, n: int) -> None:
        if not json_out:
            err_console.print(
                f"[{i}/{n}] {'uploaded all in one commit' if path == 'done' else 'adding ' + path}"
            )

    plan = hub_upload(folder, repo_id, private=private, dry_run=dry_run, token=token, progress=progress)
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
