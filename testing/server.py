"""A live `qwythos serve` for tests and benches: the real command in a child process on a free
loopback port (port 0; the banner names it), stopped with SIGTERM at the end, and plain-HTTP helpers
for what the openai client will not send (malformed JSON, a bare disconnect)."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_URL_RE = re.compile(r"listening on (http://127\.0\.0\.1:(\d+)/v1)")


@dataclass
class Server:
    url: str  # http://127.0.0.1:PORT/v1, what an OpenAI client takes as base_url
    port: int
    proc: subprocess.Popen
    log: Path

    def client(self, **kw: Any):  # noqa: ANN201 - openai.OpenAI
        import openai

        kw.setdefault("api_key", "none")
        kw.setdefault("max_retries", 0)
        kw.setdefault("timeout", 120)
        return openai.OpenAI(base_url=self.url, **kw)

    def request(
        self, method: str, path: str, body: Any = None, headers: dict | None = None, timeout: float = 120
    ) -> tuple[int, dict, Any]:
        """(status, headers, JSON or text) of one plain HTTP request; body: bytes as they are, else JSON."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        h = {"Content-Type": "application/json", **(headers or {})}
        try:
            conn.request(method, path, body=data, headers=h)
            r = conn.getresponse()
            raw = r.read()
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = raw.decode(errors="replace")
            return r.status, {k.lower(): v for k, v in r.getheaders()}, parsed
        finally:
            conn.close()

    def post_raw(self, path: str, body: dict, headers: dict | None = None) -> socket.socket:
        """A POST on a bare socket, nothing read yet (close it to disconnect)."""
        data = json.dumps(body).encode()
        head = {"Host": f"127.0.0.1:{self.port}", "Content-Type": "application/json", **(headers or {})}
        lines = [
            f"POST {path} HTTP/1.1",
            *(f"{k}: {v}" for k, v in head.items()),
            f"Content-Length: {len(data)}",
        ]
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=120)
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + data)
        return sock

    def open_stream(
        self, path: str, body: dict, headers: dict | None = None, events: int = 2
    ) -> socket.socket:
        """A streamed request, returned once `events` SSE events arrived (close the socket to
        disconnect mid-stream; `read_rest` reads the remainder)."""
        sock = self.post_raw(path, {**body, "stream": True}, headers)
        got = b""
        while got.count(b"data: ") < events:
            chunk = sock.recv(65536)
            if not chunk:
                raise RuntimeError(f"the stream ended early: {got[-500:]!r}")
            got += chunk
        return sock

    @staticmethod
    def read_rest(sock: socket.socket) -> bytes:
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
            if b"data: [DONE]" in out:
                break
        return out

    def health(self) -> dict:
        return self.request("GET", "/health")[2]

    def wait_idle(self, timeout: float = 60) -> dict:
        """/health once nothing generates or waits (or the last one seen at the deadline)."""
        return self.wait_for(lambda slot: not slot["busy"] and not slot["queued"], timeout)

    def wait_for(self, ok, timeout: float = 60) -> dict:  # noqa: ANN001 - a predicate on /health's slot
        """/health once ok(its "slot") holds (or the last one seen at the deadline)."""
        deadline = time.monotonic() + timeout
        while True:
            h = self.health()
            if ok(h["slot"]) or time.monotonic() > deadline:
                return h
            time.sleep(0.02)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Signal the server and wait for it to exit; its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                raise
        return self.proc.returncode


@contextlib.contextmanager
def running_server(model: str | Path, *args: str, log_dir: Path, timeout: float = 240) -> Iterator[Server]:
    """`qwythos serve MODEL --port 0 ARGS...` until the block ends (then SIGTERM, then kill)."""
    log = Path(log_dir) / f"serve-{os.getpid()}-{time.monotonic_ns()}.log"
    cmd = [sys.executable, "-m", "qwythos.cli", "serve", str(model), "--port", "0", *args]
    env = {**os.environ, "COLUMNS": "400"}  # the banner on one line
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    server = None
    try:
        deadline = time.monotonic() + timeout
        while server is None:
            m = _URL_RE.search(log.read_text(errors="replace"))
            if m:
                server = Server(m.group(1), int(m.group(2)), proc, log)
            elif proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"qwythos serve did not start:\n{log.read_text(errors='replace')[-3000:]}")
            else:
                time.sleep(0.05)
        yield server
    finally:
        stop_process(proc)


def stop_process(proc: subprocess.Popen) -> None:
    """A server child stopped as a user would (SIGTERM: it drains), killed if it has not exited
    within a minute."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
