"""Put a file into a destination folder by copy, hard link, symbolic link or move, never overwriting.

A destination that already holds the same bytes (or is the same file) is left as it is; one that
holds different bytes is refused. Copies are written under a temporary name and renamed.
"""

from __future__ import annotations

import errno
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from qwythos.core.errors import QwythosError
from qwythos.core.fileio import atomic_output, check_free_space, ensure_writable_dir, sha256_file

#: Placement modes and what each does.
MODES: dict[str, str] = {
    "copy": "copied",
    "hardlink": "hard-linked",
    "symlink": "symlinked",
    "move": "moved",
}


@dataclass
class Placement:
    source: Path
    dest: Path
    mode: str
    action: str  # "copied" / "hard-linked" / "symlinked" / "moved" / "already in place"


def same_bytes(a: Path, b: Path) -> bool:
    """True when `a` and `b` are the same file or hold identical bytes."""
    try:
        if os.path.samefile(a, b):
            return True
    except OSError:
        return False
    if a.stat().st_size != b.stat().st_size:
        return False
    return sha256_file(a) == sha256_file(b)


def place_file(source: Path, dest: Path, mode: str) -> Placement:
    """Place `source` at `dest` (a file path) by `mode`; see the module docstring for the rules."""
    if mode not in MODES:
        raise QwythosError(f"unknown placement mode {mode!r}", f"use one of {', '.join(MODES)}")
    source = Path(source)
    dest = Path(dest)
    if dest.exists() or dest.is_symlink():
        if dest.exists() and same_bytes(source, dest):
            return Placement(source, dest, mode, "already in place")
        raise QwythosError(
            f"{dest} already exists and differs from {source.name}",
            "remove or rename the existing file yourself, or pick another --models-dir/--publisher",
        )
    ensure_writable_dir(dest.parent, "folder")
    try:
        if mode == "copy":
            check_free_space(dest.parent, source.stat().st_size, f"a copy of {source.name}")
            with atomic_output(dest) as tmp:
                shutil.copyfile(source, tmp)
        elif mode == "hardlink":
            os.link(source, dest)
        elif mode == "symlink":
            os.symlink(source.resolve(), dest)
        else:
            shutil.move(str(source), str(dest))
    except OSError as e:
        if e.errno == errno.EXDEV:
            raise QwythosError(
                f"cannot hard-link {source} into {dest.parent}: they are on different file systems",
                "use --copy or --symlink",
            ) from e
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise QwythosError(f"cannot write {dest}: {e.strerror}", "choose a writable folder") from e
        raise
    return Placement(source, dest, mode, MODES[mode])
