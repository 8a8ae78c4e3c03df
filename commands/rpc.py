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
    from qwythos.core.errors import QwythosError
    from qwythos.core.llamacpp import rpc
    from qwythos.core.llamacpp.handles import default_threads

    if not 1 <= port <= 65535:
        raise QwythosError(f"--port {port} is out of range", f"use 1..65535, e.g. --port {rpc.DEFAULT_PORT}")
    if threads is not None and threads < 1:
        raise QwythosError(f"--threads {threads} must be at least 1", "e.g. -t 4 (default: all CPUs)")
    ep = rpc.Endpoint(host, port)
    if not ep.is_loopback:
        err_console.print(f"[bold yellow]warning:[/] listening on {ep}: {rpc.OPEN_NETWORK_WARNING}")
    rpc.check_can_serve(ep)
    cache_dir = fileio.cache_dir("rpc") if cache else None
    err_console.print(f"[dim]clients: qwythos run MODEL.gguf --rpc {ep} ...; Ctrl-C stops the worker[/]")
    rpc.serve(ep, threads or default_threads(), cache_dir)
