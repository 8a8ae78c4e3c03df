"""qwythos serve: an OpenAI-compatible server (runtime/server) over one model with exact MTP drafting."""

from __future__ import annotations

from pathlib import Path

import typer

from qwythos.commands.common import app, err_console
from qwythos.commands.engine_flags import GPU_LAYERS_OPTION
from qwythos.core.llamacpp.placement import parse_gpu_layers
from qwythos.core.model.release import START_CONTEXT
from qwythos.runtime.server.launch import DEFAULT_HOST, DEFAULT_MAX_QUEUE, DEFAULT_PORT


@app.command("serve")
def serve_cmd(
    model_path: Path = typer.Argument(..., help="A qwen35 .gguf (with an MTP head for drafting)."),
    host: str = typer.Option(
        DEFAULT_HOST, "--host", help="Address to listen on (not loopback: needs --api-key)."
    ),
    port: int = typer.Option(DEFAULT_PORT, "--port", help="Port (0: any free port)."),
    api_key: str | None = typer.Option(
        None, "--api-key", envvar="QWYTHOS_API_KEY", help="Clients must send `Authorization: Bearer KEY`."
    ),
    draft: str | None = typer.Option(
        None, "--draft", help="MTP drafts per step: auto (default: measured on this machine) or a number."
    ),
    no_mtp: bool = typer.Option(False, "--no-mtp", help="Plain decoding, no drafts."),
    gpu_layers: str = GPU_LAYERS_OPTION,
    ctx: int | None = typer.Option(
        None,
        "--ctx",
        help=f"Context length shared by every conversation (default {START_CONTEXT}, or the model's "
        "trained context when smaller).",
    ),
    mmproj: Path | None = typer.Option(
        None, "--mmproj", help="Vision projector GGUF (default: an mmproj*.gguf beside the model)."
    ),
    alias: str | None = typer.Option(
        None, "--alias", help="The model's name in the API (default: the file's)."
    ),
    max_queue: int = typer.Option(
        DEFAULT_MAX_QUEUE, "--max-queue", help="Requests that may wait while one generates (full: 503)."
    ),
    cors: list[str] | None = typer.Option(
        None, "--cors", help="Allow browser requests from ORIGIN (repeat)."
    ),
    threads: int | None = typer.Option(None, "-t", "--threads", help="CPU threads (default: all)."),
) -> None:
    """Serve the model over the OpenAI API: /v1/chat/completions, /v1/completions, /v1/models."""
    from qwythos.core.limits import check_port
    from qwythos.runtime.server.backend import BackendOptions, parse_draft
    from qwythos.runtime.server.launch import ServeOptions, check_exposure, require_extra, serve

    check_port(port, allow_zero=True)
    require_extra()
    warning = check_exposure(host, api_key)
    if warning:
        err_console.print(f"[yellow]warning:[/] {warning}")
    opts = ServeOptions(
        BackendOptions(
            model_path, parse_draft(draft), no_mtp, parse_gpu_layers(gpu_layers), ctx, mmproj, threads, alias
        ),
        host=host,
        port=port,
        api_key=api_key,
        cors=tuple(cors or ()),
        max_queue=max_queue,
    )

    def ready(url: str, info: dict) -> None:
        vision = f", vision {Path(info['mmproj']).name}" if info["mmproj"] else ""
        err_console.print(
            f"[bold]qwythos serve[/] {info['model']}: context {info['n_ctx']}, {info['draft']}{vision}",
            highlight=False,
            soft_wrap=True,
        )
        err_console.print(f"listening on {url} (OpenAI API; Ctrl-C stops)", highlight=False, soft_wrap=True)

    serve(opts, on_ready=ready)
    err_console.print("[dim]stopped[/]")
