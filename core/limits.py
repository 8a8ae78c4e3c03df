"""The one checker per kind of value a user hands us in a flag or an environment variable, and what
this machine allows (its CPUs, its memory).

Every command that takes a thread count, a float, a seed, a port or a host checks it here (the
typer callbacks of commands/common.py call these), so the same value gets the same answer
everywhere; each failure is one `QwythosError` naming the flag (or the variable) and the fix.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re

from qwythos.core.errors import QwythosError

#: Threads beyond this many per CPU only make the threads wait on each other (and load the machine).
THREADS_PER_CPU = 4
#: The environment variable that sets the default thread count.
THREADS_ENV = "QWYTHOS_THREADS"
#: Seeds are unsigned 32-bit numbers (llama.cpp's sampler seed; numpy takes them too).
SEED_MAX = 2**32 - 1
PORT_MAX = 65535
_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def cpu_count() -> int:
    """The CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def max_threads() -> int:
    return THREADS_PER_CPU * cpu_count()


def check_threads(value: int | None, flag: str = "--threads") -> int | None:
    """A thread count: 1 up to THREADS_PER_CPU x the CPUs (None: the default)."""
    if value is None:
        return None
    top = max_threads()
    if not 1 <= value <= top:
        raise QwythosError(
            f"{flag} {value} is out of range: use 1..{top} ({THREADS_PER_CPU} per CPU, {cpu_count()} CPUs here)",
            f"e.g. {flag} {cpu_count()} (the default: all CPUs)",
        )
    return value


def env_threads() -> int | None:
    """QWYTHOS_THREADS when set (an empty value counts as unset), checked as --threads is."""
    raw = os.environ.get(THREADS_ENV, "").strip()
    if not raw:
        return None
    try:
        n = int(raw)
    except ValueError:
        raise QwythosError(
            f"{THREADS_ENV}={raw!r} is not a number of threads",
            f"set it to a number such as {cpu_count()}, or unset it (the default: all CPUs)",
        ) from None
    return check_threads(n, THREADS_ENV)


def check_finite(value: float | None, flag: str) -> float | None:
    """A float flag: a finite number (nan and inf are refused alike)."""
    if value is not None and not math.isfinite(value):
        raise QwythosError(f"{flag} {value} is not a finite number", f"give {flag} an ordinary number")
    return value


def check_seed(value: int | None, flag: str = "--seed") -> int | None:
    if value is not None and not 0 <= value <= SEED_MAX:
        raise QwythosError(f"{flag} {value} is out of range", f"use a seed from 0 to {SEED_MAX}")
    return value


def check_positive(value: int | None, flag: str, example: int) -> int | None:
    """A count or a size that must be at least 1."""
    if value is not None and value < 1:
        raise QwythosError(f"{flag} {value} must be at least 1", f"e.g. {flag} {example}")
    return value


def check_port(value: int | None, flag: str = "--port", allow_zero: bool = False) -> int | None:
    """A TCP port: 1..65535 (0, "any free port", only where the command says so)."""
    low = 0 if allow_zero else 1
    if value is not None and not low <= value <= PORT_MAX:
        what = "0 (any free port) or 1" if allow_zero else "1"
        raise QwythosError(f"{flag} {value} is not a TCP port", f"use {what}..{PORT_MAX}")
    return value


def check_host(value: str | None, flag: str) -> str | None:
    """An IP address or a host name (RFC 1123 labels), nothing else reaches a launch script."""
    if value is None:
        return None
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    name = value[:-1] if value.endswith(".") else value
    if not name or len(name) > 253 or not all(_HOST_LABEL.match(p) for p in name.split(".")):
        raise QwythosError(
            f"{flag} {value!r} is neither an IP address nor a host name",
            f"e.g. {flag} 10.0.0.1 or {flag} node0.cluster",
        )
    return value


def available_memory() -> int | None:
    """Bytes this machine can still give a process without swapping (MemAvailable); None where the
    system does not say (then nothing is refused for memory)."""
    try:
        fields = {}
        with open("/proc/meminfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                name, _, rest = line.partition(":")
                parts = rest.split()
                if parts and parts[0].isdigit():
                    fields[name] = int(parts[0]) * 1024
    except OSError:
        return None
    return fields.get("MemAvailable")
