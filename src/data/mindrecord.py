"""Sharded MindRecord sets that are either complete and current, or absent.

Schema ``ssd_json`` (spec 7.4, with float boxes and 64-bit ids): ``img_id`` int64 [1] (any id
0 .. 2^63-1 a COCO file holds; the reference's int32 wrapped ids >= 2^31), ``image`` bytes (the
encoded file as stored on disk), ``annotation`` float32 [-1, 5] pixel rows
``(ymin, xmin, ymax, xmax, label)``, label negated for ignore regions.

A set is written into a hidden temporary folder, moved next to its final names, and only then
gets its manifest ``<prefix>.manifest.json``, which records what the set was made from (the
input files' fingerprint and the settings) and the size of every file. A set is reused only
when its manifest matches and every file still has its size; anything else is rewritten.
Conversion holds a lock file, so when several processes (the ranks of a distributed job) reach
the same set, one converts and the others wait, then reuse it.

The temporary folder is ``.<prefix>.partial-<pid>``. SIGINT, SIGTERM and SIGHUP during a
conversion stop it after removing that folder (exit status 130, 143 and 129 through
``src.cli.run``); what a process killed outright (SIGKILL, a crash) leaves behind is removed by
the next process that takes the set's lock, for every pid that is no longer running.

A process that reads a set holds it (``SetHold``: a shared ``flock`` on its own hold file
``.<prefix>.inuse-<host>-<pid>.lock``) from the moment it found the set current, taken under
the conversion lock, until it ends or releases the hold. A conversion that would replace a set
another process holds stops with a message instead (``refuse_if_held``); the process's own holds
never stop it (see ``other_holders``).
"""
import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, TextIO

import numpy as np
from tqdm import tqdm

from src.data.records import DatasetError
from src.files import file_mode, write_json
from src.interrupts import Interrupted

SCHEMA = {
    "img_id": {"type": "int64", "shape": [1]},
    "image": {"type": "bytes"},
    "annotation": {"type": "float32", "shape": [-1, 5]},
}
SCHEMA_NAME = "ssd_json"
FORMAT_VERSION = 3     # 3: img_id int64 (2 stored int32): older sets are rebuilt
WRITE_CHUNK = 64


def shard_files(directory, prefix, shards):
    """The shard file paths of a set: ``<prefix>0`` ... ``<prefix><shards-1>``."""
    if shards == 1:
        return [os.path.join(directory, prefix)]
    return [os.path.join(directory, f"{prefix}{i}") for i in range(shards)]


def manifest_path(directory, prefix):
    return os.path.join(directory, f"{prefix}.manifest.json")


def read_manifest(directory, prefix):
    try:
        with open(manifest_path(directory, prefix), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def current_set(directory, prefix, description):
    """The manifest of a complete set made as ``description`` says, or None."""
    manifest = read_manifest(directory, prefix)
    if not manifest or manifest.get("description") != {"format_version": FORMAT_VERSION,
                                                        **description}:
        return None
    for name, size in manifest.get("file_sizes", {}).items():
        path = os.path.join(directory, name)
        if not os.path.isfile(path) or os.path.getsize(path) != size:
            return None
    return manifest


def staging_name(prefix: str, pid: object) -> str:
    """The hidden folder a process writes a set into before moving it into place."""
    return f".{prefix}.partial-{pid}"


def _running(pid: int) -> bool:
    """Whether a process with this pid exists (one of another user counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_staging(directory: str, prefix: str) -> list:
    """Remove the staging folders of a set that processes no longer running left behind
    (killed during a conversion); returns their names. Call it holding the set's lock."""
    start = staging_name(prefix, "")
    swept = []
    for name in sorted(os.listdir(directory)):
        pid = name[len(start):]
        if not name.startswith(start) or not pid.isdigit() or int(pid) <= 0:
            continue
        if int(pid) == os.getpid() or _running(int(pid)):
            continue
        shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
        swept.append(name)
    return swept


@contextlib.contextmanager
def conversion_lock(directory: str, prefix: str):
    """Exclusive lock on a set while it is checked or written (blocks other processes).

    Once it holds the lock it removes what conversions of killed processes left behind
    (``sweep_staging``), and yields the names of those folders."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, f".{prefix}.lock"), "w", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield sweep_staging(directory, prefix)
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


HOLD_SUFFIX = ".lock"


def holder_id(pid: Optional[int] = None) -> str:
    """``<host>-<pid>`` of a process on this host (this one by default), as hold files name
    their holder; the host keeps apart processes of other machines or containers that share
    the folder and happen to have the same pid."""
    host = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"
    return f"{host}-{os.getpid() if pid is None else pid}"


def hold_path(directory: str, prefix: str, holder: str) -> str:
    """The hold file of one holder of a set."""
    return os.path.join(directory, f".{prefix}.inuse-{holder}{HOLD_SUFFIX}")


class SetHold:
    """This process's hold on a set it reads: a shared ``flock`` on its hold file, kept until
    ``release()``, until the object is collected, or until the process ends.

    Every hold of a process uses the same file (``hold_path`` with ``holder_id()``), each on
    its own open file: holds never block each other, and releasing one leaves the others.
    Take it holding the set's conversion lock, the only time hold files are removed."""

    def __init__(self, directory: str, prefix: str):
        self.path = hold_path(directory, prefix, holder_id())
        self._file: Optional[TextIO] = open(self.path, "a+", encoding="utf-8")  # on NFS
        try:                                                  # flock works only like this
            fcntl.flock(self._file, fcntl.LOCK_SH)
        except BaseException:
            self._file.close()
            raise

    @property
    def held(self) -> bool:
        return self._file is not None

    def release(self) -> None:
        """Let go of the set (a second call does nothing)."""
        if self._file is not None:
            self._file.close()                 # closing the file ends its lock
            self._file = None

    def __del__(self):
        self.release()


def other_holders(directory: str, prefix: str) -> list:
    """The processes other than this one that hold the set (their ``holder_id``); removes the
    hold files nobody holds any more (processes that ended). Call it holding the set's lock.

    Hold files are per process because a ``flock`` belongs to an open file, not to a
    process: with one shared file, this process's own holds (an earlier split still
    referenced) would be indistinguishable from another job's, and would stop its own
    replacement of the set. This process's own file is never tested nor removed."""
    start, own = f".{prefix}.inuse-", holder_id()
    holders = []
    for name in sorted(os.listdir(directory)):
        holder = name[len(start):-len(HOLD_SUFFIX)]
        if not (name.startswith(start) and name.endswith(HOLD_SUFFIX)) or holder == own:
            continue
        try:
            descriptor = os.open(os.path.join(directory, name), os.O_RDWR)
        except FileNotFoundError:
            continue
        except OSError:                  # cannot be tested (another user's): taken as held
            holders.append(holder)
            continue
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:                  # BlockingIOError: held; any other: cannot tell
            holders.append(holder)
        else:
            with contextlib.suppress(OSError):
                os.remove(os.path.join(directory, name))
        finally:
            os.close(descriptor)
    return holders


def _describe_holder(holder: str) -> str:
    """``pid <pid> on <host>`` for a ``holder_id``; a name of another form as it is."""
    host, _, pid = holder.rpartition("-")
    return f"pid {pid} on {host}" if host and pid.isdigit() else holder


def refuse_if_held(directory: str, prefix: str, holders: list) -> None:
    """Raise DatasetError if another process holds the set (``holders``, from
    ``other_holders``): a conversion would replace the files a running job reads. Call it
    holding the set's lock, before changing anything. It stops at once rather than waiting:
    the job may read the set until it ends."""
    if not holders:
        return
    processes = ", ".join(_describe_holder(holder) for holder in holders)
    raise DatasetError(
        f"MindRecord set {os.path.join(directory, prefix)}* is in use: a running job reads it "
        f"({processes}), and converting other data or settings would replace it under that job; "
        "nothing was changed. Wait until that job has finished, or convert into another folder "
        "(--mindrecord_url DIR)")


STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")


class _StopSignals:
    """While a set is written: SIGINT, SIGTERM and SIGHUP raise (KeyboardInterrupt, or
    SystemExit with status 128 + the signal's number) in the main thread, so that the writer's
    ``finally`` removes its staging folder; SIGTERM and SIGHUP would otherwise end the process
    without it. After ``cleaning()`` a signal waits until the cleanup is done, and any signal
    after the first is ignored, so that nothing interrupts the removal. Signals that were
    ignored (SIG_IGN) stay ignored; the previous handlers come back on exit.
    """

    def __init__(self, what: str):
        self.what = what
        self.previous: dict = {}
        self.received: Optional[int] = None
        self.deferred = False

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():
            return self          # handlers can only be set there
        for name in STOP_SIGNALS:
            number = getattr(signal, name, None)
            if number is None or signal.getsignal(number) in (signal.SIG_IGN, None):
                continue
            self.previous[number] = signal.signal(number, self._handle)
        return self

    def _handle(self, number, _frame):
        if self.received is not None:
            return
        self.received = number
        if not self.deferred:
            raise self._exception()

    def cleaning(self) -> None:
        """From now on a signal is acted on only once the cleanup is done."""
        self.deferred = True

    def _exception(self) -> BaseException:
        if self.received == signal.SIGINT:
            return Interrupted(signal.SIGINT, reported=True)   # __exit__ prints the line
        return SystemExit(128 + (self.received or 0))

    def __exit__(self, exc_type, exc, _tb):
        for number, handler in self.previous.items():
            signal.signal(number, handler)
        if self.received is None:
            return False
        print(f"\n{signal.Signals(self.received).name} received: the conversion into "
              f"{self.what} stopped; its partial files are removed", file=sys.stderr,
              flush=True)
        if isinstance(exc, (SystemExit, KeyboardInterrupt)):
            return False
        # none yet (the signal came during the cleanup), or another one: code that the
        # signal interrupted may have turned it into its own error (e.g. an extension's import)
        raise self._exception() from exc


def _read_bytes(record):
    try:
        with open(record.path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise DatasetError(f"image {record.path} (id {record.img_id}) cannot be read: "
                           f"{exc}") from exc


def write_set(records, directory, prefix, shards, description, extra_files=None,
              manifest_fields=None, progress=True):
    """Convert records into a new complete set; returns the manifest.

    ``extra_files`` ({name: json-able object}) are written into the set (e.g. its ground truth)
    and covered by the manifest like the shards. A stop signal while it writes removes the
    staging folder before the process stops (see ``_StopSignals``).
    """
    # imported before stop signals raise: one raised inside an extension's import would come
    # out as that import's error
    import mindspore.mindrecord  # noqa: F401

    if not records:
        raise DatasetError(f"nothing to convert into {os.path.join(directory, prefix)}")
    shards = max(1, min(int(shards), len(records)))
    os.makedirs(directory, exist_ok=True)
    staging = os.path.join(directory, staging_name(prefix, os.getpid()))
    with _StopSignals(os.path.join(directory, prefix)) as stop:
        shutil.rmtree(staging, ignore_errors=True)
        try:
            os.makedirs(staging)
            manifest = _write_staged(records, directory, prefix, shards, description, staging,
                                     extra_files, manifest_fields, progress)
        finally:
            stop.cleaning()
            shutil.rmtree(staging, ignore_errors=True)
    return manifest


def _write_staged(records, directory, prefix, shards, description, staging, extra_files,
                  manifest_fields, progress):
    """write_set's work: the shards into ``staging``, then into place, then the manifest."""
    from mindspore.mindrecord import FileWriter

    writer = FileWriter(os.path.join(staging, prefix), shards, overwrite=True)
    writer.add_schema(SCHEMA, SCHEMA_NAME)
    pool = ThreadPoolExecutor(4)
    try:
        with tqdm(total=len(records), desc=f"MindRecord {prefix}", unit="img",
                  disable=not progress, dynamic_ncols=True) as bar:
            for start in range(0, len(records), WRITE_CHUNK):
                chunk = records[start:start + WRITE_CHUNK]
                images = pool.map(_read_bytes, chunk)
                writer.write_raw_data([
                    {"img_id": np.array([r.img_id], np.int64), "image": image,
                     "annotation": r.annotation()} for r, image in zip(chunk, images)],
                    parallel_writer=False)  # True fills some shards and leaves others empty
                bar.update(len(chunk))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)   # on a stop: only the reads under way
    writer.commit()
    for name, content in (extra_files or {}).items():
        with open(os.path.join(staging, name), "w", encoding="utf-8") as f:
            json.dump(content, f)
    remove_set(directory, prefix)
    sizes = {}
    for name in sorted(os.listdir(staging)):
        os.chmod(os.path.join(staging, name), file_mode())  # FileWriter makes them 0600
        sizes[name] = os.path.getsize(os.path.join(staging, name))
        os.replace(os.path.join(staging, name), os.path.join(directory, name))
    manifest = {"description": {"format_version": FORMAT_VERSION, **description},
                "files": [os.path.basename(f) for f in shard_files(directory, prefix, shards)],
                "records": len(records), "file_sizes": sizes, **(manifest_fields or {})}
    write_json(manifest, manifest_path(directory, prefix), indent=1)
    return manifest


def remove_set(directory, prefix):
    """Delete a set's manifest first (so it stops counting as complete), then its files."""
    manifest = manifest_path(directory, prefix)
    if os.path.exists(manifest):
        os.remove(manifest)
    for name in os.listdir(directory):
        stem = name[:-3] if name.endswith(".db") else name
        if stem == prefix or (stem.startswith(prefix) and stem[len(prefix):].isdigit()) or (
                name.startswith(f"{prefix}.") and name.endswith(".json")):
            os.remove(os.path.join(directory, name))


def set_files(directory, manifest):
    return [os.path.join(directory, name) for name in manifest["files"]]
