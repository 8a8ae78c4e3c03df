"""qwythos export ollama|lmstudio|koboldcpp, download and upload."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

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
    json_out: bool = JsonOption,
) -> None:
    """Write an Ollama Modelfile (qwen3.5 renderer/parser, card sampling, MTP drafting)."""
    from qwythos.export.ollama import export_ollama

    r = export_ollama(model, out, name=name, ctx=ctx, draft=draft, force=force)
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
    json_out: bool = JsonOption,
) -> None:
    """Place a GGUF like `lms import` and write model.yaml (sampling, reasoning/tools, MTP)."""
    from qwythos.export.lmstudio import export_lmstudio

    chosen = [m for m, on in (("copy", copy), ("hardlink", link), ("symlink", symlink), ("move", move)) if on]
    if len(chosen) > 1:
        fail(QwythosError("choose one of --copy, --link, --symlink, --move", None))
    r = export_lmstudio(
        model,
        publisher=publisher,
        models_dir=models_dir,
        mode=chosen[0] if chosen else "copy",
        context=ctx,
    )
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
    json_out: bool = JsonOption,
) -> None:
    """Write a KoboldCpp .kcpps launch config and print the launch command."""
    from qwythos.export.koboldcpp import export_koboldcpp

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
            err_console.print(f"[{i}/{n}] {'uploaded all' if path == 'done' else 'uploading ' + path}")

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
