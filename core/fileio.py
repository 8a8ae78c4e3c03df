"""Writing outputs safely: a temporary name beside the final one, renamed only when complete."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from qwythos.core.errors import QwythosError

TMP_SUFFIX = ".partial"


def check_output_path(path: Path, force: bool = False) -> None:
    """Refuse to overwrite an existing output unless forced; make sure the folder is writable."""
    if path.exists() and not force:
        raise QwythosError(f"{path} already exists", "pass --force to overwrite it, or choose another -o")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise QwythosError(f"cannot create folder {parent}: {e.strerror}", "choose a writable -o") from e
    if not os.access(parent, os.W_OK):
        raise QwythosError(f"folder {parent} is not writable", "choose a writable -o")


def check_free_space(folder: Path, needed_bytes: int, what: str = "the output") -> None:
    """Fail before starting when the disk cannot hold what we are about to write."""
    folder = folder if folder.exists() else folder.parent
    free = shutil.disk_usage(folder).free
    if needed_bytes > free:
        raise QwythosError(
            f"not enough disk space in {folder} for {what}: need {needed_bytes / 2**30:.2f} GiB, "
            f"{free / 2**30:.2f} GiB free",
            "free some space or write elsewhere with -o",
        )


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it to `path` only if the block succeeds.

    On any error (including KeyboardInterrupt and a full disk) the temporary file is removed, so
    nothing half-written is ever left under the final name.
    """
    path = Path(path)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno == errno.ENOSPC:
            raise QwythosError(f"disk full while writing {path}", "free some space and run again") from e
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def ensure_writable_dir(folder: Path, what: str = "folder") -> None:
    """Create `folder` if needed; a QwythosError naming it when it cannot be created or written."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise QwythosError(
            f"cannot write into {what} {folder}: {e.strerror or e}", "choose a writable folder"
        ) from e
    if not os.access(folder, os.W_OK | os.X_OK):
        raise QwythosError(f"cannot write into {what} {folder}: not writable", "choose a writable folder")


def write_text_atomic(path: Path, text: str) -> None:
    """Write a small text file under a temporary name, renamed when complete; errors name the file."""
    path = Path(path)
    ensure_writable_dir(path.parent)
    try:
        with atomic_output(path) as tmp:
            tmp.write_bytes(text.encode())
    except OSError as e:
        raise QwythosError(f"cannot write {path}: {e.strerror or e}", "choose a writable output") from e


def sha256_file(path: Path, chunk: int = 1 << 24) -> str:
    """Hex sha256 of a file, read in chunks (no whole-file buffer)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
