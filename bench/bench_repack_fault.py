"""Which repacked weights return wrong batched logits (README, "A llama.cpp kernel fault")?

Loads MODEL once per mode, each in its own process, and runs load_model's batched-logits check
(core/llamacpp/handles.batched_logit_rows: a 4-row batch after a real-text prefix against the same
rows one at a time). Modes:

    all       llama.cpp's default: every weight it can repack is repacked
    none      use_extra_bufts=False (qwythos's whole-model fallback)
    -KIND     every weight repacked except the tensors of KIND (e.g. ffn_down), kept plain
              (core/llamacpp/repack.py: a per-tensor buffer override)
    +KIND     only KIND repacked, every other kind plain

By default: all, none, then -KIND and +KIND for every kind of 2-D quantized weight in the file.
Each row: whether the rows agree, the largest difference over the logits' scale, whole rows of
zeros, what llama.cpp reported as its CPU_REPACK buffer, and the load and check times.

    python bench/bench_repack_fault.py MODEL.gguf [--modes all,none,-ffn_down] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

KIND = re.compile(r"^(?:blk\.\d+\.)?(.+)\.weight$")


def weight_kinds(path: Path) -> dict[str, list[str]]:
    """Kinds of 2-D quantized weights used by matrix products, with their types (token_embd, read
    by row, is never repacked)."""
    from gguf import GGMLQuantizationType

    from qwythos.core.gguf.view import read_view

    kinds: dict[str, set[str]] = {}
    for t in read_view(path).tensors:
        m, name = KIND.match(t.name), GGMLQuantizationType(t.ggml_type).name
        if m and len(t.ne) == 2 and name not in ("F32", "F16", "BF16") and m[1] != "token_embd":
            kinds.setdefault(m[1], set()).add(name)
    return {k: sorted(v) for k, v in sorted(kinds.items())}


def pattern(kind: str) -> str:
    return rf"(^|\.){re.escape(kind)}\.weight$"


def child(path: Path, mode: str, kinds: list[str], threads: int) -> dict:
    import numpy as np

    from qwythos.core.llamacpp import log
    from qwythos.core.llamacpp.handles import (
        Model,
        _init_backend,
        _load_handle,
        batched_logit_rows,
        read_model_info,
    )
    from qwythos.core.llamacpp.probe import logits_agree

    if mode == "all":
        repacked, plain = True, ()
    elif mode == "none":
        repacked, plain = False, ()
    elif mode[0] == "-":
        repacked, plain = True, (pattern(mode[1:]),)
    else:
        repacked, plain = True, tuple(pattern(k) for k in kinds if k != mode[1:])
    info = read_model_info(path)
    _init_backend()  # it silences the log: before the log is routed here
    t0 = time.perf_counter()
    with log.llama_log_captured() as pieces:
        handle = _load_handle(info, load_mtp=False, n_gpu_layers=0, repacked=repacked, plain=plain)
    load_s = time.perf_counter() - t0
    model = Model(info, handle, False)
    t0 = time.perf_counter()
    batched, single = batched_logit_rows(model, threads)
    check_s = time.perf_counter() - t0
    model.close()
    scale = max(float(np.abs(single).max()), 1e-6)  # as logits_agree scales the difference
    buffers = {}
    for text in "".join(pieces).splitlines():
        m = re.search(r"(\S+) model buffer size\s*=\s*([\d.]+) MiB", text)
        if m:
            buffers[m[1]] = float(m[2])
    return {
        "mode": mode,
        "agree": logits_agree(batched, single),
        "finite": bool(np.isfinite(batched).all()),
        "zero_rows": int((np.abs(batched).max(axis=1) == 0).sum()),
        "max_diff_over_scale": float(np.abs(batched - single).max()) / scale,
        "buffers_mib": buffers,
        "load_s": load_s,
        "check_s": check_s,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", type=Path)
    ap.add_argument("--modes", default="", help="comma-separated; default: all, none, -KIND, +KIND")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    kinds = weight_kinds(args.model)
    if args.child:
        print(json.dumps(child(args.model, args.child, list(kinds), args.threads)))
        return
    print("repackable-looking kinds:", ", ".join(f"{k} ({'/'.join(v)})" for k, v in kinds.items()))
    modes = (
        args.modes.split(",") if args.modes else ["all", "none"] + [f"{s}{k}" for k in kinds for s in "-+"]
    )
    rows = []
    print(
        f"{'mode':>22} {'agree':>6} {'diff/scale':>10} {'zero rows':>9} {'CPU_REPACK MiB':>14} {'load s':>7} {'check s':>7}"
    )
    for mode in modes:
        proc = subprocess.run(
            [sys.executable, __file__, str(args.model), "--threads", str(args.threads), f"--child={mode}"],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            print(f"{mode:>22} failed (rc {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
            rows.append({"mode": mode, "rc": proc.returncode})
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(r)
        print(
            f"{mode:>22} {'yes' if r['agree'] else 'NO':>6} {r['max_diff_over_scale']:>10.3f} {r['zero_rows']:>9} "
            f"{r['buffers_mib'].get('CPU_REPACK', 0):>14.0f} {r['load_s']:>7.1f} {r['check_s']:>7.1f}",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
