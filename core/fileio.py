"""Writing outputs safely: a unique temporary name beside the final one, renamed only when complete.

- Every write goes to `<name>.<pid>-<random>.partial` in the output's folder, so two processes never
  share a temporary file; a `.partial` left by a killed process is removed by the next writer.
- The final name is locked (`flock` on `.<name>.lock` beside it) for the whole write: a second
  process writing the same output fails at once with a message instead of corrupting it.
- No output may be one of the command's inputs (compared through links and hard links): inputs
  are registered with `register_inputs` and every `atomic_output` / `check_output_path` refuses them.
- OS errors while writing (disk full, quota, file too large, I/O error, read-only) become one
  message naming the file and the fix; the temporary file is removed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import hashlib
import os
import secrets
import shutil
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from qwythos.core.errors import QwythosError

TMP_SUFFIX = ".partial"
LOCK_WAIT_S = 0.0  # outputs: the second writer fails at once

_INPUTS: dict[tuple[int, int], Path] = {}  # (st_dev, st_ino) -> the path the user gave


# ---------------------------------------------------------------- inputs are never outputs


def register_inputs(*paths: str | Path | None) -> None:
    """Record files this process reads: no output of this process may replace them."""
    for p in paths:
        if p is None:
            continue
        p = Path(p)
        try:
            st = p.stat()
        except OSError:
            continue
        if p.is_dir():
            for q in p.iterdir():
                if q.is_file():
                    register_inputs(q)
            continue
        _INPUTS[(st.st_dev, st.st_ino)] = p


def clear_inputs() -> None:
    """Forget the registered inputs (a new command starts)."""
    _INPUTS.clear()


def check_not_input(path: str | Path, inputs: Iterable[str | Path | None] = ()) -> None:
    """Refuse `path` as an output when it is (through links) one of the inputs."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError:
        return  # does not exist (or a dangling link): cannot be an input
    known = dict(_INPUTS)
    for p in inputs:
        if p is None:
            continue
        with contextlib.suppress(OSError):
            s = Path(p).stat()
            known[(s.st_dev, s.st_ino)] = Path(p)
    src = known.get((st.st_dev, st.st_ino))
    if src is not None:
        same = "" if Path(src) == path else f" (the same file as {src})"
        raise QwythosError(
            f"{path} is one of this command's inputs{same}; it will not be overwritten",
            "write the output to another file with -o",
        )


# ---------------------------------------------------------------- checks before the work


def cache_dir(*parts: str) -> Path:
    """qwythos's cache folder (or a folder inside it): QWYTHOS_CACHE, else $XDG_CACHE_HOME/qwythos,
    else ~/.cache/qwythos. An empty variable counts as unset (the XDG rule), so `XDG_CACHE_HOME=""`
    never puts the cache into the current folder. Every cache the code writes lives here; the tests
    point QWYTHOS_CACHE at a temporary folder."""
    own = os.environ.get("QWYTHOS_CACHE")
    if own:
        root = Path(own)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = (Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache") / "qwythos"
    return root.joinpath(*parts)


def check_output_path(path: Path, force: bool = False, inputs: Iterable[str | Path | None] = ()) -> None:
    """Refuse a folder, an input, or (unless forced) an existing file; make sure the folder is writable."""
    path = Path(path)
    if path.is_dir():
        raise QwythosError(
            f"{path} is a folder, not a file", f"pass a file path such as {path / 'model.gguf'}"
        )
    check_not_input(path, inputs)
    if path.exists() and not force:
        raise QwythosError(f"{path} already exists", "pass --force to overwrite it, or choose another -o")
    parent = path.parent if str(path.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise QwythosError(f"{parent} is a file, not a folder", "choose an -o inside a folder")
    if not parent.exists():
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise QwythosError(f"cannot create folder {parent}: {e.strerror}", "choose a writable -o") from e
    if not os.access(parent, os.W_OK | os.X_OK):
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


def write_error(path: Path, e: OSError) -> QwythosError:
    """One message per kind of write failure, naming the file and the fix."""
    folder = Path(path).parent
    code = e.errno
    if code == errno.ENOSPC:
        return QwythosError(f"disk full while writing {path}", f"free some space in {folder} and run again")
    if code == errno.EDQUOT:
        return QwythosError(
            f"disk quota exceeded while writing {path}",
            f"free space within your quota on {folder}, or write elsewhere with -o",
        )
    if code == errno.EFBIG:
        return QwythosError(
            f"{path} is larger than this file system (or the file size limit, ulimit -f) allows",
            "write to a file system that holds large files (not FAT32), or raise ulimit -f",
        )
    if code == errno.EIO:
        return QwythosError(
            f"input/output error while writing {path}: the device reported a failure",
            "check the disk (dmesg, SMART) or the network mount, then run again or write elsewhere",
        )
    if code in (errno.EROFS, errno.EACCES, errno.EPERM):
        return QwythosError(f"cannot write {path}: {e.strerror}", "write the output to a writable folder")
    return QwythosError(f"cannot write {path}: {e.strerror or e}", "check the output folder and run again")


# ---------------------------------------------------------------- the lock on a final name


def lock_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.lock")


@contextlib.contextmanager
def output_lock(path: str | Path, wait: float = LOCK_WAIT_S) -> Iterator[None]:
    """Hold an exclusive lock on the final name `path`; a second holder fails with a message."""
    path = Path(path)
    lp = lock_path(path)
    deadline = time.monotonic() + wait
    while True:
        try:
            fd = os.open(lp, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise write_error(path, e) from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            raise QwythosError(
                f"another process is writing {path} right now",
                "wait for it to finish, or write elsewhere with -o",
            ) from None
        # the holder before us may have removed the lock file after we opened it: lock the live one
        try:
            same = os.fstat(fd).st_ino == os.stat(lp).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lp)
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_partials(path: Path) -> None:
    """Temporary files of `path` left by processes that no longer run (killed, power loss)."""
    for p in path.parent.glob(f"{glob.escape(path.name)}.*{TMP_SUFFIX}"):
        stem = p.name[len(path.name) + 1 : -len(TMP_SUFFIX)]
        pid = stem.split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            with contextlib.suppress(OSError):
                p.unlink()


def temp_name(path: Path) -> Path:
    """A temporary name beside `path` that no other process uses."""
    return path.with_name(f"{path.name}.{os.getpid()}-{secrets.token_hex(4)}{TMP_SUFFIX}")


@contextlib.contextmanager
def atomic_output(
    path: str | Path, inputs: Iterable[str | Path | None] = (), lock_wait: float = LOCK_WAIT_S
) -> Iterator[Path]:
    """Yield a unique temporary path next to `path`; rename it to `path` only if the block succeeds.

    The final name is locked for the whole block (a second writer gets a QwythosError). On any error
    (including KeyboardInterrupt and a full disk) the temporary file is removed, so nothing
    half-written is ever left under the final name. `path` may not be a folder or an input.
    """
    path = Path(path)
    if path.is_dir():
        raise QwythosError(f"{path} is a folder, not a file", "pass a file path as the output")
    check_not_input(path, inputs)
    with output_lock(path, wait=lock_wait):
        _remove_stale_partials(path)
        tmp = temp_name(path)
        try:
            yield tmp
            check_not_input(path, inputs)  # a link may have been made meanwhile
            os.replace(tmp, path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            if e.filename and str(e.filename) not in (str(tmp), str(path)):
                raise QwythosError(
                    f"cannot read {e.filename}: {e.strerror or e}", "check that file (disk, permissions)"
                ) from e
            if (
                isinstance(e, (FileNotFoundError, IsADirectoryError, NotADirectoryError))
                and not tmp.parent.is_dir()
            ):
                raise QwythosError(f"the folder of {path} disappeared while writing", "run again") from e
            raise write_error(path, e) from e
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def ensure_writable_dir(folder: Path, what: str = "folder") -> None:
    """Create `folder` if needed; a QwythosError naming it when it cannot be created or written."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise QwythosError(f"{what} {folder} is a file, not a folder", "pass a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise QwythosError(
            f"cannot write into {what} {folder}: {e.strerror or e}", "choose a writable folder"
        ) from e
    if not os.access(folder, os.W_OK | os.X_OK):
        raise QwythosError(f"cannot write into {what} {folder}: not writable", "choose a writable folder")


def write_text_atomic(
    path: Path, text: str, inputs: Iterable[str | Path | None] = (), lock_wait: float = LOCK_WAIT_S
) -> None:
    """Write a small text file under a temporary name, renamed when complete; errors name the file."""
    path = Path(path)
    ensure_writable_dir(path.parent)
    with atomic_output(path, inputs, lock_wait=lock_wait) as tmp:
        with open(tmp, "wb") as f:
            f.write(text.encode())
            f.flush()
            os.fsync(f.fileno())


def write_export_text(path: Path, text: str, force: bool, *, mode: int | None = None) -> bool:
    """An export's small text file: left alone when it already holds exactly `text` (True: unchanged),
    refused when it holds something else unless `force`, else written atomically (mode: chmod)."""
    path = Path(path)
    if path.is_file() and path.read_bytes() == text.encode():
        return True
    if path.exists() and not force:
        raise QwythosError(
            f"{path} already exists with other content", "pass --force to replace it, or -o elsewhere"
        )
    ensure_writable_dir(path.parent, "folder")
    with atomic_output(path) as tmp:
        tmp.write_bytes(text.encode())
        if mode is not None:
            os.chmod(tmp, mode)
    return False


def sha256_file(path: Path, chunk: int = 1 << 24) -> str:
    """Hex sha256 of a file, read in chunks (no whole-file buffer)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------- text inputs


def read_text_input(path: str | Path, flag: str) -> str:
    """A UTF-8 text file given with `flag`; a message (not a traceback) when it is missing or not UTF-8."""
    path = Path(path)
    if path.is_dir():
        raise QwythosError(f"{flag} {path} is a folder, not a text file", f"pass a text file with {flag}")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise QwythosError(f"{flag} {path} not found", f"pass a text file with {flag}") from None
    except OSError as e:
        raise QwythosError(f"cannot read {path}: {e.strerror or e}", "check the file's permissions") from e
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise QwythosError(
            f"{path} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})",
            f"convert it to UTF-8 (e.g. iconv -f latin1 -t utf-8 {path.name} > fixed.txt) and pass that with {flag}",
        ) from None


def check_utf8_arg(value: str | None, flag: str) -> None:
    """A command-line text (Python keeps undecodable argv bytes as lone surrogates) must be UTF-8."""
    if value is None:
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise QwythosError(
            f"{flag} holds bytes that are not UTF-8 (at character {e.start})",
            "set a UTF-8 locale/terminal (e.g. LANG=C.UTF-8) or re-type the text",
        ) from None


def os_error(e: OSError) -> QwythosError:
    """The last resort for an OSError no library code turned into a message (no traceback)."""
    name = e.filename if e.filename is not None else "a file"
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS):
        if e.filename is None:
            return QwythosError(
                f"a write failed: {e.strerror}",
                "check the free space, the quota and the disk of the output folder, then run again",
            )
        return write_error(Path(str(name)), e)
    return QwythosError(
        f"{name}: {e.strerror or e}", "check the path, its permissions and the disk, then run again"
    )
