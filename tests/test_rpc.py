"""llama.cpp RPC: endpoints, the pre-flight handshake against misbehaving peers, and the real thing
over the loopback (a `qwythos rpc-server` worker holding layers of the trained tiny model).

The loopback runs happen in child processes: a registered worker is process-wide in llama.cpp, and a
worker that goes away takes its client down with it, so the pytest process never registers one.
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from qwythos.core.errors import QwythosError
from qwythos.core.llamacpp import rpc

QWYTHOS = [sys.executable, "-m", "qwythos.cli"]


# --- endpoints -------------------------------------------------------------------------------
def test_parse_endpoints():
    eps = rpc.parse_endpoints("127.0.0.1:50052, gpu-box:6000")
    assert [str(e) for e in eps] == ["127.0.0.1:50052", "gpu-box:6000"]
    assert eps[0].is_loopback and not eps[1].is_loopback
    for bad, words in (
        ("127.0.0.1", "HOST:PORT"),
        ("host:0", "HOST:PORT"),
        ("host:70000", "HOST:PORT"),
        (":50052", "HOST:PORT"),
        ("[::1]:50052", "IPv6"),
        ("::1:50052", "IPv6"),
        ("a:1,a:1", "twice"),
        (" , ", "no worker"),
    ):
        with pytest.raises(QwythosError, match=words):
            rpc.parse_endpoints(bad)


# --- the handshake against peers that are not a healthy worker ---------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Peer:
    """A one-connection TCP server on the loopback that answers with `reply(conn)`."""

    def __init__(self, reply):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.ep = rpc.Endpoint("127.0.0.1", self.sock.getsockname()[1])
        self.got = b""
        self._t = threading.Thread(target=self._run, args=(reply,), daemon=True)
        self._t.start()

    def _run(self, reply):
        conn, _ = self.sock.accept()
        with conn:
            reply(self, conn)

    def close(self):
        self.sock.close()


def _recv(conn: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:  # the client hung up
            raise ConnectionError
        buf += chunk
    return buf


def _read_request(peer: _Peer, conn: socket.socket) -> tuple[int, bytes]:
    head = _recv(conn, 9)
    cmd, size = struct.unpack("<BQ", head)
    body = _recv(conn, size)
    peer.got += head + body
    return cmd, body


def _worker(version=(7, 0, 0), devices=1):
    def reply(peer, conn):
        while True:
            try:
                cmd, body = _read_request(peer, conn)
            except (struct.error, OSError):
                return
            if cmd == 14:
                data = bytes(version) + b"\0" + bytes(24)
            elif cmd == 15:
                data = struct.pack("<I", devices)
            elif cmd == 11:
                (dev,) = struct.unpack("<I", body)
                data = struct.pack("<QQ", (dev + 1) * 2**30, 4 * 2**30)
            else:
                return
            conn.sendall(struct.pack("<Q", len(data)) + data)
            if cmd == 14 and version[0] != 7:
                return

    return reply


def test_query_worker_reads_version_devices_and_memory():
    peer = _Peer(_worker(devices=2))
    try:
        info = rpc.query_worker(peer.ep, timeout=5)
    finally:
        peer.close()
    assert (info.version, info.devices) == ("7.0.0", 2)
    assert info.memory == [(2**30, 4 * 2**30), (2 * 2**30, 4 * 2**30)]
    # what went over the wire: HELLO with 24 zero capability bytes, then DEVICE_COUNT with nothing
    assert peer.got[:33] == struct.pack("<BQ", 14, 24) + bytes(24)
    assert peer.got[33:42] == struct.pack("<BQ", 15, 0)


@pytest.mark.parametrize(
    "reply,words",
    [
        (_worker(version=(6, 2, 0)), "speaks RPC protocol 6.2.0"),
        (_worker(version=(7, 1, 0)), "speaks RPC protocol 7.1.0"),
        (_worker(devices=0), "has no devices"),
        (lambda peer, conn: conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n"), "does not speak"),
        (lambda peer, conn: conn.close(), "does not speak"),
        (lambda peer, conn: time.sleep(3), "did not answer"),
    ],
    ids=["old-major", "newer-minor", "no-devices", "http", "hangs-up", "silent"],
)
def test_query_worker_refuses_what_would_abort_llama_cpp(reply, words):
    peer = _Peer(reply)
    try:
        with pytest.raises(QwythosError, match=words) as e:
            rpc.query_worker(peer.ep, timeout=1)
    finally:
        peer.close()
    assert str(peer.ep) in e.value.message


def test_query_worker_nothing_listening():
    ep = rpc.Endpoint("127.0.0.1", _free_port())
    with pytest.raises(QwythosError, match="unreachable: nothing listens there") as e:
        rpc.query_worker(ep, timeout=1)
    assert f"qwythos rpc-server --host 127.0.0.1 --port {ep.port}" in e.value.hint


def test_check_bind_messages():
    with pytest.raises(QwythosError, match="not an IPv4 address"):
        rpc.check_bind(rpc.Endpoint("localhost", 50052))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        with pytest.raises(QwythosError, match="cannot listen on") as e:
            rpc.check_bind(rpc.Endpoint("127.0.0.1", s.getsockname()[1]))
    assert "--port" in e.value.hint


def test_run_with_unreachable_worker_is_one_message(rt_trained_gguf):
    """No abort inside llama.cpp: the worker is checked before the model loads."""
    port = _free_port()
    p = subprocess.run(
        [*QWYTHOS, "run", str(rt_trained_gguf), "-p", "hi", "--raw", "--rpc", f"127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 1, p.stdout + p.stderr
    assert f"rpc-server 127.0.0.1:{port} is unreachable" in p.stderr and "Traceback" not in p.stderr


# --- the real worker over the loopback (needs a llama-cpp-python built with GGML_RPC) ------------
@pytest.fixture(scope="module")
def worker():
    """`qwythos rpc-server` on a free loopback port, one thread."""
    if not rpc.rpc_available():
        pytest.skip(f"llama-cpp-python has no RPC backend: {rpc.REBUILD_HINT}")
    port = _free_port()
    proc, info = rpc.spawn_worker(port, threads=1)
    yield rpc.Endpoint("127.0.0.1", port), info, proc
    proc.terminate()
    proc.wait(timeout=20)


def _run_json(gguf: Path, *extra: str) -> dict:
    args = [*QWYTHOS, "run", str(gguf), "-p", "def fibonacci(n):", "--raw", "--temp", "0"]
    args += ["--max-tokens", "32", "-t", "1", "--json", *extra]
    p = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    return json.loads(p.stdout)


def test_worker_answers_our_handshake(worker):
    ep, info, _ = worker
    assert info.version.startswith(f"{rpc.PROTO_MAJOR}.") and info.devices == 1
    free, total = info.memory[0]
    assert 0 < free <= total


@pytest.mark.parametrize("draft", ["0", "2"])
def test_layers_on_a_worker_give_the_local_output(worker, rt_trained_gguf, draft):
    """The tiny model split: 2 of its layers (and the output) on the worker, the rest here; greedy
    output identical to an all-local run, MTP drafting off and on."""
    ep, _, proc = worker
    local = _run_json(rt_trained_gguf, "--draft", draft, "-ngl", "0")
    split = _run_json(rt_trained_gguf, "--draft", draft, "--rpc", str(ep), "--gpu-layers", "2")
    assert split["placement"]["gpu_layers"] == 2 and split["placement"]["rpc"][0]["endpoint"] == str(ep)
    assert split["placement"]["reason"].startswith("-ngl 2: the last 2 of 6 layers on the rpc-server workers")
    assert local["placement"]["gpu_layers"] == 0 and local["placement"]["rpc"] == []
    assert split["generation"]["tokens"] == local["generation"]["tokens"]
    assert len(local["generation"]["tokens"]) == 32
    if draft == "2":
        assert split["generation"]["stats"]["drafted"] > 0
    assert proc.poll() is None  # the worker serves the next client too


def test_rpc_server_refuses_a_taken_port(worker):
    ep, _, _ = worker
    p = subprocess.run(
        [*QWYTHOS, "rpc-server", "--port", str(ep.port)], capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 1 and f"cannot listen on {ep}" in p.stderr, p.stderr


def test_rpc_server_refuses_before_warning_and_warns_off_loopback(worker, monkeypatch):
    """An address that cannot be served is refused before anything says it listens; any address but
    the loopback that can be gets the warning (the worker itself stubbed out here, so the test does
    not leave one on the network)."""
    from typer.testing import CliRunner

    from qwythos.cli import app
    from qwythos.core.llamacpp import rpc

    ep, _, _ = worker
    p = subprocess.run(
        [*QWYTHOS, "rpc-server", "--host", "0.0.0.0", "--port", str(ep.port)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 1 and "cannot listen" in p.stderr and "open network" not in p.stderr
    served = []
    monkeypatch.setattr(rpc, "check_can_serve", lambda e: None)
    monkeypatch.setattr(rpc, "serve", lambda e, *a: served.append(str(e)))
    r = CliRunner().invoke(app, ["rpc-server", "--host", "0.0.0.0", "--port", str(ep.port)])
    assert "never let it face an open network" in " ".join(r.output.split()) and served == [
        f"0.0.0.0:{ep.port}"
    ]
