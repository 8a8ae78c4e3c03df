"""`qwythos serve` as a library call: the safety checks, the listening socket, uvicorn, and the drain.

The socket is bound before the model loads, so a port in use is one message at once (and port 0
picks a free port, which the banner names). The server binds 127.0.0.1 unless told otherwise; any
other address needs an API key. Ctrl-C / SIGTERM: the running generation stops at its next step
(llama.cpp's abort flag, core/llamacpp/interrupt.py, is raised by the signal itself), the waiting
requests get 503, uvicorn closes the connections (at most `GRACE_S`), then the model is freed.
"""

from __future__ import annotations

import asyncio
import importlib.util
import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from qwythos.core.errors import QwythosError

if TYPE_CHECKING:  # importing launch (the CLI does, for its defaults) loads nothing heavy
    from qwythos.runtime.server.backend import BackendOptions

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
#: Requests that may wait while one generates (llama.cpp's MTP context serves one sequence).
DEFAULT_MAX_QUEUE = 32
#: Connections the kernel queues before the server accepts them (uvicorn's default).
BACKLOG = 2048
#: Seconds uvicorn waits for open connections when stopping.
GRACE_S = 10
INSTALL_HINT = "pip install 'qwythos[serve]' (or bash install.sh serve)"


@dataclass
class ServeOptions:
    backend: BackendOptions
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    api_key: str | None = None
    cors: tuple[str, ...] = ()
    max_queue: int = DEFAULT_MAX_QUEUE
    access_log: bool = True


def require_extra() -> None:
    """The server's packages (the `serve` extra) are installed, or one message says how."""
    missing = [m for m in ("starlette", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        raise QwythosError(
            f"qwythos serve needs {' and '.join(missing)}, which are not installed", INSTALL_HINT
        )


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, api_key: str | None) -> str | None:
    """None on a loopback address; a warning for any other address with a key; no key: refused."""
    if is_loopback(host):
        return None
    if not api_key:
        raise QwythosError(
            f"--host {host} would let anyone who reaches this machine use the model",
            "pass --api-key KEY (clients send `Authorization: Bearer KEY`), or keep the default 127.0.0.1",
        )
    return (
        f"listening on {host}: the model is reachable from the network (API key required); "
        "put it behind TLS (a reverse proxy) before crossing an untrusted network"
    )


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound now (port 0: a free port)."""
    if not 0 <= port <= 65535:
        raise QwythosError(f"--port {port} is out of range", "use 1..65535 (0: any free port)")
    try:
        family, _, _, _, addr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as e:
        raise QwythosError(
            f"--host {host} is not an address of this machine ({e.strerror})", "e.g. --host 127.0.0.1"
        ) from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(BACKLOG)  # connections queue from now on, while the model loads
    except OSError as e:
        sock.close()
        raise QwythosError(
            f"cannot listen on {host}:{port}: {e.strerror}",
            "pick another --port (0: any free port), or stop the program that uses it",
        ) from None
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/v1"


def serve(opts: ServeOptions, *, on_ready: Callable[[str, dict], None] = lambda url, info: None) -> None:
    """Load the model, serve until Ctrl-C / SIGTERM, drain, free everything. on_ready(url, info):
    called once the model is loaded, before the first request is accepted (the banner)."""
    require_extra()
    import uvicorn

    from qwythos.runtime.server.app import create_app
    from qwythos.runtime.server.backend import Backend
    from qwythos.runtime.server.slot import Slot

    if opts.max_queue < 0:
        raise QwythosError(f"--max-queue {opts.max_queue} is out of range", "use 0 or more")
    check_exposure(opts.host, opts.api_key)
    sock = bind(opts.host, opts.port)
    try:
        backend = Backend.open(opts.backend)
    except BaseException:
        sock.close()
        raise
    slot = Slot(backend, opts.max_queue)
    server = None
    try:
        app = create_app(backend, slot, api_key=opts.api_key, cors=opts.cors)
        config = uvicorn.Config(
            app,
            backlog=BACKLOG,
            lifespan="off",
            timeout_graceful_shutdown=GRACE_S,
            access_log=opts.access_log,
            log_level="info",
        )
        server = _draining_server(config, slot)
        on_ready(url_of(sock), {"model": backend.name, **backend.describe()})
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        if server is None or not server.should_exit:
            raise  # not a drained stop: Ctrl-C before the server ran
    finally:
        sock.close()
        slot.close()
        if not slot.alive():
            backend.close()  # never under a generation that did not stop


def _draining_server(config, slot):  # noqa: ANN001, ANN202 - uvicorn's types, imported lazily
    """uvicorn's Server, which also drains the slot when a signal asks it to stop."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        async def startup(self, sockets=None) -> None:  # noqa: ANN001
            self.qwythos_loop = asyncio.get_running_loop()
            await super().startup(sockets=sockets)

        def handle_exit(self, sig, frame) -> None:  # noqa: ANN001
            super().handle_exit(sig, frame)
            loop = getattr(self, "qwythos_loop", None)
            if loop is not None:  # a signal handler must not take the slot's lock: the loop does it
                loop.call_soon_threadsafe(slot.drain)

    return DrainingServer(config)
