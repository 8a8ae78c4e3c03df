"""`qwythos serve` against llama-cpp-python's own server (`examples/server/server.py`, MTP as
`"draft_model": "draft-mtp"`): single-stream tok/s on the same file, the same prompts, greedy.

The reference script comes from the sdist install.sh unpacked in the cache folder; it is run, never
copied. It runs in its own venv (made once, in the cache folder's bench/): our built llama-cpp-python
wheel plus the script's declared dependencies from the package index; /work/venv is never touched.
Both servers load the same GGUF with the same threads and context, the reference with one sequence
(`n_seq_max` 1: one stream, as ours serves). Each draft setting has one server of each kind (ours
`--draft N`; theirs no draft model at 0, else draft-mtp with `draft_model_num_pred_tokens` N), all
started at once and idle between requests; every request goes through the openai client, non-streamed,
with a prompt neither server has seen (the mark first, so no prefix cache serves it), to ours and
theirs in turns (the order flips every rep). Both render the same prompt (thinking on: the
template's default, which the reference cannot change, and ours') and sample greedily with no
repetition penalty. ratio = median over pairs of
ours / theirs. "same": equal completion token counts and equal text, where ours is
reasoning_content + content and theirs the raw text (the reference, given no response_schema,
returns the reply unparsed), both without the think markup and whitespace.

    nice -n 5 python bench/bench_serve_reference.py --threads 1       # the trained tiny model, F32
    python bench/bench_serve_reference.py --model X.gguf --threads 4 --drafts 0,3 --reps 3
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import itertools
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bench_serve import PROMPTS  # the same prompts as the library-vs-server bench (bench/ is on the path)

REPO = Path(__file__).resolve().parents[1]
# The reference script's own dependency list (its `# /// script` header), llama-cpp-python apart:
# that one is our wheel, so both servers run the same llama.cpp build.
REFERENCE_DEPS = ("fastapi", "jinja2", "numpy", "openai", "pydantic", "safetensors", "uvicorn", "websockets")
READY = "qwythos-ready.json"  # written last into the venv: what it was made from
_ids = itertools.count()


def _fresh(prompt: str) -> str:
    """The prompt behind a mark no earlier request had (first, so no prefix cache serves it)."""
    return f"# request {next(_ids)}\n{prompt}"


def reference_script() -> Path:
    from qwythos.core.fileio import cache_dir
    from qwythos.testing.reference import SDIST_TREE

    path = cache_dir(*SDIST_TREE.split("/")[:2], "examples", "server", "server.py")
    if not path.is_file():
        sys.exit(f"{path} not found: run install.sh (it unpacks the llama-cpp-python sdist there)")
    return path


# The reference's draft-mtp keeps a numpy view of llama.cpp's nextn-embeddings buffer (the verify
# rows) and reads it after later decodes have reallocated that buffer: on this file it segfaults
# within the first request or two. One `.copy()` (what it already does for non-contiguous rows)
# makes it run; the bench runs that patched copy from its temporary folder, never the repository.
_VIEW = "target_rows = h_tgt_rows[rows[0] : rows[-1] + 1]\n"
_COPY = "target_rows = h_tgt_rows[rows[0] : rows[-1] + 1].copy()\n"


def patched_reference(script: Path, work: Path) -> Path:
    """`script` with the one-line fix above, written into `work`."""
    text = script.read_text()
    if text.count(_VIEW) != 1:
        sys.exit(
            f"{script}: the line the bench patches ({_VIEW.strip()!r}) is not there once; pass --unpatched"
        )
    out = work / "server_patched.py"
    out.write_text(text.replace(_VIEW, _COPY))
    return out


def our_wheel() -> Path:
    """The llama-cpp-python wheel install.sh built (the newest, if several builds are cached)."""
    from qwythos.core.fileio import cache_dir

    wheels = sorted(cache_dir("wheels").glob("*/llama_cpp_python-*.whl"), key=lambda p: p.stat().st_mtime)
    if not wheels:
        sys.exit(f"no llama-cpp-python wheel under {cache_dir('wheels')}: run install.sh first")
    return wheels[-1]


def reference_venv(venv: Path, wheel: Path) -> Path:
    """The reference server's python: a venv with `wheel` and REFERENCE_DEPS, made on first use
    (again when the wheel changed or a build was interrupted)."""
    py = venv / "bin" / "python"
    want = {"wheel": str(wheel), "size": wheel.stat().st_size, "deps": list(REFERENCE_DEPS)}
    with contextlib.suppress(OSError, ValueError):
        if json.loads((venv / READY).read_text()) == want and py.exists():
            return py
    print(f"making the reference server's venv in {venv} (once)", file=sys.stderr, flush=True)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "--quiet", str(wheel), *REFERENCE_DEPS], check=True)
    (venv / READY).write_text(json.dumps(want))
    return py


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Reference:
    """The reference server in a child process, on 127.0.0.1:port."""

    def __init__(self, proc: subprocess.Popen, port: int, log: Path) -> None:
        self.proc, self.port, self.log = proc, port, log
        self.url = f"http://127.0.0.1:{port}/v1"

    def client(self):  # noqa: ANN201 - openai.OpenAI
        import openai

        return openai.OpenAI(base_url=self.url, api_key="none", max_retries=0, timeout=600)

    def healthy(self) -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request("GET", "/healthz")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()


@contextlib.contextmanager
def reference_server(
    py: Path, script: Path, model: Path, draft: int, threads: int, ctx: int, work: Path, timeout: float = 300
) -> Iterator[Reference]:
    """llama-cpp-python's server on `model`: one sequence, greedy when asked, MTP drafts of `draft`
    tokens (none at 0); stopped with SIGTERM (then killed) when the block ends."""
    port = free_port()
    cfg: dict = {
        "server": {"host": "127.0.0.1", "port": port},
        "model": {
            "path": str(model),
            "alias": "reference",
            "n_ctx": ctx,
            "n_seq_max": 1,
            "threads": threads,
            "threads_batch": threads,
            "store_logits": False,  # as their example configs
        },
    }
    if draft:
        cfg["model"].update(
            draft_model="draft-mtp",
            draft_model_num_pred_tokens=draft,
            draft_model_threads=threads,
            draft_model_threads_batch=threads,
        )
    conf = work / f"reference-draft{draft}.json"
    conf.write_text(json.dumps(cfg, indent=1))
    log = work / f"reference-draft{draft}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(py), str(script), "-C", str(conf)], stdout=out, stderr=subprocess.STDOUT, cwd=work
        )
    srv = Reference(proc, port, log)
    try:
        deadline = time.monotonic() + timeout
        while not srv.healthy():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"the reference server did not start:\n{log.read_text(errors='replace')[-3000:]}"
                )
            time.sleep(0.2)
        yield srv
    finally:
        from qwythos.testing.server import stop_process

        stop_process(proc)


_MARKUP = re.compile(r"</?think>|\s+")


def chat(client, name: str, text: str, max_tokens: int, ours: bool) -> tuple[float, str, int]:  # noqa: ANN001
    """(tok/s, reply without think markup and whitespace, completion tokens) of one non-streamed
    greedy chat, timed from sending to the last byte. Ours is sent `repeat_penalty: 1`: at
    temperature 0 it still applies the card's 1.05, the reference's greedy sampler none."""
    t0 = time.perf_counter()
    r = client.chat.completions.create(
        model=name,
        messages=[{"role": "user", "content": text}],
        temperature=0,
        max_tokens=max_tokens,
        extra_body={"repeat_penalty": 1.0} if ours else None,
    )
    dt = time.perf_counter() - t0
    m = r.choices[0].message
    reply = ((m.model_extra or {}).get("reasoning_content") or "") + (m.content or "")
    return r.usage.completion_tokens / dt, _MARKUP.sub("", reply), r.usage.completion_tokens


def main() -> None:
    from qwythos.core.fileio import cache_dir
    from qwythos.testing.server import running_server

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, help="default: the trained tiny model converted to F32")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-tokens", type=int, default=512)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--drafts", default="0,2,3", help="draft lengths (0 = plain), one server pair each")
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--venv", type=Path, help="the reference server's venv (default: in the cache folder)")
    ap.add_argument("--unpatched", action="store_true", help="run the reference script as it is (see _VIEW)")
    a = ap.parse_args()
    drafts = [int(d) for d in a.drafts.split(",")]
    script, wheel = reference_script(), our_wheel()
    py = reference_venv(a.venv or cache_dir("bench", "reference-server-venv"), wheel)
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        if not a.unpatched:
            script = patched_reference(script, work)
        path = a.model
        if path is None:
            from qwythos.convert.text import convert

            path = convert(REPO / "data" / "tiny-trained", work / "trained-F32.gguf", outtype="f32").output
        servers = {}
        for d in drafts:
            args = ["-t", str(a.threads), "--ctx", str(a.ctx), "--draft", str(d)]
            o = stack.enter_context(running_server(path, *args, log_dir=work))
            t = stack.enter_context(reference_server(py, script, Path(path), d, a.threads, a.ctx, work))
            oc, tc = o.client(timeout=600), t.client()
            servers[d] = ((oc, oc.models.list().data[0].id), (tc, tc.models.list().data[0].id))
        for (oc, on), (tc, tn) in servers.values():  # warm both sides
            chat(oc, on, _fresh(PROMPTS[0]), 8, True)
            chat(tc, tn, _fresh(PROMPTS[0]), 8, False)
        rows = {
            d: {"ours": [], "theirs": [], "ratio": [], "same": 0, "n": 0, "tokens": [], "diff": None}
            for d in drafts
        }
        for rep in range(a.reps):
            for p in PROMPTS:
                for d in drafts:
                    (oc, on), (tc, tn) = servers[d]
                    text, r = _fresh(p), rows[d]
                    first_ours = rep % 2 == 0
                    if first_ours:
                        o = chat(oc, on, text, a.max_tokens, True)
                        t = chat(tc, tn, text, a.max_tokens, False)
                    else:
                        t = chat(tc, tn, text, a.max_tokens, False)
                        o = chat(oc, on, text, a.max_tokens, True)
                    r["ours"].append(o[0])
                    r["theirs"].append(t[0])
                    r["ratio"].append(o[0] / t[0])
                    r["tokens"].append((o[2], t[2]))
                    r["n"] += 1
                    if o[1:] == t[1:]:
                        r["same"] += 1
                    elif r["diff"] is None:
                        r["diff"] = (text, o, t)
            loads.append(os.getloadavg()[0])
            print(f"rep {rep + 1}/{a.reps} done, load average {loads[-1]:.1f}", file=sys.stderr, flush=True)
    print(
        f"qwythos serve against llama-cpp-python's examples/server ({Path(path).name}, {a.threads} thread(s), "
        f"ctx {a.ctx}, greedy, non-streamed via the openai client, up to {a.max_tokens} tokens, "
        f"{len(PROMPTS)} prompts x {a.reps} reps; reference {'as it is' if a.unpatched else 'patched (.copy())'}; load average {min(loads):.1f}-{max(loads):.1f}, "
        f"mean {statistics.mean(loads):.1f} on {os.cpu_count()} CPUs)"
    )
    print(
        f"{'draft':>5} {'ours tok/s':>10} {'theirs tok/s':>12} {'ours/theirs':>11} {'same output':>11} {'tokens':>6}"
    )
    for d, r in rows.items():
        toks = statistics.median(x for pair in r["tokens"] for x in pair)
        print(
            f"{d:>5} {statistics.median(r['ours']):10.1f} {statistics.median(r['theirs']):12.1f} "
            f"{statistics.median(r['ratio']):11.3f} {r['same']:>5}/{r['n']:<5} {toks:6.0f}"
        )
    for d, r in rows.items():
        if r["diff"]:
            text, o, t = r["diff"]
            print(f"first difference at draft {d}, prompt {text!r}:")
            print(f"  ours   ({o[2]} tokens): {o[1][:300]!r}")
            print(f"  theirs ({t[2]} tokens): {t[1][:300]!r}")


if __name__ == "__main__":
    main()
