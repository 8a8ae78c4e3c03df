"""The steps of bench/gpu_check.sh (one prepared run on a machine with an NVIDIA GPU), each writing
its numbers as JSON; `summary` prints them as one compact table.

    python bench/gpu_check.py build --shape 9b --work DIR --threads 16 --json model.json
    python bench/gpu_check.py place --model F --ngl 999 --json place.json
    python bench/gpu_check.py accept --model F --ngl 999 --rates 0,0.7,0.9 --json accept.json
    python bench/gpu_check.py summary --dir OUT
    python bench/gpu_check.py greedy --json tokens.json     # bench/cuda_build_check.sh compares two builds

Shapes: `9b` is bench_mtp.py's random Qwythos-9B-shaped Q4_K_M with a q8_0 MTP head (random
weights: the controlled-acceptance bench supplies the acceptance); `9b-L8` the same with 8 of its
32 layers (a quarter of the build and the compute, where 9b would not fit the time); `tiny` the
trained tiny model (F32, its own head), for checking the script on a CPU.

`place` decides where the layers go (core/llamacpp/placement.py, at the bench's context), loads the
file with the layers that `--ngl` asks for (999: every layer) and keeps what llama.cpp's log says
about it (offloaded layers, buffer sizes per device): the evidence of where the model ran.
`accept` is bench_mtp_accept.py's controlled-acceptance bench with the model loaded at --ngl.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

SHAPES = ("9b", "9b-L8", "tiny")
#: llama.cpp's log lines that say where a load put what.
_PLACEMENT_LOG = ("offload", "buffer size", "assigned to device", "using device", "ggml_cuda_init", "Device ")


def _json(path: Path | None, data: dict) -> None:
    if path is not None:
        path.write_text(json.dumps(data, indent=1))


def build(shape: str, work: Path, threads: int) -> dict:
    """The model file for `shape`, built in `work` (or found there from an earlier run)."""
    t = time.time()
    work.mkdir(parents=True, exist_ok=True)
    if shape == "tiny":
        from qwythos.convert.text import convert

        path = convert(
            REPO / "data" / "tiny-trained", work / "tiny-F32.gguf", outtype="f32", force=True
        ).output
    else:
        from bench_quantize_9b import write_random_gguf

        from qwythos.quantize.pipeline import quantize

        config = json.loads((REPO / "data" / "qwythos-9b-config.json").read_text())
        if shape == "9b-L8":  # the first 8 of the 32 layers (6 linear attention, 2 full attention)
            text = config.get("text_config", config)
            text["num_hidden_layers"], text["layer_types"] = 8, text["layer_types"][:8]
        (work / f"config-{shape}.json").write_text(json.dumps(config))
        found = sorted((work / "out").glob(f"Random-{shape}-*Q4_K_M*.gguf"))
        path = found[0] if found else None
        if path is None:
            src = write_random_gguf(
                work / f"config-{shape}.json", work / f"Random-{shape}-MTP-BF16.gguf", True
            )
            path = Path(
                quantize(src, work / "out", types=["Q4_K_M"], threads=threads, verify=False).outputs[0].path
            )
            src.unlink()
    return {
        "shape": shape,
        "model": str(path),
        "bytes": Path(path).stat().st_size,
        "seconds": time.time() - t,
    }


def place(model: Path, ngl: int, ctx: int) -> dict:
    """Where the layers should go here, and where llama.cpp put them with n_gpu_layers=ngl."""
    import ctypes

    from qwythos.core.llamacpp import devices, handles, placement
    from qwythos.core.model.memory import model_memory

    found = devices.list_devices()
    decided = placement.place(found, model_memory(model, ctx))
    lines: list[str] = []

    @handles._llama().llama_log_callback
    def keep(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
        line = (text or b"").decode(errors="replace").rstrip()
        if any(k in line for k in _PLACEMENT_LOG):
            lines.append(line)

    handles._init_backend()
    t = time.time()
    with handles.llama_log_to(keep):
        m = handles.load_model(model, n_gpu_layers=ngl)
    load_s = time.time() - t
    m.close()
    return {
        "model": str(model),
        "ctx": ctx,
        "devices": [d.__dict__ for d in found],
        "backends": [b.__dict__ for b in devices.compiled_backends()],
        "gpu_note": devices.missing_gpu_note(),
        "decided": {**decided.__dict__, "shares": [s.__dict__ for s in decided.shares]},
        "ngl": ngl,
        "load_seconds": load_s,
        "llama_log": lines,
    }


def accept(
    model: Path, ngl: int, rates: list[float], drafts: list[int], reps: int, max_tokens: int, threads: int
) -> dict:
    """bench_mtp_accept.py's bench with every load at n_gpu_layers=ngl (it loads with the default)."""
    import bench_mtp_accept

    from qwythos.core.llamacpp import handles

    original = handles.load_model
    handles.load_model = functools.partial(original, n_gpu_layers=ngl)
    try:
        out = bench_mtp_accept.bench_file(
            model, rates, drafts, reps, max_tokens, threads, "def fibonacci(n):\n", False, None
        )
    finally:
        handles.load_model = original
    out["ngl"] = ngl
    return out


def greedy(max_tokens: int, threads: int) -> dict:
    """The trained tiny model's greedy tokens (plain, -ngl 999, MTP draft 2) with the installed build,
    and the one note it gives where a GPU backend found no GPU."""
    import warnings

    from qwythos.convert.text import convert
    from qwythos.core.llamacpp import devices
    from qwythos.core.llamacpp.handles import load_model
    from qwythos.runtime.draft_plan import draft_plan
    from qwythos.runtime.speculative import Engine

    out: dict = {"tokens": {}}
    with (
        tempfile.TemporaryDirectory(prefix="qwythos-greedy-") as tmp,
        warnings.catch_warnings(record=True) as w,
    ):
        warnings.simplefilter("always")
        path = convert(REPO / "data" / "tiny-trained", Path(tmp) / "tiny-F32.gguf", outtype="f32").output
        for name, ngl, draft in (("plain", None, 0), ("plain -ngl 999", 999, 0), ("draft 2", None, 2)):
            with (
                load_model(path, n_gpu_layers=ngl) as m,
                Engine(m, draft_plan(m, draft, threads=threads), n_ctx=256, threads=threads) as eng,
            ):
                toks = m.tokenize("def fibonacci(n):\n")
                out["tokens"][name] = eng.generate(toks, max_tokens=max_tokens).tokens
    out["notes"] = [str(x.message) for x in w]
    out["backends"] = [b.__dict__ for b in devices.compiled_backends()]
    out["devices"] = [d.__dict__ for d in devices.list_devices()]
    return out


def _load(d: Path, name: str) -> dict | None:
    """A step's JSON (None when the step did not finish: a killed step leaves an empty file)."""
    try:
        return json.loads((d / name).read_text())
    except (OSError, ValueError):
        return None


def summary(d: Path) -> str:
    """One compact table of every step's result in `d`."""
    lines = []
    built, placed, acc, bench = (
        _load(d, n) for n in ("model.json", "place.json", "accept.json", "bench.json")
    )
    if built:
        lines.append(f"model: {built['shape']} {Path(built['model']).name}, {built['bytes'] / 2**30:.2f} GiB, "
                     f"built in {built['seconds']:.0f} s")  # fmt: skip
    if placed:
        gpus = [x for x in placed["devices"] if x["kind"] in ("gpu", "igpu")]
        lines.append("devices: " + ", ".join(f"{x['name']} {x['free'] / 2**30:.1f}/{x['total'] / 2**30:.1f} GiB free"
                                             for x in placed["devices"]))  # fmt: skip
        dec = placed["decided"]
        lines.append(
            f"placement (ctx {placed['ctx']}): -ngl {dec['n_gpu_layers']} of {dec['n_layers']}: {dec['reason']}"
        )
        if placed.get("gpu_note"):
            lines.append(f"note: {placed['gpu_note']}")
        off = [x for x in placed["llama_log"] if "offloaded" in x]
        lines.append(f"loaded with -ngl {placed['ngl']} in {placed['load_seconds']:.1f} s: "
                     + ("; ".join(off) if off else "llama.cpp logged no offload") + ("" if gpus else " (no GPU)"))  # fmt: skip
    if acc:
        lines.append("")
        lines.append(f"controlled acceptance, -ngl {acc['ngl']}, {acc['max_tokens']} tokens, median of {acc['reps']} "
                     "(tok/s, paired speed-up over plain)")  # fmt: skip
        lines.append(f"{'a':>5} {'mode':>9} {'tok/s':>8} {'paired':>7} {'accept/depth':>20} {'auto':>6} same")
        for r in acc["rows"]:
            pair = f"{r['paired_speedup']:.2f}x" if r.get("paired_speedup") is not None else "-"
            depth = " ".join(f"{a:.2f}" for a in r.get("acceptance") or []) or "-"
            auto = str(r.get("auto_final")) if r.get("auto_final") is not None else "-"
            lines.append(f"{r['a']!s:>5} {r['mode']:>9} {r['median']:8.1f} {pair:>7} {depth:>20} {auto:>6} "
                         + ("yes" if r.get("same_output", True) else "NO"))  # fmt: skip
    if bench:
        lines.append("")
        lines.append(f"qwythos bench ({bench.get('placement') or 'CPU'}):")
        for r in bench["rows"]:
            lines.append(f"  {r['mode']:>8} {r['gen_tps']:8.1f} tok/s {r['speedup']:5.2f}x")
        rec = bench.get("recommended")
        lines.append(
            f"  recommended: --draft {rec}"
            if rec is not None
            else f"  {bench.get('note') or 'no recommendation'}"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="step", required=True)
    b = sub.add_parser("build")
    b.add_argument("--shape", choices=SHAPES, default="9b")
    b.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "qwythos-gpu-check")
    b.add_argument("--threads", type=int, default=16)
    p = sub.add_parser("place")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--ngl", type=int, default=999)
    p.add_argument("--ctx", type=int, default=4096)
    a = sub.add_parser("accept")
    a.add_argument("--model", type=Path, required=True)
    a.add_argument("--ngl", type=int, default=999)
    a.add_argument("--rates", default="0,0.7,0.9")
    a.add_argument("--drafts", default="1,2,3")
    a.add_argument("--reps", type=int, default=3)
    a.add_argument("--max-tokens", type=int, default=64)
    a.add_argument("--threads", type=int, default=4)
    s = sub.add_parser("summary")
    s.add_argument("--dir", type=Path, required=True)
    g = sub.add_parser("greedy")
    g.add_argument("--max-tokens", type=int, default=64)
    g.add_argument("--threads", type=int, default=1)
    for q in (b, p, a, g):
        q.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.step == "build":
        _json(args.json, build(args.shape, args.work, args.threads))
    elif args.step == "place":
        _json(args.json, place(args.model, args.ngl, args.ctx))
    elif args.step == "accept":
        rates = [float(x) for x in args.rates.split(",") if x.strip()]
        drafts = [int(x) for x in args.drafts.split(",") if x.strip()]
        _json(
            args.json, accept(args.model, args.ngl, rates, drafts, args.reps, args.max_tokens, args.threads)
        )
    elif args.step == "greedy":
        _json(args.json, greedy(args.max_tokens, args.threads))
    else:
        print(summary(args.dir))


if __name__ == "__main__":
    main()
