"""qwythos doctor: is the installed llama.cpp build safe on this CPU."""

from __future__ import annotations

import typer

from qwythos.commands.common import (
    JsonOption,
    app,
    console,
    print_json,
    simple_table,
    to_jsonable,
)


@app.command()
def doctor(
    json_out: bool = JsonOption,
    fresh: bool = typer.Option(False, "--fresh", help="Probe again instead of using the cached verdict."),
) -> None:
    """Check that the installed llama.cpp build runs quantized models on this CPU (AMX crash probe)."""
    from qwythos.core.llamacpp import probe, rpc

    result = probe.probe_build(use_cache=not fresh)
    has_rpc = rpc.rpc_available()
    unrepacked = probe.batched_failures()
    if json_out:
        print_json(
            {
                **to_jsonable(result),
                "verdict": result.verdict,
                "model_kwargs": result.model_kwargs(),
                "rpc_backend": has_rpc,
                "loaded_without_repacked_weights": unrepacked,
            }
        )
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
        rows.append(["RPC backend (--rpc, rpc-server)", "yes" if has_rpc else f"no: {rpc.REBUILD_HINT}"])
        rows.append(
            [
                "files whose repacked batched logits failed (loaded without repacking)",
                "\n".join(unrepacked) if unrepacked else "none",
            ]
        )
        console.print(simple_table("qwythos doctor", ["check", "result"], rows))
        if not result.default_ok:
            console.print(f"[yellow]fix:[/] rebuild llama-cpp-python without AMX:\n  {probe.REBUILD_COMMAND}")
    if not result.default_ok and not result.fallback_ok:
        raise typer.Exit(1)
