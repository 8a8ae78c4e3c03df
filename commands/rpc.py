"""qwythos rpc-server: a llama.cpp RPC worker on this machine (for `run/chat/bench --rpc`)."""

from __future__ import annotations

import typer

from qwythos.commands.common import app, err_console
from qwythos.core import fileio


@app.command("rpc-server")
def rpc_server_cmd(
    host: str = typer.Option(
        "127.0.0.1", "--host", help="IPv4 address to listen on (default: loopback only)."
    ),
    port: int = typer.Option(50052, "--port", help="TCP port."),
    threads: int | None = typer.Option(None, "-t", "--threads", help="CPU threads (default: all)."),
    cache: bool = typer.Option(
        False,
        "--cache",
        help="Keep received tensors in qwythos's cache folder (~/.cache/qwythos/rpc): a reload sends hashes only.",
    ),
) -> None:
    """Serve this machine's CPU to `qwythos run/chat/bench --rpc HOST:PORT` (or llama.cpp's --rpc).
    Never expose it to an open network: it has no authentication."""
    from qwythos.core.limits import check_port
    from qwythos.core.llamacpp import rpc
    from qwythos.core.llamacpp.handles import default_threads

    check_port(port)
    ep = rpc.Endpoint(host, port)
    rpc.check_can_serve(ep)  # refused before anything says it listens
    if not ep.is_loopback:
        err_console.print(f"[bold yellow]warning:[/] listening on {ep}: {rpc.OPEN_NETWORK_WARNING}")
    cache_dir = fileio.cache_dir("rpc") if cache else None
    err_console.print(f"[dim]clients: qwythos run MODEL.gguf --rpc {ep} ...; Ctrl-C stops the worker[/]")
    rpc.serve(ep, threads or default_threads(), cache_dir)
