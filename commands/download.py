"""`qwythos download REPO`: fetch what conversion needs from the Hugging Face Hub."""

from __future__ import annotations

from pathlib import Path

import typer

from qwythos.commands.common import JsonOption, app, console, print_json, simple_table
from qwythos.core.hub import download as hub_download
from qwythos.core.model.release import MODEL_REPO


@app.command()
def download(
    repo_id: str = typer.Argument(..., help=f"Hugging Face model repo, e.g. {MODEL_REPO}."),
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
