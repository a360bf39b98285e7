"""The arguments of ``scripts/run_distribute_train.sh``: the reference's positional form with a
rank table, or msrun's flags, each checked before anything is created or started."""
import os
import re
from dataclasses import dataclass
from types import MappingProxyType
from typing import Optional, Sequence

from src.launcher import RefusalError, UsageError

SCRIPT = "scripts/run_distribute_train.sh"
USAGE = (
    f"Usage: bash {SCRIPT} RANK_TABLE_FILE DATASET DATASET_PATH MINDRECORD_PATH "
    "TRAIN_OUTPUT_PATH [PRE_TRAINED_PATH] [-- train.py flags]\n"
    f"   or: bash {SCRIPT} --worker_num N [--local_worker_num M] [--master_addr HOST] "
    "[--master_port PORT] [--node_rank R] [--timeout S] [--comm_timeout S] DATASET DATASET_PATH "
    "MINDRECORD_PATH TRAIN_OUTPUT_PATH [PRE_TRAINED_PATH] [-- train.py flags]")
DATASETS = ("coco", "voc", "yolo", "other")
# Flags (only before the positional arguments) and their defaults.
FLAGS = MappingProxyType({
    "--worker_num": "", "--local_worker_num": "", "--master_addr": "127.0.0.1",
    "--master_port": "8118", "--node_rank": "-1", "--timeout": "600", "--comm_timeout": ""})
NUMBERS = ("--worker_num", "--local_worker_num", "--master_port", "--timeout", "--comm_timeout")


@dataclass(frozen=True)
class Options:
    """What to start: ``rank_table`` set for the rank-table form, ``worker_num`` for msrun."""

    dataset: str
    dataset_path: str
    mindrecord_path: str
    output_path: str
    pre_trained: Optional[str] = None
    extra: tuple[str, ...] = ()
    rank_table: Optional[str] = None
    worker_num: Optional[int] = None
    local_worker_num: Optional[int] = None
    master_addr: str = "127.0.0.1"
    master_port: int = 8118
    node_rank: int = -1
    timeout: int = 600
    comm_timeout: Optional[int] = None

    @property
    def logs(self) -> str:
        """The folder of the workers' logs (and of a rank sub-table)."""
        return os.path.join(self.output_path, "logs")

    def train_arguments(self) -> list[str]:
        """train.py and its flags, the same for every rank."""
        pretrained = ["--pre_trained", self.pre_trained] if self.pre_trained else []
        return ["train.py", "--distribute", "true", "--dataset", self.dataset,
                "--data_url", self.dataset_path, "--mindrecord_url", self.mindrecord_path,
                "--train_url", self.output_path, *pretrained, *self.extra]


def _absolute(path: str, cwd: str) -> str:
    return os.path.realpath(os.path.join(cwd, path))


def _split(argv: Sequence[str]) -> tuple[dict[str, str], list[str], list[str]]:
    """Flags, the positional arguments, and what follows ``--`` (train.py's flags)."""
    flags, rest = dict(FLAGS), list(argv)
    while rest and rest[0] in FLAGS:
        if len(rest) < 2:
            raise UsageError(USAGE)
        flags[rest[0]] = rest[1]
        rest = rest[2:]
    if "--" in rest:
        cut = rest.index("--")
        return flags, rest[:cut], rest[cut + 1:]
    return flags, rest, []


def _number(flags: dict[str, str], name: str) -> Optional[int]:
    value = flags[name]
    if value == "":
        return None
    if not value.isdigit():
        raise RefusalError(f"{name} must be a number, got '{value}'")
    return int(value)


def parse(argv: Sequence[str], cwd: str) -> Options:
    """The checked options; relative paths are taken from ``cwd``. Raises RefusalError (or
    UsageError) with the reason."""
    flags, positional, extra = _split(argv)
    msrun = flags["--worker_num"] != ""
    first = 0 if msrun else 1
    if not first + 4 <= len(positional) <= first + 5:
        raise UsageError(USAGE)
    numbers = {name: _number(flags, name) for name in NUMBERS}
    node_rank = flags["--node_rank"]
    if not re.fullmatch(r"-?[0-9]+", node_rank):
        raise RefusalError(f"--node_rank must be a number, got '{node_rank}'")
    if numbers["--comm_timeout"] is not None and numbers["--comm_timeout"] <= 0:
        raise RefusalError("--comm_timeout must be above 0 seconds")
    dataset = positional[first]
    dataset_path, mindrecord_path, output_path = (
        _absolute(path, cwd) for path in positional[first + 1:first + 4])
    if dataset not in DATASETS:
        raise RefusalError(f"DATASET must be coco, voc or other, got '{dataset}'")
    if not os.path.isdir(dataset_path):
        raise RefusalError(f"DATASET_PATH '{dataset_path}' is not a directory")
    rank_table = None
    if not msrun:
        rank_table = _absolute(positional[0], cwd)
        if not os.path.isfile(rank_table):
            raise RefusalError(f"RANK_TABLE_FILE '{rank_table}' is not a file")
    pre_trained = None
    if len(positional) == first + 5:
        pre_trained = _absolute(positional[first + 4], cwd)
        if not os.path.isfile(pre_trained):
            raise RefusalError(f"PRE_TRAINED_PATH '{pre_trained}' is not a file")
    return Options(
        dataset=dataset, dataset_path=dataset_path, mindrecord_path=mindrecord_path,
        output_path=output_path, pre_trained=pre_trained, extra=tuple(extra),
        rank_table=rank_table, worker_num=numbers["--worker_num"],
        local_worker_num=(numbers["--worker_num"] if numbers["--local_worker_num"] is None
                          else numbers["--local_worker_num"]),
        master_addr=flags["--master_addr"], master_port=numbers["--master_port"] or 0,
        node_rank=int(node_rank), timeout=numbers["--timeout"] or 0,
        comm_timeout=numbers["--comm_timeout"])
