"""`qwythos upload FOLDER REPO`: publish a folder of GGUFs with its card and Modelfile in one commit."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from qwythos.commands.common import JsonOption, app, err_console, print_json
from qwythos.core.model.release import GGUF_REPO
from qwythos.export.upload import upload as hub_upload


@app.command()
def upload(
    folder: Path = typer.Argument(..., help="Folder with the GGUFs (+ manifest, SHA256SUMS, Modelfile)."),
    repo_id: str = typer.Argument(..., help=f"Target repo, e.g. {GGUF_REPO}."),
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
