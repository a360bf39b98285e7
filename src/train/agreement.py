"""What the ranks of a distributed run must agree on before the first step, and how long a
collective waits for a rank that does not come.

Each rank computes its own steps per epoch (from its data), its own start position (from the
checkpoint it finds) and its own weights. When these differ the ranks either hang in the
gradient all-reduce (a rank with fewer steps leaves the epoch early) or train silently from
different states (rank 0 resumed, the others started from initial weights: output folders on
each machine's own disk, where only rank 0's holds checkpoints). ``check_ranks_agree`` gathers
every rank's values once, after the position is restored and before the first step, and every
rank raises the same ``RankDisagreementError`` naming the ranks that differ, what differs and
what to do, so that all of them stop together.

MindSpore's CPU collectives give up on a peer after ``MS_CPU_COMM_OP_TIMEOUT`` seconds (30 when
unset; a negative value waits forever). ``set_collective_timeout`` gives distributed runs a
default of ``DEFAULT_COLLECTIVE_TIMEOUT`` instead, as rank 0 legitimately spends longer than
30 s away from the collectives (evaluations, converting its data); ``collective_failures_named``
turns the failure MindSpore then raises into a message naming the rank and the variable.

Nothing here imports MindSpore at module level (``src.device`` uses it before MindSpore loads).
"""
import contextlib
import hashlib
import json
import re
from typing import Callable, Iterator, MutableMapping, Optional, Sequence

import numpy as np

COLLECTIVE_TIMEOUT_VARIABLE = "MS_CPU_COMM_OP_TIMEOUT"
DEFAULT_COLLECTIVE_TIMEOUT = 1800   # seconds
MINDSPORE_DEFAULT_TIMEOUT = 30      # seconds, what MindSpore 2.10 waits when the variable is unset

# A compared value is an integer 0 .. 2**64 - 1, sent as four float32 holding 16 bits each:
# exact in float32 whatever the collective (CPU collectives move float32 well).
CHUNK_BITS = 16
CHUNKS = 4

# What the ranks compare, in this order: (key, how a message names it).
COMPARED = (
    ("steps_per_epoch", "steps per epoch"),
    ("global_step", "global step to start from"),
    ("resumed", "resumed from a checkpoint"),
    ("images", "training images"),
    ("data", "training data digest"),
    ("weights", "weights digest"),
)
DATA_KEYS = ("steps_per_epoch", "images", "data")
POSITION_KEYS = ("global_step", "resumed")
DIGEST_KEYS = ("data", "weights")
COLLECTIVE_OPS = ("AllReduce", "AllGather", "ReduceScatter", "Broadcast")


class RankDisagreementError(RuntimeError):
    """The ranks of a distributed run do not start from the same data, position or weights."""


class CollectiveError(RuntimeError):
    """A collective operation failed: another rank did not take part in time, or is gone."""


def collective_timeout(environ: MutableMapping[str, str]) -> int:
    """The CPU collectives' timeout in seconds that ``environ`` sets (MindSpore's 30 when it
    sets none; negative: no limit). A value MindSpore cannot use is refused here, as its own
    parser would stop the process with a C++ exception."""
    text = environ.get(COLLECTIVE_TIMEOUT_VARIABLE)
    if text is None:
        return MINDSPORE_DEFAULT_TIMEOUT
    try:
        seconds = int(text.strip())
    except ValueError:
        seconds = 0
    if seconds == 0:
        raise ValueError(f"{COLLECTIVE_TIMEOUT_VARIABLE}={text!r}: expected the seconds a "
                         "collective operation waits for the other ranks, a whole number "
                         "above 0 (negative: no limit); unset it for the default "
                         f"{DEFAULT_COLLECTIVE_TIMEOUT}")
    return seconds


def set_collective_timeout(environ: MutableMapping[str, str]) -> int:
    """Give ``environ`` the default timeout unless it sets one (checked); returns the value in
    effect. Call it before MindSpore's ``init()``: the collectives read it once."""
    environ.setdefault(COLLECTIVE_TIMEOUT_VARIABLE, str(DEFAULT_COLLECTIVE_TIMEOUT))
    return collective_timeout(environ)


def digest_int(digest: bytes) -> int:
    """The first 8 bytes of a digest as an integer (what the ranks compare)."""
    return int.from_bytes(digest[:8], "big")


def weights_digest(cell) -> int:
    """sha256 of every parameter of ``cell`` (the train step: weights, BatchNorm statistics,
    optimizer moments, global step, loss scale), by name; ranks that start from the same
    initial weights or the same checkpoint have the same bits."""
    digest = hashlib.sha256()
    for name, param in sorted(cell.parameters_and_names(), key=lambda item: item[0]):
        value = np.ascontiguousarray(param.asnumpy())
        digest.update(f"{name}\0{value.dtype.str}\0{value.shape}\0".encode())
        digest.update(value.tobytes())
    return digest_int(digest.digest())


def data_digest(prepared) -> int:
    """sha256 of what a training set holds, without paths or times (which differ between
    machines holding the same data): its image count, shard count, classes and check summary,
    and every source record's id, file name, size and boxes. The pixels are not read."""
    digest = hashlib.sha256()
    summary = {"images": prepared.images, "shards": len(prepared.files),
               "classes": list(prepared.source.class_names), "check": prepared.check}
    digest.update(json.dumps(summary, sort_keys=True, default=str).encode())
    for record in prepared.source.records:
        digest.update(f"{record.img_id}\0{record.file_name}\0{record.height}x{record.width}\0"
                      .encode())
        digest.update(np.ascontiguousarray(record.annotation()).tobytes())
    return digest_int(digest.digest())


def encode(values: Sequence[int]) -> np.ndarray:
    """Integers 0 .. 2**64 - 1 as float32 chunks of 16 bits (exact)."""
    chunks = []
    for value in values:
        value = int(value)
        if not 0 <= value < 1 << (CHUNK_BITS * CHUNKS):
            raise ValueError(f"{value} cannot be compared between ranks (0 .. 2**64 - 1)")
        chunks += [(value >> (CHUNK_BITS * i)) & ((1 << CHUNK_BITS) - 1) for i in range(CHUNKS)]
    return np.array(chunks, np.float32)


def decode(row: np.ndarray) -> list:
    """``encode``'s integers back."""
    chunks = [int(v) for v in np.asarray(row).ravel()]
    return [sum(chunks[start + i] << (CHUNK_BITS * i) for i in range(CHUNKS))
            for start in range(0, len(chunks), CHUNKS)]


def all_gather(row: np.ndarray) -> np.ndarray:
    """Every rank's ``row`` (float32), one line per rank in rank order."""
    from mindspore import Tensor, ops

    gathered = ops.AllGather()(Tensor(row.reshape(1, -1).astype(np.float32)))
    return gathered.asnumpy().reshape(-1, row.size)


def _shown(key: str, value: int) -> str:
    if key == "resumed":
        return "yes" if value else "no"
    if key in DIGEST_KEYS:
        return f"{value:016x}"
    return str(value)


def _ranks(ranks: Sequence[int]) -> str:
    return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(str(r) for r in ranks)


def disagreement(table: Sequence[dict]) -> Optional[str]:
    """What differs between the ranks (``table[r]``: rank r's values by key) and what to do,
    or None when they agree. The ranks that share the most common values are the reference
    (the lowest rank's on a tie); every other group of ranks is named with its values."""
    keys = [key for key, _ in COMPARED if key in table[0]]
    groups: dict = {}
    for rank, values in enumerate(table):
        groups.setdefault(tuple(values[key] for key in keys), []).append(rank)
    if len(groups) == 1:
        return None
    reference = max(groups, key=lambda values: (len(groups[values]), -groups[values][0]))
    names, base = dict(COMPARED), _ranks(groups[reference])
    lines: list = []
    differing: set = set()
    for values, ranks in groups.items():
        if values == reference:
            continue
        differ = [i for i, key in enumerate(keys) if values[i] != reference[i]]
        differing.update(keys[i] for i in differ)
        lines.append(f"{_ranks(ranks)} {'differs' if len(ranks) == 1 else 'differ'} from "
                     f"{base}: " + ", ".join(
                         f"{names[keys[i]]} {_shown(keys[i], values[i])} ({base}: "
                         f"{_shown(keys[i], reference[i])})" for i in differ))
    hints = []
    if differing & set(DATA_KEYS):
        hints.append("The training data differ: every rank reads its shard of one shuffled order "
                     "of the same set, so every machine needs the same images and annotations "
                     "(DATASET_PATH; MINDRECORD_PATH is converted from them on each machine "
                     "that has its own) and the same --batch_size; fix the data on the machine "
                     "of the rank(s) named, or use one folder that all machines share")
    if differing & set(POSITION_KEYS):
        resumed = [r for r, values in enumerate(table) if values.get("resumed")]
        if resumed and len(resumed) < len(table):
            fresh = [r for r in range(len(table)) if r not in resumed]
            hints.append(f"R{_ranks(resumed)[1:]} resumed from a checkpoint that {_ranks(fresh)} "
                         "did not find: --resume auto looks in each rank's own "
                         "TRAIN_OUTPUT_PATH and only rank 0 writes checkpoints, so with a "
                         "folder on each machine's own disk only rank 0's holds them. Copy the "
                         "checkpoint into TRAIN_OUTPUT_PATH on every machine (or use a folder "
                         "all of them share) and resume again")
        elif resumed:
            hints.append("The ranks resumed from different checkpoints: put the same (latest) "
                         "checkpoint into TRAIN_OUTPUT_PATH on every machine and resume again")
        else:
            hints.append("The ranks start at different steps: give every machine the same "
                         "--pre_trained_epoch_size")
    elif "weights" in differing:
        hints.append("The ranks start from different weights: give every machine the same "
                     "--pre_trained file (and the same code and --seed)")
    return ("the ranks of this job disagree before the first step, so none of them trains: "
            + "; ".join(lines) + ". " + ". ".join(hints) + ".")


def check_ranks_agree(values: dict, rank: int, world: int,
                      gather: Callable[[np.ndarray], np.ndarray] = all_gather) -> None:
    """Compare ``values`` (the keys of ``COMPARED``, integers) with every other rank's; raises
    the same ``RankDisagreementError`` on every rank when they differ. One collective for all ranks
    (``gather``: each rank's float32 row to one line per rank), so no rank runs ahead."""
    if world <= 1:
        return
    keys = [key for key, _ in COMPARED]
    missing = [key for key in keys if key not in values]
    if missing:
        raise ValueError(f"check_ranks_agree needs {', '.join(missing)}")
    gathered = np.asarray(gather(encode([values[key] for key in keys])))
    if gathered.shape[0] != world:
        raise CollectiveError(f"rank {rank}: gathered {gathered.shape[0]} ranks' values, "
                                f"expected {world}")
    table = [dict(zip(keys, decode(row))) for row in gathered]
    problem = disagreement(table)
    if problem:
        raise RankDisagreementError(problem)


def failed_collective(message: str) -> Optional[str]:
    """The collective operation a MindSpore kernel error names (AllReduce ...), or None."""
    if "Launch kernel failed" not in message:
        return None
    found = re.search("|".join(COLLECTIVE_OPS), message)
    return found.group(0) if found else None


@contextlib.contextmanager
def collective_failures_named(rank: int, world: int, platform: str,
                              environ: MutableMapping[str, str]) -> Iterator[None]:
    """Within it, MindSpore's kernel error of a collective that failed (a rank that did not
    join in time, or is gone) becomes a ``CollectiveError`` naming this rank, the timeout in
    effect and what to do."""
    try:
        yield
    except RuntimeError as exc:
        operation = failed_collective(str(exc)) if world > 1 else None
        if operation is None:
            raise
        if platform == "CPU":
            seconds = collective_timeout(environ)
            limit = (f"{COLLECTIVE_TIMEOUT_VARIABLE}={seconds} s" if seconds > 0
                     else f"{COLLECTIVE_TIMEOUT_VARIABLE} (no limit)")
            larger = (f"set {COLLECTIVE_TIMEOUT_VARIABLE} higher (--comm_timeout of "
                      "scripts/run_distribute_train.sh)")
        else:
            limit, larger = "the device's collective timeout", "raise that timeout"
        raise CollectiveError(
            f"rank {rank}: the collective {operation} failed: another rank did not take part "
            f"within {limit}, or is gone. Look for the first error in the other ranks' logs; "
            f"if a rank was only slow (an evaluation on rank 0, a machine converting its own "
            f"data), {larger}") from None
