"""Fault injection for the CLI: run `qwythos` in a child process under a fault, then check the promise.

Faults reach the real code paths: write errors are injected into the write(2) system calls by
strace (`-e inject=write:error=ENOSPC:when=N`, counted per process), a file-size limit is a real
RLIMIT_FSIZE (EFBIG), slow writes (strace `delay_enter`) hold a command mid-write long enough to
send it SIGINT / SIGTERM / SIGKILL, and a lock held by the test is a second writer.
"""

from __future__ import annotations

import hashlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

STRACE = shutil.which("strace")
#: the system calls that put bytes into files (convert copies raw tensors with copy_file_range)
WRITE_CALLS = ("write", "pwrite64", "writev", "copy_file_range")


@dataclass
class Result:
    rc: int
    out: str
    err: str
    seconds: float


def strace_args(inject: str) -> list[str]:
    """strace wrapping a command: follow children, print nothing, inject `inject` into the write calls."""
    assert STRACE, "strace is not installed"
    calls = ",".join(WRITE_CALLS)
    return [STRACE, "-f", "-qq", "-o", "/dev/null", "-e", f"trace={calls}", "-e", f"inject={calls}:{inject}"]


def _env(extra: dict | None) -> dict:
    env = dict(os.environ)
    env.update(
        {
            "QWYTHOS_THREADS": "1",
            "COLUMNS": "200",
            "PYTHONUNBUFFERED": "1",
            "NO_COLOR": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
    )
    env.update(extra or {})
    return env


def _argv(args: Iterable[str | bytes | Path], inject: str | None) -> list:
    cmd = [sys.executable, "-m", "qwythos.cli", *[a if isinstance(a, bytes) else str(a) for a in args]]
    return (strace_args(inject) if inject else []) + cmd


def cli(
    *args: str | bytes | Path,
    inject: str | None = None,
    fsize_limit: int | None = None,
    stdin: bytes | None = None,
    env: dict | None = None,
    timeout: float = 120,
) -> Result:
    """Run `qwythos ARGS` to the end (optionally under strace injection or a file-size limit)."""

    def limit() -> None:
        if fsize_limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_limit, fsize_limit))

    t0 = time.perf_counter()
    p = subprocess.run(
        _argv(args, inject),
        input=stdin,
        capture_output=True,
        env=_env(env),
        timeout=timeout,
        preexec_fn=limit if fsize_limit is not None else None,
    )
    return Result(
        p.returncode,
        p.stdout.decode("utf-8", "replace"),
        p.stderr.decode("utf-8", "replace"),
        time.perf_counter() - t0,
    )


def start(*args: str | Path, inject: str | None = None, env: dict | None = None) -> subprocess.Popen:
    """Start `qwythos ARGS` without waiting (to be signalled)."""
    return subprocess.Popen(
        _argv(args, inject), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(env)
    )


def children(pid: int) -> list[int]:
    """Direct children of `pid` (from /proc)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        kids = children(todo.pop())
        out += kids
        todo += kids
    return out


def qwythos_pid(proc: subprocess.Popen, timeout: float = 30) -> int:
    """The python process running the command: under strace, the traced process whose command line
    runs qwythos.cli (strace's direct child may be a short-lived helper)."""
    if not Path(proc.args[0]).name.startswith("strace"):
        return proc.pid
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for k in descendants(proc.pid):
            try:
                cmd = Path(f"/proc/{k}/cmdline").read_bytes()
            except OSError:
                continue
            argv = cmd.split(b"\0")
            if b"qwythos.cli" in argv and not argv[0].endswith(b"strace") and alive(k):
                return k
        time.sleep(0.01)
    raise TimeoutError("strace did not start the command")


def wait_for(pred: Callable[[], object], timeout: float = 60, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.02)
    raise TimeoutError(f"timed out waiting for {what}")


def signal_mid_write(
    proc: subprocess.Popen, folder: Path, sig: int, *, after: float = 0.3, pattern: str = "*.partial"
) -> tuple[Result, float, list[int]]:
    """Wait until a temporary file appears in `folder`, send `sig` to the command (not to strace),
    and collect the result. Returns (result, seconds from signal to exit, the command's children
    at the moment of the signal)."""
    pid = qwythos_pid(proc)
    try:
        wait_for(lambda: list(folder.glob(pattern)), 90, f"{pattern} in {folder}")
        time.sleep(after)
        kids = children(pid)
        t0 = time.perf_counter()
        os.kill(pid, sig)
        out, err = proc.communicate(timeout=60)
        dt = time.perf_counter() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    rc = proc.returncode
    if rc == 0 and sig == signal.SIGKILL:  # strace reports the tracee's death in its own status
        rc = -9
    return Result(rc, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"), dt), dt, kids


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def digests(*paths: Path) -> dict[str, str]:
    """sha256 of each file (folders: every file in them), to prove inputs were left alone."""
    out: dict[str, str] = {}
    for p in paths:
        files = sorted(q for q in Path(p).rglob("*") if q.is_file()) if Path(p).is_dir() else [Path(p)]
        for f in files:
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def one_message(r: Result) -> str:
    """The command failed cleanly: no traceback, exactly one `error:` line. Returns stderr."""
    assert "Traceback" not in r.err and "Traceback" not in r.out, r.err
    assert "Exception ignored" not in r.err, r.err
    assert r.err.count("error:") == 1, r.err
    return r.err


def leftovers(folder: Path) -> list[str]:
    """Temporary and lock files left in `folder`."""
    return sorted(p.name for p in Path(folder).iterdir() if p.name.endswith((".partial", ".lock")))


def term_exit_ok(rc: int) -> bool:
    """A command stopped by Ctrl-C / SIGTERM exits 130."""
    return rc == 130


__all__ = [
    "Result",
    "alive",
    "children",
    "cli",
    "digests",
    "leftovers",
    "one_message",
    "qwythos_pid",
    "signal_mid_write",
    "start",
    "strace_args",
    "term_exit_ok",
    "wait_for",
]
