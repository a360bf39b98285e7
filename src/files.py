"""The one way this project writes a result file: complete or not at all.

``atomic_path(path)`` gives a unique hidden temporary name in the destination's folder; when the
block ends without an error the file is flushed to disk (fsync), renamed onto ``path`` and the
folder entry synced too, so a crash, a full disk or a second process writing the same file never
leaves a truncated file under the final name. On an error the temporary file is removed and the
earlier ``path`` (if any) is left as it was.
"""
import contextlib
import json
import os
import tempfile
from typing import Callable, Iterator


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


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """``with atomic_path(path) as tmp:`` write ``tmp`` (any writer); it becomes ``path`` at the
    end of the block (see the module's docstring)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    name = os.path.basename(path)
    stem, suffix = os.path.splitext(name)
    descriptor, tmp = tempfile.mkstemp(prefix=f".tmp-{stem}-", suffix=suffix, dir=folder)
    os.close(descriptor)
    try:
        yield tmp
        _fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    _fsync_path(folder)


def write_atomic(path: str, write: Callable, mode: str = "w") -> str:
    """Open a temporary file in ``mode``, call ``write(file)``, then move it onto ``path``."""
    with atomic_path(path) as tmp:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            write(f)
    return path


def write_json(data, path: str, indent=None) -> str:
    """``data`` as JSON, written atomically."""
    return write_atomic(path, lambda f: json.dump(data, f, indent=indent))
