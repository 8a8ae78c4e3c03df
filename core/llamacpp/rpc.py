"""llama.cpp's RPC backend: `rpc-server` workers that hold some of a model's layers over TCP.

Reached as llama.cpp's own tools reach it, through the ggml backend registry:
`ggml_backend_reg_by_name("RPC")`, then `ggml_backend_reg_get_proc_address` for
`ggml_backend_rpc_add_server` (client) and `ggml_backend_rpc_start_server` (worker). It exists only
in a llama-cpp-python built with `-DGGML_RPC=ON` (install.sh does that).

llama.cpp aborts the whole process when a worker cannot be reached or speaks another protocol
version, so a worker is checked here first: a TCP connection, then the protocol's own HELLO and
DEVICE_COUNT messages, spoken from Python (`query_worker`). Only a worker that answered is handed
to C. A worker that dies later, mid-run, still aborts the process: a known limit of llama.cpp.

Placement is explicit: a model loaded with workers gets exactly their devices
(`llama_model_params.devices`), and a model loaded without gets none, even after workers were
registered in this process, so a local run never touches the network.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from qwythos.core.errors import QwythosError
from qwythos.core.llamacpp.ggml import ggml as _ggml

#: The RPC protocol of the llama.cpp inside llama-cpp-python 0.3.36 (ggml/include/ggml-rpc.h).
PROTO_MAJOR = 7
PROTO_MINOR = 0
DEFAULT_PORT = 50052
_CMD_HELLO = 14  # ggml-rpc.cpp: static_assert(RPC_CMD_HELLO == 14)
_CMD_DEVICE_COUNT = 15
_CMD_GET_DEVICE_MEMORY = 11
_CONN_CAPS = 24  # transport.h: RPC_CONN_CAPS_SIZE; all zero = plain TCP
_CPU_DEVICE = 0  # GGML_BACKEND_DEVICE_TYPE_CPU
REBUILD_HINT = (
    "reinstall with the RPC backend: `bash install.sh` (it builds llama-cpp-python with -DGGML_RPC=ON)"
)
OPEN_NETWORK_WARNING = (
    "an rpc-server runs whatever graph a client sends and has no authentication: never let it face "
    "an open network (bind it to a private address, or tunnel it)"
)


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


@dataclass
class WorkerInfo:
    """What a worker said about itself over the protocol."""

    endpoint: str
    version: str
    devices: int
    memory: list[tuple[int, int]] = field(default_factory=list)  # (free, total) bytes per device

    def to_dict(self) -> dict:
        return {
            "endpoint": self.endpoint,
            "version": self.version,
            "devices": self.devices,
            "memory": [{"free": f, "total": t} for f, t in self.memory],
        }


def parse_endpoint(spec: str) -> Endpoint:
    """HOST:PORT, HOST an IPv4 address or a name: llama.cpp splits an endpoint at its first ':', so
    it cannot take IPv6 addresses. One clear error otherwise."""
    s = spec.strip()
    host, sep, port_s = s.partition(":")
    if ":" in port_s or host.startswith("["):
        raise QwythosError(
            f"--rpc {spec!r}: llama.cpp's RPC backend takes IPv4 addresses or host names, not IPv6",
            f"use the worker's IPv4 address or a name, e.g. 192.168.1.20:{DEFAULT_PORT}",
        )
    if not sep or not host or not port_s.isdigit() or not 1 <= int(port_s) <= 65535:
        raise QwythosError(
            f"--rpc {spec!r} is not HOST:PORT",
            f"e.g. --rpc 192.168.1.20:{DEFAULT_PORT} (comma-separate several)",
        )
    return Endpoint(host, int(port_s))


def parse_endpoints(spec: str) -> list[Endpoint]:
    """--rpc HOST:PORT[,HOST:PORT...], each worker once."""
    eps = [parse_endpoint(p) for p in spec.split(",") if p.strip()]
    if not eps:
        raise QwythosError("--rpc got no worker", f"e.g. --rpc 127.0.0.1:{DEFAULT_PORT}")
    seen = set()
    for e in eps:
        if str(e) in seen:
            raise QwythosError(f"--rpc names {e} twice", "list each rpc-server once")
        seen.add(str(e))
    return eps


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def _call(sock: socket.socket, cmd: int, payload: bytes, reply: int) -> bytes:
    """One request (cmd byte, u64 size, payload) and its reply (u64 size, data of `reply` bytes)."""
    sock.sendall(struct.pack("<BQ", cmd, len(payload)) + payload)
    (size,) = struct.unpack("<Q", _recv_exact(sock, 8))
    if size != reply:
        raise ValueError(f"a reply of {size} bytes where {reply} were expected")
    return _recv_exact(sock, size)


def _answers_other_protocol(sock: socket.socket, wait: float = 1.0) -> str | None:
    """After a silent HELLO: end the line a line-based server (HTTP) is still reading. An rpc-server
    busy with another client has not accepted us yet and stays silent; anything else that answers
    or hangs up is not an rpc-server. What it looks like ("an HTTP server"), or None when silent."""
    try:
        sock.settimeout(wait)
        sock.sendall(b"\r\n\r\n")
        reply = sock.recv(256)
    except TimeoutError:
        return None
    except OSError:
        return "a server that hung up"
    text = reply.upper()
    if b"HTTP/" in text or b"<HTML" in text or b"<!DOCTYPE" in text:
        return "an HTTP server"
    return "another kind of server" if reply else "a server that hung up"


def query_worker(ep: Endpoint, timeout: float = 5.0) -> WorkerInfo:
    """Speak the protocol's HELLO, DEVICE_COUNT and GET_DEVICE_MEMORY to a worker; a QwythosError
    naming the worker and the fix when it is down, busy, not an rpc-server or of another version."""
    where = f"rpc-server {ep}"
    start_fix = (
        f"start one there: `qwythos rpc-server --host {ep.host} --port {ep.port}` (or llama.cpp's rpc-server)"
    )
    try:
        sock = socket.create_connection((ep.host, ep.port), timeout=timeout)
    except socket.gaierror as e:
        raise QwythosError(
            f"{where}: cannot resolve {ep.host!r} ({e.strerror})", "check the host name"
        ) from None
    except OSError as e:
        why = "nothing listens there" if isinstance(e, ConnectionRefusedError) else (e.strerror or str(e))
        raise QwythosError(f"{where} is unreachable: {why}", start_fix) from None
    try:
        with sock:
            try:
                hello = _call(sock, _CMD_HELLO, bytes(_CONN_CAPS), 4 + _CONN_CAPS)
            except TimeoutError:
                other = _answers_other_protocol(sock)
                if other is not None:
                    raise QwythosError(
                        f"{where} is not a llama.cpp rpc-server: it answers like {other}",
                        "check the port: --rpc takes the HOST:PORT of a `qwythos rpc-server` "
                        "(or llama.cpp's rpc-server)",
                    ) from None
                raise QwythosError(
                    f"{where} accepted the connection but did not answer HELLO within {timeout:.0f} s",
                    "either it is not an rpc-server (check the port), or it is one serving another "
                    "client (an rpc-server serves one at a time): is another run using it?",
                ) from None
            except (ConnectionError, ValueError, OSError):
                raise QwythosError(
                    f"{where} does not speak llama.cpp's RPC protocol (its answer to HELLO was not one)",
                    "check the port: it should be a llama.cpp rpc-server's",
                ) from None
            major, minor, patch = hello[0], hello[1], hello[2]
            version = f"{major}.{minor}.{patch}"
            if major != PROTO_MAJOR or minor > PROTO_MINOR:
                raise QwythosError(
                    f"{where} speaks RPC protocol {version}; this llama.cpp speaks {PROTO_MAJOR}.{PROTO_MINOR}.x",
                    "run the same llama.cpp version on every machine (`qwythos rpc-server` from this install)",
                )
            (count,) = struct.unpack("<I", _call(sock, _CMD_DEVICE_COUNT, b"", 4))
            memory = [
                struct.unpack("<QQ", _call(sock, _CMD_GET_DEVICE_MEMORY, struct.pack("<I", i), 16))
                for i in range(count)
            ]
    except (OSError, ValueError):
        raise QwythosError(f"{where} dropped the connection during the handshake", start_fix) from None
    if count == 0:
        raise QwythosError(f"{where} has no devices", "start it with at least one device")
    return WorkerInfo(str(ep), version, count, [(f, t) for f, t in memory])


def spawn_worker(port: int, threads: int = 1, timeout: float = 60.0) -> tuple[subprocess.Popen, WorkerInfo]:
    """Start `qwythos rpc-server` on 127.0.0.1:port in a child process (output discarded) and wait
    until it answers the handshake; the caller terminates it. For tests and benchmarks."""
    cmd = [sys.executable, "-m", "qwythos.cli", "rpc-server", "--port", str(port), "-t", str(threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ep, deadline = Endpoint("127.0.0.1", port), time.monotonic() + timeout
    while True:
        try:
            return proc, query_worker(ep)
        except QwythosError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise
            time.sleep(0.2)


# --- the ggml side ---------------------------------------------------------------------------

_START = ctypes.CFUNCTYPE(
    None, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.POINTER(ctypes.c_void_p)
)
_ADD = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_char_p)
_REGISTERED: dict[str, list[int]] = {}  # endpoint -> its device handles, registered once per process


def rpc_available() -> bool:
    """Whether this llama-cpp-python was built with the RPC backend."""
    return bool(_ggml().ggml_backend_reg_by_name(b"RPC"))


def _proc(name: str, proto):  # noqa: ANN001, ANN202 - a ctypes prototype in, its function out
    lib = _ggml()
    reg = lib.ggml_backend_reg_by_name(b"RPC")
    if not reg:
        raise QwythosError("this llama-cpp-python was built without llama.cpp's RPC backend", REBUILD_HINT)
    addr = lib.ggml_backend_reg_get_proc_address(reg, name.encode())
    if not addr:
        raise QwythosError(f"llama.cpp's RPC backend has no {name}", REBUILD_HINT)
    return proto(addr)


def connect_workers(endpoints: list[Endpoint], timeout: float = 5.0) -> tuple[list[WorkerInfo], list[int]]:
    """Check every worker, then register each with llama.cpp (once per process); returns what they
    said and the device handles to load a model onto, in the order given."""
    add = _proc("ggml_backend_rpc_add_server", _ADD)
    infos = [query_worker(ep, timeout) for ep in endpoints]  # all checked before any reaches C
    # A worker lost mid-run makes ggml abort; let that be its one line, not a gdb backtrace.
    os.environ.setdefault("GGML_NO_BACKTRACE", "1")
    lib = _ggml()
    devices: list[int] = []
    for ep in endpoints:
        key = str(ep)
        if key not in _REGISTERED:
            reg = add(key.encode())
            if not reg:
                raise QwythosError(f"llama.cpp could not add rpc-server {key}", "check the worker's log")
            lib.ggml_backend_register(reg)
            _REGISTERED[key] = [
                lib.ggml_backend_reg_dev_get(reg, i) for i in range(lib.ggml_backend_reg_dev_count(reg))
            ]
        devices += _REGISTERED[key]
    return infos, devices


_GPU_TYPES = (1, 2)  # GGML_BACKEND_DEVICE_TYPE_GPU, _IGPU


def local_gpus() -> list[int]:
    """This machine's own GPU devices (none on a CPU build), RPC workers' devices left out."""
    lib = _ggml()
    remote = {d for devs in _REGISTERED.values() for d in devs}
    found = (lib.ggml_backend_dev_get(i) for i in range(lib.ggml_backend_dev_count()))
    return [d for d in found if d not in remote and lib.ggml_backend_dev_type(d) in _GPU_TYPES]


def model_devices(workers: list[int] | None) -> ctypes.Array | None:
    """llama_model_params.devices for a load: None (llama.cpp's default: every device) while no
    worker was registered in this process; otherwise a NULL-terminated array of the local GPUs plus
    exactly the given workers' devices, so a load without --rpc never reaches a worker. The caller
    keeps the array alive through the load."""
    if not _REGISTERED:
        return None
    devs = local_gpus() + list(workers or [])
    return (ctypes.c_void_p * (len(devs) + 1))(*devs, None)


def check_bind(ep: Endpoint) -> None:
    """Fail early, with a message, when the worker's address cannot be bound (llama.cpp's server
    binds an IPv4 address given as digits, or prints one line and returns)."""
    try:
        ipaddress.IPv4Address(ep.host)
    except ValueError:
        raise QwythosError(
            f"--host {ep.host!r} is not an IPv4 address",
            "llama.cpp's rpc-server binds one: e.g. --host 127.0.0.1",
        ) from None
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((ep.host, ep.port))
    except OSError as e:
        hint = (
            "another program holds that port: pick another with --port"
            if e.errno == 98
            else "pass an address of this machine (127.0.0.1, or a private network address)"
        )
        raise QwythosError(f"cannot listen on {ep}: {e.strerror}", hint) from None


def check_can_serve(ep: Endpoint):  # noqa: ANN201 - returns the ctypes function
    """The build has the RPC server and `ep` can be bound: a QwythosError naming the fix if not."""
    start = _proc("ggml_backend_rpc_start_server", _START)
    check_bind(ep)
    return start


def serve(ep: Endpoint, threads: int, cache_dir: Path | None = None) -> None:
    """Run a worker on this machine's CPU at `ep` until Ctrl-C or SIGTERM (llama.cpp prints what it
    serves and each client). llama.cpp's accept loop never returns to Python, so it runs in a
    daemon thread while this thread waits, interruptibly; a server that gave up is a QwythosError."""
    start = check_can_serve(ep)
    cpu = _ggml().ggml_backend_dev_by_type(_CPU_DEVICE)
    if not cpu:
        raise QwythosError("llama.cpp found no CPU device to serve", REBUILD_HINT)
    devs = (ctypes.c_void_p * 1)(cpu)
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
    endpoint = str(ep).encode()
    cache = str(cache_dir).encode() if cache_dir else None
    worker = threading.Thread(target=start, args=(endpoint, cache, threads, 1, devs), daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.5)
    raise QwythosError(f"the rpc-server on {ep} stopped", "its output above says why")
