"""qwythos doctor: is the installed llama.cpp build safe on this CPU, what can it run on, and where
would a model's layers go."""

from __future__ import annotations

from pathlib import Path

import typer

from qwythos.commands.common import (
    JsonOption,
    app,
    console,
    gib,
    print_json,
    simple_table,
    to_jsonable,
)
from qwythos.core.model.release import START_CONTEXT


@app.command()
def doctor(
    model: Path | None = typer.Argument(
        None, help="A GGUF: where its layers would go on this machine, and whether it fits."
    ),
    ctx: int = typer.Option(START_CONTEXT, "--ctx", help="Context length the placement plans for."),
    kv_type: str = typer.Option("f16", "--kv-type", help="KV cache type: f16, q8_0 or q4_0."),
    json_out: bool = JsonOption,
    fresh: bool = typer.Option(False, "--fresh", help="Probe again instead of using the cached verdict."),
) -> None:
    """Check the installed llama.cpp build: the AMX crash probe on this CPU, the compiled backends
    and the devices they find (free/total memory), and, given a model, where its layers would go."""
    from qwythos.core.llamacpp import devices, placement, probe, rpc
    from qwythos.core.model.memory import model_memory

    memory = model_memory(model, ctx, kv_type) if model is not None else None  # a bad file fails first
    result = probe.probe_build(use_cache=not fresh)
    has_rpc = rpc.rpc_available()
    unrepacked = probe.batched_failures()
    backends = devices.compiled_backends()
    found = devices.list_devices()
    gpu_note = devices.missing_gpu_note(backends)
    placed = placement.place(found, memory) if memory is not None else None
    if json_out:
        out = {
            **to_jsonable(result),
            "verdict": result.verdict,
            "model_kwargs": result.model_kwargs(),
            "rpc_backend": has_rpc,
            "loaded_without_repacked_weights": {  # false: none repacked; a list: those tensors plain
                f: (list(v) if v else False) for f, v in unrepacked.items()
            },
            "backends": to_jsonable(backends),
            "devices": to_jsonable(found),
            "gpu_note": gpu_note,
        }
        if placed is not None:
            out["placement"] = {**to_jsonable(placed), "model": str(model), "ctx": ctx, "kv_type": kv_type}
        print_json(out)
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
                "\n".join(
                    f"{f} ({'tensors matching ' + ', '.join(v) + ' plain' if v else 'no weights repacked'})"
                    for f, v in unrepacked.items()
                )
                or "none",
            ]
        )
        rows.append(["compiled backends", ", ".join(f"{b.name} ({b.n_devices} devices)" for b in backends)])
        console.print(simple_table("qwythos doctor", ["check", "result"], rows))
        console.print(
            simple_table(
                "devices",
                ["device", "kind", "backend", "free", "total", "description"],
                [[d.name, d.kind, d.backend, gib(d.free), gib(d.total), d.description] for d in found],
            )
        )
        if gpu_note:
            console.print(f"[yellow]note:[/] {gpu_note}")
        if placed is not None:
            _print_placement(model, placed)
        if not result.default_ok:
            console.print(f"[yellow]fix:[/] rebuild llama-cpp-python without AMX:\n  {probe.REBUILD_COMMAND}")
    if not result.default_ok and not result.fallback_ok:
        raise typer.Exit(1)


def _print_placement(model: Path, placed) -> None:  # noqa: ANN001 - a placement.Placement
    rows = [[s.device, s.layers, gib(s.bytes), gib(s.free)] for s in placed.shares]
    rows.append(["CPU", f"{placed.cpu_layers} + token embedding", gib(placed.cpu_bytes), ""])
    console.print(
        simple_table(f"where {model.name}'s layers go", ["device", "layers", "holds", "free"], rows)
    )
    verdict = "fits" if placed.fits else ("partly on the GPU" if placed.n_gpu_layers else "CPU only")
    console.print(
        f"[bold]{verdict}[/] (-ngl {placed.n_gpu_layers}, what -ngl auto, the default, loads): {placed.reason}",
        soft_wrap=True,
        highlight=False,
    )
