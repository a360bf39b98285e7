"""Conversion of ImageRecords to sharded MindRecord files, never leaving a half-written set.

Schema ``ssd_json`` (spec 7.4, with float boxes): ``img_id`` int32 [1], ``image`` bytes (the
encoded file as stored on disk), ``annotation`` float32 [-1, 5] pixel rows
``(ymin, xmin, ymax, xmax, label)``.

A set is written into a hidden temporary folder, moved next to its final names, and only then
gets its manifest ``<prefix>.manifest.json``. The manifest records where the data came from and
the settings used; a set is reused only when its manifest matches and every shard file is
present with the size it had when written.
"""
import json
import os
import shutil

import numpy as np
from tqdm import tqdm

from src.data.records import DatasetError

SCHEMA = {
    "img_id": {"type": "int32", "shape": [1]},
    "image": {"type": "bytes"},
    "annotation": {"type": "float32", "shape": [-1, 5]},
}
SCHEMA_NAME = "ssd_json"
FORMAT_VERSION = 1
WRITE_CHUNK = 64


def shard_files(directory, prefix, shards):
    """The shard file paths of a set: ``<prefix>0`` ... ``<prefix><shards-1>``."""
    if shards == 1:
        return [os.path.join(directory, prefix)]
    return [os.path.join(directory, f"{prefix}{i}") for i in range(shards)]


def manifest_path(directory, prefix):
    return os.path.join(directory, f"{prefix}.manifest.json")


def describe_source(source, shards):
    """What a converted set depends on: the annotation file, the records and the settings."""
    described = {"format_version": FORMAT_VERSION, "shards": shards,
                 "class_names": list(source.class_names), "records": len(source.records),
                 "boxes": int(sum(len(r.labels) for r in source.records))}
    if source.annotation_file:
        status = os.stat(source.annotation_file)
        described["annotation_file"] = os.path.abspath(source.annotation_file)
        described["annotation_size"] = status.st_size
        described["annotation_mtime_ns"] = status.st_mtime_ns
    return described


def existing_set(directory, prefix, described):
    """Shard files of a complete set made from the same source and settings, or None."""
    try:
        with open(manifest_path(directory, prefix), encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
    if manifest.get("source") != described:
        return None
    files = shard_files(directory, prefix, described["shards"])
    for name, size in manifest.get("file_sizes", {}).items():
        path = os.path.join(directory, name)
        if not os.path.isfile(path) or os.path.getsize(path) != size:
            return None
    return files


def _row(record):
    try:
        with open(record.path, "rb") as f:
            image = f.read()
    except OSError as exc:
        raise DatasetError(f"image {record.path} (id {record.img_id}) cannot be read: "
                           f"{exc}") from exc
    return {"img_id": np.array([record.img_id], np.int32), "image": image,
            "annotation": record.annotation()}


def write_set(source, directory, prefix, shards, progress=True):
    """Convert ``source.records`` into a new complete set; returns the shard file paths."""
    from mindspore.mindrecord import FileWriter

    if not source.records:
        raise DatasetError(f"nothing to convert: the source {source.annotation_file or ''} "
                           "has no images")
    shards = max(1, min(int(shards), len(source.records)))
    described = describe_source(source, shards)
    os.makedirs(directory, exist_ok=True)
    staging = os.path.join(directory, f".{prefix}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    try:
        writer = FileWriter(os.path.join(staging, prefix), shards, overwrite=True)
        writer.add_schema(SCHEMA, SCHEMA_NAME)
        records = source.records
        with tqdm(total=len(records), desc=f"MindRecord {prefix}", unit="img",
                  disable=not progress, dynamic_ncols=True) as bar:
            for start in range(0, len(records), WRITE_CHUNK):
                chunk = records[start:start + WRITE_CHUNK]
                writer.write_raw_data([_row(r) for r in chunk])
                bar.update(len(chunk))
        writer.commit()
        remove_set(directory, prefix)
        sizes = {}
        for name in sorted(os.listdir(staging)):
            sizes[name] = os.path.getsize(os.path.join(staging, name))
            os.replace(os.path.join(staging, name), os.path.join(directory, name))
        tmp = manifest_path(directory, prefix) + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"source": described, "file_sizes": sizes}, f, indent=1)
        os.replace(tmp, manifest_path(directory, prefix))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return shard_files(directory, prefix, shards)


def remove_set(directory, prefix):
    """Delete a set's manifest first (so it stops counting as complete), then its shard files."""
    manifest = manifest_path(directory, prefix)
    if os.path.exists(manifest):
        os.remove(manifest)
    for name in os.listdir(directory):
        stem = name[:-3] if name.endswith(".db") else name
        if stem == prefix or (stem.startswith(prefix) and stem[len(prefix):].isdigit()):
            os.remove(os.path.join(directory, name))


def ensure_set(source, directory, prefix, shards, progress=True, log=print):
    """Reuse a complete matching set in ``directory`` or write a new one; returns shard files."""
    shards = max(1, min(int(shards), len(source.records)))
    files = existing_set(directory, prefix, describe_source(source, shards))
    if files:
        log(f"Reusing MindRecord set {os.path.join(directory, prefix)}* "
            f"({len(source.records)} images)")
        return files
    log(f"Writing MindRecord set {os.path.join(directory, prefix)}* ({len(source.records)} "
        f"images, {shards} shards)")
    return write_set(source, directory, prefix, shards, progress)
