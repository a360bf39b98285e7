"""What a training run leaves in its output folder, and starting another run in that folder.

A folder holds a run when it has a step log or a checkpoint. A new run (no ``--resume``) there
would truncate the log, overwrite same-named checkpoints and prune across both runs, so it is
refused with the choices spelled out; ``--overwrite true`` first moves the earlier run's files
into ``previous-<time>/`` inside the folder (the MindRecord sets stay: they are data).

A run holds its folder for its whole life: an exclusive ``flock`` on ``<folder>/.train.lock``,
taken before the folder is looked at and kept until the process ends, so that two runs started
at the same moment into one folder cannot both go on; the second is refused, naming the folder
and the process that holds it (from ``/proc/locks`` on this host, else from what the holder
wrote into the lock file).
"""
import fcntl
import glob
import json
import os
import re
import shutil
import socket
import sys
import time

from src.train.checkpoint import CHECKPOINT_PREFIX
from src.train.run_log import LOG_NAME

CURVE_NAME = "loss_curve.png"
BEST_NAME = "best.ckpt"
EVAL_FOLDER = "eval"   # evaluation during training writes eval.py's files here
CONFIG_NAME = "config.yaml"
TENSORBOARD_NAME = "tensorboard"   # the TensorBoard hook's event files (src.train.hooks)
PREVIOUS_PREFIX = "previous-"
LOCK_NAME = ".train.lock"
_HELD: dict = {}   # real path of a folder -> the open lock file this process holds it by


class RunFolderError(RuntimeError):
    """An output folder that cannot take this run; the message says what to do."""


def run_files(folder: str) -> list:
    """Names in ``folder`` that an earlier training run wrote ([] when it holds none)."""
    if not os.path.isdir(folder):
        return []
    checkpoints = [os.path.basename(p) for p in
                   glob.glob(os.path.join(folder, f"{CHECKPOINT_PREFIX}-*.ckpt"))]
    if not checkpoints and not os.path.exists(os.path.join(folder, BEST_NAME)) and \
            not os.path.exists(os.path.join(folder, LOG_NAME)):
        return []
    names = [LOG_NAME, CURVE_NAME, BEST_NAME, EVAL_FOLDER, CONFIG_NAME, TENSORBOARD_NAME,
             *checkpoints]
    return sorted(name for name in set(names) if os.path.exists(os.path.join(folder, name)))


def _lock_holder(path: str) -> str:
    """Who holds the lock file ``path``: 'pid N on HOST, started ...: COMMAND' from what the
    holder wrote, checked against /proc/locks (the pid holding a flock on this inode here)."""
    try:
        with open(path, encoding="utf-8") as handle:
            written = json.load(handle)
    except (OSError, ValueError):
        written = {}
    holder_pid = None
    try:
        status = os.stat(path)
        inode = f"{os.major(status.st_dev):02x}:{os.minor(status.st_dev):02x}:{status.st_ino}"
        with open("/proc/locks", encoding="ascii") as locks:
            for line in locks:
                fields = line.split()
                if "FLOCK" in fields and fields[-3] == inode:
                    holder_pid = int(fields[-4])
                    break
    except (OSError, ValueError, IndexError):
        pass
    if written and (holder_pid is None or written.get("pid") == holder_pid):
        return (f"pid {written.get('pid')} on {written.get('host')}, started "
                f"{written.get('started')}: {written.get('command')}")
    if holder_pid is not None:
        return f"pid {holder_pid} on this host"
    return "another process"


def lock_run_folder(folder: str):
    """Hold ``folder`` for this process (an exclusive flock on its LOCK_NAME, kept until
    ``release_run_folder`` or the process's end); returns the open lock file, or None when this
    process holds it already. RunFolderError, naming the holder, when another process does."""
    os.makedirs(folder, exist_ok=True)
    key = os.path.realpath(folder)
    if key in _HELD:
        return None
    path = os.path.join(folder, LOCK_NAME)
    handle = open(path, "a+", encoding="utf-8")   # read and write: flock works so on NFS too
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        handle.close()
        raise RunFolderError(
            f"{folder} is in use by a training run that is writing into it now "
            f"({_lock_holder(path)}); nothing was changed. Wait until it ends, or train into "
            "another --output_dir") from exc
    return handle


def _record_holder(handle) -> None:
    """Write who holds the lock into its file (read by ``_lock_holder`` of a refused run)."""
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                             "command": re.sub(r"\s+", " ", " ".join(sys.argv))[:300]}))
    handle.flush()


def hold_run_folder(folder: str) -> None:
    """Hold ``folder`` for the rest of this process (``lock_run_folder``) without claiming it
    for a training: a run that only checks or converts the data and writes config.yaml there
    is refused, naming the holder, while a training writes into the folder."""
    handle = lock_run_folder(folder)
    if handle is not None:
        _record_holder(handle)
        _HELD[os.path.realpath(folder)] = handle


def release_run_folder(folder: str) -> None:
    """Let go of a folder this process holds (its end does the same)."""
    handle = _HELD.pop(os.path.realpath(folder), None)
    if handle is not None:
        handle.close()


def claim_run_folder(folder: str, resume: str, overwrite: bool, move: bool = True) -> str:
    """Make ``folder`` ready for a run: unchanged when it holds none or the run resumes; with
    ``overwrite`` the earlier run's files move into ``previous-<time>/`` (returned, else ''; only
    where ``move``: the main process of a distributed run); otherwise RunFolderError with the
    three choices. The main process (``move``) first takes the folder for the run's whole life
    (``lock_run_folder``): a run started into a folder another run is writing is refused,
    nothing changed."""
    handle = lock_run_folder(folder) if move else None
    try:
        aside = _claim(folder, resume, overwrite, move)
    except BaseException:
        if handle is not None:
            handle.close()
        raise
    if handle is not None:
        _record_holder(handle)
        _HELD[os.path.realpath(folder)] = handle
    return aside


def _claim(folder: str, resume: str, overwrite: bool, move: bool) -> str:
    found = run_files(folder)
    if not found or resume or (overwrite and not move):
        return ""
    if not overwrite:
        raise RunFolderError(
            f"{folder} holds an earlier training run ({', '.join(found[:4])}"
            f"{' ...' if len(found) > 4 else ''}). Continue it with --resume auto, train into "
            "another --output_dir, or pass --overwrite true to move its files into "
            f"{folder}/{PREVIOUS_PREFIX}<time>/ and start afresh")
    aside = os.path.join(folder, PREVIOUS_PREFIX + time.strftime("%Y%m%d-%H%M%S"))
    suffix = 1
    while os.path.exists(aside):
        aside = f"{aside.rsplit('.', 1)[0]}.{suffix}"
        suffix += 1
    os.makedirs(aside)
    for name in found:
        shutil.move(os.path.join(folder, name), os.path.join(aside, name))
    return aside
