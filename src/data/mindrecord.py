"""Sharded MindRecord sets that are either complete and current, or absent.

Schema ``ssd_json`` (spec 7.4, with float boxes): ``img_id`` int32 [1], ``image`` bytes (the
encoded file as stored on disk), ``annotation`` float32 [-1, 5] pixel rows
``(ymin, xmin, ymax, xmax, label)``, label negated for ignore regions.

A set is written into a hidden temporary folder, moved next to its final names, and only then
gets its manifest ``<prefix>.manifest.json``, which records what the set was made from (the
input files' fingerprint and the settings) and the size of every file. A set is reused only
when its manifest matches and every file still has its size; anything else is rewritten.
Conversion holds a lock file, so when several processes (the ranks of a distributed job) reach
the same set, one converts and the others wait, then reuse it.
"""
import contextlib
import fcntl
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from tqdm import tqdm

from src.data.records import DatasetError
from src.files import write_json

SCHEMA = {
    "img_id": {"type": "int32", "shape": [1]},
    "image": {"type": "bytes"},
    "annotation": {"type": "float32", "shape": [-1, 5]},
}
SCHEMA_NAME = "ssd_json"
FORMAT_VERSION = 2
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


@contextlib.contextmanager
def conversion_lock(directory, prefix):
    """Exclusive lock on a set while it is checked or written (blocks other processes)."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, f".{prefix}.lock"), "w", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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
    and covered by the manifest like the shards.
    """
    from mindspore.mindrecord import FileWriter

    if not records:
        raise DatasetError(f"nothing to convert into {os.path.join(directory, prefix)}")
    shards = max(1, min(int(shards), len(records)))
    os.makedirs(directory, exist_ok=True)
    staging = os.path.join(directory, f".{prefix}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    try:
        writer = FileWriter(os.path.join(staging, prefix), shards, overwrite=True)
        writer.add_schema(SCHEMA, SCHEMA_NAME)
        with ThreadPoolExecutor(4) as pool, tqdm(total=len(records), desc=f"MindRecord {prefix}",
                                                 unit="img", disable=not progress,
                                                 dynamic_ncols=True) as bar:
            for start in range(0, len(records), WRITE_CHUNK):
                chunk = records[start:start + WRITE_CHUNK]
                images = pool.map(_read_bytes, chunk)
                writer.write_raw_data([
                    {"img_id": np.array([r.img_id], np.int32), "image": image,
                     "annotation": r.annotation()} for r, image in zip(chunk, images)],
                    parallel_writer=False)  # True fills some shards and leaves others empty
                bar.update(len(chunk))
        writer.commit()
        for name, content in (extra_files or {}).items():
            with open(os.path.join(staging, name), "w", encoding="utf-8") as f:
                json.dump(content, f)
        remove_set(directory, prefix)
        sizes = {}
        for name in sorted(os.listdir(staging)):
            sizes[name] = os.path.getsize(os.path.join(staging, name))
            os.replace(os.path.join(staging, name), os.path.join(directory, name))
        manifest = {"description": {"format_version": FORMAT_VERSION, **description},
                    "files": [os.path.basename(f) for f in shard_files(directory, prefix,
                                                                        shards)],
                    "records": len(records), "file_sizes": sizes, **(manifest_fields or {})}
        write_json(manifest, manifest_path(directory, prefix), indent=1)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
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
