"""Which running process is which rank: msrun starts the workers itself, so their process ids
are found in /proc (a command line holding the job's marks, RANK_ID in the environment)."""
import os
from typing import Optional, Sequence

PROC = "/proc"


def _read(path: str) -> Optional[bytes]:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError:   # gone, or not ours to read
        return None


def parent_of(pid: int) -> Optional[int]:
    """The parent process id, from /proc/PID/stat (None when the process is gone)."""
    stat = _read(f"{PROC}/{pid}/stat")
    if stat is None:
        return None
    # The command name in parentheses may hold spaces and ')': the fields follow the last ')'.
    fields = stat[stat.rfind(b")") + 2:].split()
    return int(fields[1]) if len(fields) > 1 else None


def descends_from(pid: int, ancestor: int) -> bool:
    """Whether ``ancestor`` is ``pid``'s parent, grandparent, ..."""
    seen = set()
    while pid > 1 and pid not in seen:
        seen.add(pid)
        parent = parent_of(pid)
        if parent is None:
            return False
        if parent == ancestor:
            return True
        pid = parent
    return False


def rank_of(pid: int, marks: Sequence[str]) -> Optional[str]:
    """The RANK_ID of process ``pid`` if its command line holds every one of ``marks``."""
    command = _read(f"{PROC}/{pid}/cmdline")
    if not command or not all(mark.encode() in command for mark in marks):
        return None
    environ = _read(f"{PROC}/{pid}/environ") or b""
    for entry in environ.split(b"\0"):
        if entry.startswith(b"RANK_ID="):
            return entry[len(b"RANK_ID="):].decode(errors="replace")
    return None


def ranks_by_pid(marks: Sequence[str], ancestor: Optional[int] = None,
                 known: Optional[dict[int, str]] = None) -> dict[int, str]:
    """Process id -> RANK_ID of this user's processes whose command line holds every one of
    ``marks`` (and that descend from ``ancestor``, if given); ``known`` pids are kept as they
    are, not read again."""
    found = dict(known or {})
    for name in os.listdir(PROC):
        if not name.isdigit() or int(name) in found:
            continue
        pid = int(name)
        rank = rank_of(pid, marks)
        if rank is not None and (ancestor is None or descends_from(pid, ancestor)):
            found[pid] = rank
    return found
