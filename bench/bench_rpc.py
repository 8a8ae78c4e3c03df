"""llama.cpp RPC over the loopback: the trained tiny model split between local and rpc-server layers.

Needs llama-cpp-python built with the RPC backend (`QWYTHOS_RPC=1 bash install.sh`; a plain build
prints how to get one and exits 2). One worker is started in a child process with
`ggml_backend_rpc_start_server`, reached as llama.cpp itself does it: `ggml_backend_reg_by_name("RPC")`
then `ggml_backend_reg_get_proc_address`. The client checks the port, registers the worker with
`ggml_backend_rpc_add_server` before the model loads, and loads the model with --layers of its blocks
on the worker. Greedy output is compared with a local run, MTP drafting off and on; the difference
in seconds per generated token is the RPC overhead.

    nice -n 10 python bench/bench_rpc.py [--layers 2] [--tokens 96] [--port 50052]
"""

from __future__ import annotations

import argparse
import ctypes
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL_DIR = REPO / "data" / "tiny-trained"
PROMPT = "The quick brown fox jumps over the lazy dog. Once upon a time"
CPU_DEVICE = 0  # GGML_BACKEND_DEVICE_TYPE_CPU


def ggml() -> ctypes.CDLL:
    """libggml of the installed llama-cpp-python (the copy libllama already loaded)."""
    import llama_cpp

    lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml.so"), mode=ctypes.RTLD_GLOBAL)
    lib.ggml_backend_reg_by_name.restype = ctypes.c_void_p
    lib.ggml_backend_reg_by_name.argtypes = [ctypes.c_char_p]
    lib.ggml_backend_reg_get_proc_address.restype = ctypes.c_void_p
    lib.ggml_backend_reg_get_proc_address.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.ggml_backend_register.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_by_type.restype = ctypes.c_void_p
    lib.ggml_backend_dev_by_type.argtypes = [ctypes.c_int]
    lib.ggml_backend_dev_count.restype = ctypes.c_size_t
    return lib


def rpc_proc(lib: ctypes.CDLL, name: str, proto: type) -> object:
    reg = lib.ggml_backend_reg_by_name(b"RPC")
    if not reg:
        print(
            "this llama-cpp-python build has no RPC backend; rebuild it: QWYTHOS_RPC=1 bash install.sh",
            file=sys.stderr,
        )
        raise SystemExit(2)
    addr = lib.ggml_backend_reg_get_proc_address(reg, name.encode())
    if not addr:
        raise SystemExit(f"the RPC backend has no {name}")
    return proto(addr)


START_SERVER = ctypes.CFUNCTYPE(
    None, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.POINTER(ctypes.c_void_p)
)
ADD_SERVER = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_char_p)


def serve(endpoint: str, threads: int) -> None:
    """The worker: blocks serving the CPU backend on `endpoint` (child process)."""
    lib = ggml()
    start = rpc_proc(lib, "ggml_backend_rpc_start_server", START_SERVER)
    devs = (ctypes.c_void_p * 1)(lib.ggml_backend_dev_by_type(CPU_DEVICE))
    start(endpoint.encode(), None, threads, 1, devs)


def wait_port(host: str, port: int, timeout: float = 30.0) -> None:
    t0 = time.time()
    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            if time.time() - t0 > timeout:
                raise SystemExit(f"no rpc-server answered on {host}:{port}") from None
            time.sleep(0.2)


def run(model_path: Path, layers: int, tokens: int, threads: int) -> dict[str, tuple[list[int], float]]:
    from qwythos.core.llama import load_model
    from qwythos.runtime.speculative import generate

    out = {}
    model = load_model(model_path, n_gpu_layers=layers)
    try:
        prompt = model.tokenize(PROMPT)
        for draft in (0, 2):
            generate(model, prompt, max_tokens=8, draft=draft, threads=threads, costs=None)  # warm
            t0 = time.perf_counter()
            g = generate(model, prompt, max_tokens=tokens, draft=draft, threads=threads, costs=None)
            out[f"draft {draft}"] = (g.tokens, (time.perf_counter() - t0) / max(1, len(g.tokens)))
    finally:
        model.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=2, help="blocks offloaded to the worker")
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--port", type=int, default=50052)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.threads)
        return
    lib = ggml()
    add = rpc_proc(lib, "ggml_backend_rpc_add_server", ADD_SERVER)
    from qwythos.convert.text import convert

    work = Path("/tmp/qwythos-bench-rpc")
    work.mkdir(exist_ok=True)
    gguf = work / "tiny-trained-BF16.gguf"
    if not gguf.is_file():
        convert(MODEL_DIR, gguf)
    local = run(gguf, 0, args.tokens, args.threads)  # before any RPC device exists
    endpoint = f"127.0.0.1:{args.port}"
    worker = subprocess.Popen([sys.executable, __file__, "--serve", endpoint, "--threads", str(args.threads)])
    try:
        wait_port("127.0.0.1", args.port)
        lib.ggml_backend_register(add(endpoint.encode()))
        print(f"devices after adding {endpoint}: {lib.ggml_backend_dev_count()}")
        remote = run(gguf, args.layers, args.tokens, args.threads)
    finally:
        worker.terminate()
        worker.wait(timeout=10)
    for mode in local:
        (lt, ls), (rt, rs) = local[mode], remote[mode]
        print(
            f"{mode}: identical={lt == rt} ({len(lt)} tokens); local {1000 * ls:.2f} ms/token, "
            f"{args.layers} layer(s) over RPC {1000 * rs:.2f} ms/token, overhead {1000 * (rs - ls):+.2f} ms/token"
        )


if __name__ == "__main__":
    main()
