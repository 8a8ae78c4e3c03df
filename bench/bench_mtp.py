"""Plain against MTP draft decoding, in one process: (a) the trained tiny model, (b) 9B shapes at Q4_K_M.

Prints, per model and mode: generated tokens/s, speed-up over plain, acceptance (overall and per
depth), tokens per target pass, and where a step's time goes (MTP draft, target verify, rollback,
Python bookkeeping), with the Python share of the step. Greedy decoding, so every MTP row must also
produce exactly the plain output ("same").

(b) is a random-weight GGUF with the exact Qwythos-9B shapes and an MTP block (written with the
quantize bench's generator, then quantized to Q4_K_M, head kept bf16), or any GGUF passed with
--model9b. Random weights give ~0 acceptance: that row measures the cost of drafting + rollback.

    nice -n 10 python bench/bench_mtp.py --threads 2            # both models
    nice -n 10 python bench/bench_mtp.py --skip-9b              # tiny only (seconds)
    nice -n 10 python bench/bench_mtp.py --model9b X.gguf       # your own file
    nice -n 10 python bench/bench_mtp.py --cpp BIN              # + llama.cpp's C++ loop, same runs

--cpp takes llama.cpp's llama-speculative-simple (build it with bench/build_llama_cpp_tools.sh) and
runs its `--spec-type draft-mtp` loop on the same GGUF, prompts, draft lengths and threads (greedy,
--temp 0), then prints its generated tokens/s (its own "decoded ... t/s" timing, which like ours
excludes the prompt) next to ours.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def build_9b(work: Path, threads: int) -> Path:
    """Random 9B-shaped BF16 GGUF with the MTP block -> Q4_K_M (cached in `work`)."""
    from qwythos.quantize.pipeline import quantize

    q4 = work / "out" / "Random9B-MTP-Q4_K_M.gguf"
    found = sorted((work / "out").glob("*Q4_K_M*.gguf")) if (work / "out").is_dir() else []
    if found:
        return found[0]
    sys.path.insert(0, str(REPO / "bench"))
    from bench_quantize_9b import write_random_gguf

    src = work / "Random9B-MTP-BF16.gguf"
    if not src.is_file():
        t = time.time()
        write_random_gguf(REPO / "data" / "qwythos-9b-config.json", src, True)
        print(f"wrote {src} ({src.stat().st_size / 2**30:.2f} GiB) in {time.time() - t:.0f} s", flush=True)
    t = time.time()
    rep = quantize(src, work / "out", types=["Q4_K_M"], threads=threads, verify=False)
    q4 = Path(rep.outputs[0].path)
    print(f"quantized to {q4} ({q4.stat().st_size / 2**30:.2f} GiB) in {time.time() - t:.0f} s", flush=True)
    src.unlink()
    return q4


def print_report(title: str, r) -> None:
    print(f"\n{title}: {r.model}  ({r.prompts} prompts x {r.max_tokens} tokens, greedy)")
    hdr = (
        f"{'mode':12} {'tok/s':>7} {'speedup':>7} {'accept':>6} {'per depth':>18} {'tok/pass':>8} "
        f"{'same':>4} {'draft ms':>8} {'verify ms':>9} {'rollb ms':>8} {'py ms':>6} {'py %':>5}"
    )
    print(hdr)
    for x in r.rows:
        steps = max(1, round(x.gen_tokens / max(x.tokens_per_pass, 1e-9)))
        llama = x.t_draft + x.t_verify + x.t_rollback
        per = " ".join(f"{a:.2f}" for a in x.acceptance_per_depth) or "-"
        print(
            f"{x.mode:12} {x.gen_tps:7.2f} {x.speedup:6.2f}x {x.acceptance:6.2f} {per:>18} {x.tokens_per_pass:8.2f} "
            f"{'yes' if x.same_output else 'NO':>4} {1e3 * x.t_draft / steps:8.2f} {1e3 * x.t_verify / steps:9.2f} "
            f"{1e3 * x.t_rollback / steps:8.3f} {1e3 * x.t_python / steps:6.2f} {100 * x.t_python / max(llama, 1e-9):5.1f}"
        )


_CPP_DECODED = re.compile(r"decoded\s+(\d+) tokens in\s+([\d.]+) seconds")
_CPP_COUNT = re.compile(r"n_(drafted|accept)\s*=\s*(\d+)")


def run_cpp(
    binary: Path,
    gguf: Path,
    prompts,
    draft: int,
    max_tokens: int,
    threads: int,
    n_ctx: int,
    repack: bool = True,
) -> dict:
    """llama.cpp's C++ draft-mtp loop (llama-speculative-simple) over `prompts`: tokens/s, acceptance.
    repack=False: `--no-repack`, as our loader does for a file whose repacked batched logits fail."""
    from qwythos.core.errors import QwythosError

    tokens = drafted = accepted = 0
    seconds = 0.0
    for prompt in prompts:
        t = str(threads)
        cmd = [
            str(binary), "-m", str(gguf), "-p", prompt, "-n", str(max_tokens), "-c", str(n_ctx),
            "--spec-type", "draft-mtp", "--spec-draft-n-max", str(draft), "--spec-draft-n-min", "0",
            "--temp", "0", "--seed", "1", "-t", t, "-tb", t, "-td", t, "-tbd", t,
        ] + ([] if repack else ["--no-repack"])  # fmt: skip
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=3600)
        except OSError as e:
            raise QwythosError(
                f"cannot run {binary}: {e}", "build it: bash bench/build_llama_cpp_tools.sh"
            ) from e
        log = p.stdout + p.stderr
        m = _CPP_DECODED.search(log)
        if p.returncode != 0 or m is None:
            tail = "\n".join(log.strip().splitlines()[-15:])
            raise QwythosError(
                f"{binary.name} failed (exit {p.returncode}):\n{tail}", "run the command by hand"
            )
        tokens += int(m.group(1))
        seconds += float(m.group(2))
        counts = dict((k, int(v)) for k, v in _CPP_COUNT.findall(log))
        drafted += counts.get("drafted", 0)
        accepted += counts.get("accept", 0)
    return {
        "draft": draft,
        "gen_tokens": tokens,
        "seconds": seconds,
        "gen_tps": tokens / seconds if seconds else 0.0,
        "acceptance": accepted / drafted if drafted else 0.0,
    }


def print_cpp(r, cpp_rows: list[dict]) -> None:
    ours = {x.draft: x for x in r.rows}
    print(
        f"\n{'draft':>5} {'ours tok/s':>10} {'C++ tok/s':>9} {'ours/C++':>8} {'ours acc':>8} {'C++ acc':>7} {'C++ tok':>7}"
    )
    for c in cpp_rows:
        x = ours[c["draft"]]
        ratio = x.gen_tps / c["gen_tps"] if c["gen_tps"] else float("nan")
        print(
            f"{c['draft']:5d} {x.gen_tps:10.2f} {c['gen_tps']:9.2f} {ratio:7.2f}x {x.acceptance:8.2f} "
            f"{c['acceptance']:7.2f} {c['gen_tokens']:7d}"
        )


def main() -> None:
    from qwythos.convert.text import convert
    from qwythos.core.llamacpp.handles import load_model
    from qwythos.runtime.speed import BENCH_PROMPTS, bench_model

    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--drafts", default="1,2,3,4")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--max-tokens-9b", type=int, default=24)
    ap.add_argument("--model9b", type=Path, default=None)
    ap.add_argument("--work", type=Path, default=Path("/tmp/qwythos-bench-mtp"))
    ap.add_argument("--skip-9b", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="also write all numbers to this JSON file")
    ap.add_argument(
        "--cpp", type=Path, default=None, help="llama-speculative-simple: compare with its C++ loop"
    )
    ap.add_argument("--prompts-9b", type=int, default=1, help="how many bench prompts for the 9B model")
    a = ap.parse_args()
    if a.cpp is not None and not a.cpp.is_file():
        sys.exit(f"error: {a.cpp} not found\nhint: bash bench/build_llama_cpp_tools.sh")
    drafts = tuple(int(d) for d in a.drafts.split(","))
    results = {}

    with tempfile.TemporaryDirectory(prefix="qwythos-bench-tiny-") as tmp:
        gguf = convert(REPO / "data" / "tiny-trained", Path(tmp) / "tiny-trained-BF16.gguf").output
        with load_model(gguf) as m:
            r = bench_model(m, drafts=drafts, max_tokens=a.max_tokens, threads=a.threads)
        print_report("(a) trained tiny model, BF16", r)
        results["tiny"] = r.to_dict()
        if a.cpp:
            cpp = [
                run_cpp(a.cpp, gguf, BENCH_PROMPTS, d, a.max_tokens, a.threads, 1024) for d in drafts if d > 0
            ]
            print_cpp(r, cpp)
            results["tiny_cpp"] = cpp

    if not a.skip_9b:
        a.work.mkdir(parents=True, exist_ok=True)
        path = a.model9b or build_9b(a.work, a.threads)
        with load_model(path) as m:
            r = bench_model(
                m,
                drafts=drafts,
                prompts=BENCH_PROMPTS[: a.prompts_9b],
                max_tokens=a.max_tokens_9b,
                threads=a.threads,
                n_ctx=512,
            )
        print_report("(b) random-weight model, exact 9B shapes, Q4_K_M", r)
        results["9b"] = r.to_dict()
        if a.cpp:
            prompts = BENCH_PROMPTS[: a.prompts_9b]
            cpp = [run_cpp(a.cpp, path, prompts, d, a.max_tokens_9b, a.threads, 512) for d in drafts if d > 0]
            print_cpp(r, cpp)
            results["9b_cpp"] = cpp
    if a.json:
        a.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
