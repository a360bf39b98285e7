"""The one way this project writes a result file: complete or not at all, readable as the
umask allows, and named in any error.

``atomic_path(path)`` gives a unique hidden temporary name in the destination's folder; when the
block ends without an error the file gets the mode the umask gives a new file (``file_mode``),
is flushed to disk (fsync), renamed onto ``path`` and the folder entry synced too, so a crash,
a full disk or a second process writing the same file never leaves a truncated file under the
final name. On an error the temporary file is removed and the earlier ``path`` (if any) is left
as it was. ``private=True`` gives the writer a private hidden folder instead (the temporary
name is ``<folder>/<name>``): for writers that make temporary files of their own next to the
file they write (MindSpore's checkpoint and ONNX writers), which go with the folder, and that
change the mode of the folder they write into (MindSpore's ONNX export makes it 0700).

An ``OSError`` while writing becomes ``WriteError``, which names the file, what went wrong (a
full disk, no permission ...) and what to do.
"""
import contextlib
import errno
import json
import os
import shutil
import stat
import tempfile
from typing import Callable, Iterator, Optional

FULL_DISK = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG}
NO_PERMISSION = {errno.EACCES, errno.EPERM, errno.EROFS}
WRITABLE_BITS = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH


class WriteError(OSError):
    """A result file that could not be written; the message names it, the cause and the fix,
    and says that the earlier file (if any) is unchanged."""

    def __init__(self, message: str, cause: Optional[OSError] = None):
        super().__init__(message)
        self.cause = cause
        self.errno = cause.errno if cause is not None else None

    def __str__(self):
        return self.args[0]


def current_umask() -> int:
    """The process's umask (read from /proc where it can be, without changing it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode(read_only: bool = False) -> int:
    """The mode a new file gets under the umask (0644 under umask 022); ``read_only`` without
    any write bit (0444)."""
    mode = 0o666 & ~current_umask()
    return mode & ~WRITABLE_BITS if read_only else mode


def _fsync_path(path: str) -> None:
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if os.path.isdir(path) else os.O_RDONLY
    try:
        descriptor = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass   # some file systems refuse fsync of a folder; the rename is still atomic
    finally:
        os.close(descriptor)


def describe_write_error(path: str, exc: OSError, what: str = "", kept: str = "") -> str:
    """'cannot write [WHAT ]PATH (<cause>): <what to do>; <PATH as it was>'."""
    folder = os.path.dirname(os.path.abspath(path))
    cause = exc.strerror or str(exc)
    if exc.errno in FULL_DISK:
        advice = (f"({cause}: the disk holding {folder} is full): free space there, or write "
                  "to another folder, and run the same command again")
    elif exc.errno in NO_PERMISSION:
        advice = (f"({cause} in {folder}): write to a folder you may write to, and run the "
                  "same command again")
    else:
        advice = f"({cause})"
    kept = kept or (f"the earlier {os.path.basename(path)} is kept as it was"
                    if os.path.lexists(path)
                    else "nothing was written under that name")
    return f"cannot write {what}{path} {advice}; {kept}"


def _settle(tmp: str, read_only_as_written: bool) -> None:
    """The umask's mode on a finished temporary file: a file its writer made read-only (no
    owner write bit: MindSpore's checkpoints and exports) stays read-only, for everyone the
    umask lets read it."""
    written = os.stat(tmp).st_mode
    read_only = read_only_as_written and not written & stat.S_IWUSR
    os.chmod(tmp, file_mode(read_only))


@contextlib.contextmanager
def atomic_path(path: str, private: bool = False) -> Iterator[str]:
    """``with atomic_path(path) as tmp:`` write ``tmp`` (any writer); it becomes ``path`` at the
    end of the block (see the module's docstring)."""
    folder = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(path)
    stem, suffix = os.path.splitext(name)
    holder = tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        if private:
            holder = tempfile.mkdtemp(prefix=f".tmp-{stem}-", dir=folder)
            tmp = os.path.join(holder, name)
        else:
            descriptor, tmp = tempfile.mkstemp(prefix=f".tmp-{stem}-", suffix=suffix,
                                               dir=folder)
            os.close(descriptor)
        yield tmp
        if not os.path.isfile(tmp):
            raise WriteError(f"cannot write {path}: its writer reported no error but wrote "
                             "nothing")
        _settle(tmp, read_only_as_written=private)
        _fsync_path(tmp)
        os.replace(tmp, path)
    except WriteError:
        _remove(holder, tmp)
        raise
    except OSError as exc:
        _remove(holder, tmp)
        raise WriteError(describe_write_error(path, exc), exc) from exc
    except BaseException:
        _remove(holder, tmp)
        raise
    _remove(holder, None)
    _fsync_path(folder)


def _remove(holder, tmp) -> None:
    """Remove the temporary folder (with whatever its writer left in it) or file."""
    if holder:
        shutil.rmtree(holder, ignore_errors=True)
    elif tmp:
        with contextlib.suppress(OSError):
            os.remove(tmp)


def write_atomic(path: str, write: Callable, mode: str = "w") -> str:
    """Open a temporary file in ``mode``, call ``write(file)``, then move it onto ``path``."""
    with atomic_path(path) as tmp:
        encoding = None if "b" in mode else "utf-8"
        with open(tmp, mode, encoding=encoding) as f:
            write(f)
    return path


def write_json(data, path: str, indent=None) -> str:
    """``data`` as JSON, written atomically."""
    return write_atomic(path, lambda f: json.dump(data, f, indent=indent))


def copy_atomic(source: str, path: str) -> str:
    """A copy of ``source`` at ``path``, written atomically (the umask's mode)."""
    with atomic_path(path) as tmp:
        shutil.copyfile(source, tmp)
    return path
