"""An Ascend rank table (HCCL's json) and the processes it means on this host.

A table lists servers (``server_id``: a host name or address) and their devices (``device_id``,
``device_ip``, ``rank_id``). This host starts one process per device of the servers that name
it. ``DEVICE_NUM`` below that count takes the first DEVICE_NUM of them; HCCL would wait for
every rank the table lists, so those processes get a sub-table of exactly the devices taken,
ranks renumbered 0..n-1. Only a table whose servers are all this host can be reduced so: the
other servers of a larger table would still wait for the whole table's ranks.
"""
import copy
import json
import os
import socket
import subprocess
from dataclasses import dataclass
from typing import Any, Optional

from src.cpu import LOCAL_PROCESSES_VARIABLE
from src.files import write_json
from src.launcher import RefusalError

FORMAT = ("a rank table is json with server_list: [{server_id, device: [{device_id, device_ip, "
          "rank_id}, ...]}, ...] (HCCL's format)")


@dataclass(frozen=True)
class Device:
    """One device of the table, where it is (``server`` and ``index``: its place in server_list
    and in that server's device list)."""

    server: int
    index: int
    server_id: str
    device_id: str
    rank: int


@dataclass(frozen=True)
class RankTable:
    """A parsed table: its file, its json, and its devices in table order."""

    path: str
    data: dict
    devices: tuple[Device, ...]

    @property
    def server_ids(self) -> list[str]:
        """The servers' ids in table order."""
        return [str(server["server_id"]) for server in self.data["server_list"]]


@dataclass(frozen=True)
class Worker:
    """A process to start here: its rank in the job and the device it drives."""

    rank: int
    device_id: str


@dataclass(frozen=True)
class Plan:
    """This host's processes: the job's size and the table they read (``sub_table``: the json
    to write at ``table_file`` first, when DEVICE_NUM reduced the table)."""

    workers: tuple[Worker, ...]
    rank_size: int
    table_file: str
    sub_table: Optional[dict] = None

    def environment(self, worker: Worker) -> dict[str, str]:
        """The variables that tell a process its place in the job (and how many processes
        share this host's cores). MindSpore reads the table from MINDSPORE_HCCL_CONFIG_PATH
        before RANK_TABLE_FILE: both name the one in use."""
        return {"RANK_TABLE_FILE": self.table_file, "MINDSPORE_HCCL_CONFIG_PATH": self.table_file,
                "RANK_SIZE": str(self.rank_size), "RANK_ID": str(worker.rank),
                "DEVICE_ID": worker.device_id,
                LOCAL_PROCESSES_VARIABLE: str(len(self.workers))}


def _problem(path: str, what: str) -> RefusalError:
    return RefusalError(f"RANK_TABLE_FILE {path} {what}; {FORMAT}")


def _whole_number(value: Any) -> Optional[int]:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def load(path: str) -> RankTable:
    """Read and check a rank table; a RefusalError names the file, the entry at fault and the
    format."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except OSError as exc:
        raise RefusalError(f"RANK_TABLE_FILE {path} cannot be read: {exc.strerror}") from exc
    except ValueError as exc:
        raise _problem(path, f"is not valid json ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("server_list"), list):
        raise _problem(path, "has no 'server_list' list")
    devices: list = []
    seen: dict = {}
    for i, server in enumerate(data["server_list"]):
        where = f"server_list[{i}]"
        if not isinstance(server, dict) or "server_id" not in server:
            raise _problem(path, f"has no 'server_id' in {where}")
        if not isinstance(server.get("device"), list):
            raise _problem(path, f"has no 'device' list in {where} ({server['server_id']})")
        device_ids = set()
        for j, device in enumerate(server["device"]):
            here = f"{where}.device[{j}]"
            for key in ("device_id", "rank_id"):
                if not isinstance(device, dict) or key not in device:
                    raise _problem(path, f"has no '{key}' in {here}")
            rank = _whole_number(device["rank_id"])
            if rank is None:
                raise _problem(path, f"has rank_id {device['rank_id']!r} in {here}, not a "
                                     "whole number")
            if rank in seen:
                raise _problem(path, f"has rank_id {rank} twice, in {seen[rank]} and {here}: "
                                     "each device needs its own rank_id")
            device_id = str(device["device_id"])
            if device_id in device_ids:
                raise _problem(path, f"has device_id {device_id} twice in {where}")
            seen[rank] = here
            device_ids.add(device_id)
            devices.append(Device(i, j, str(server["server_id"]), device_id, rank))
    if not devices:
        raise _problem(path, "lists no device")
    if sorted(seen) != list(range(len(seen))):
        raise _problem(path, f"has rank_ids {sorted(seen)}: HCCL needs 0 .. {len(seen) - 1}, "
                             "each once")
    return RankTable(path, data, tuple(devices))


def host_names() -> set[str]:
    """This host's names and addresses, as a table's server_id may give them."""
    names = {socket.gethostname(), socket.getfqdn(), "localhost", "127.0.0.1"}
    for name in list(names):
        try:
            names.update(str(info[4][0]) for info in socket.getaddrinfo(name, None))
        except OSError:
            pass
    try:
        names.update(subprocess.run(["hostname", "-I"], capture_output=True, text=True,
                                    timeout=10).stdout.split())
    except (OSError, subprocess.SubprocessError):
        pass
    return names


def new_ranks(taken: list[Device]) -> dict[Device, int]:
    """Ranks 0..n-1 for the ``taken`` devices, in the order of their ranks in the table."""
    return {device: rank for rank, device in
            enumerate(sorted(taken, key=lambda device: device.rank))}


def sub_table(table: RankTable, taken: list[Device]) -> dict:
    """The table of the ``taken`` devices only: other servers and devices left out, ranks
    renumbered 0..n-1 in their old order, every other field kept."""
    renumbered = {(device.server, device.index): rank
                  for device, rank in new_ranks(taken).items()}
    data = copy.deepcopy(table.data)
    servers = []
    for i, server in enumerate(data["server_list"]):
        kept = []
        for j, entry in enumerate(server["device"]):
            if (i, j) in renumbered:
                rank = renumbered[i, j]
                entry["rank_id"] = str(rank) if isinstance(entry["rank_id"], str) else rank
                kept.append(entry)
        if kept:
            servers.append({**server, "device": kept})
    data["server_list"] = servers
    if "server_count" in data:
        count = len(servers)
        data["server_count"] = str(count) if isinstance(data["server_count"], str) else count
    return data


def plan(table: RankTable, host: set[str], device_num: str, logs: str) -> Plan:
    """The processes to start here for ``table`` and DEVICE_NUM (``""``: all of this host's
    devices); a sub-table goes to ``logs``/rank_table_<n>.json. Refusals say why nothing can
    start."""
    path = table.path
    local = [device for device in table.devices if device.server_id in host]
    if not local:
        raise RefusalError(
            f"{path} lists no device of this host: its servers are "
            f"{', '.join(table.server_ids) or '(none)'}, this host is "
            f"{', '.join(sorted(host))}. Run this on a server the table lists, or fix its "
            "server_id (nothing was started)")
    if device_num and (not device_num.isdigit() or not 1 <= int(device_num) <= len(local)):
        raise RefusalError(
            f"DEVICE_NUM={device_num}: this host has {len(local)} device(s) in {path}; set "
            f"DEVICE_NUM to 1 .. {len(local)}, or unset it to use all of them (nothing was "
            "started)")
    count = int(device_num) if device_num else len(local)
    if count == len(local):
        workers = tuple(Worker(device.rank, device.device_id) for device in local)
        return Plan(workers, len(table.devices), path)
    others = sorted({device.server_id for device in table.devices} - host)
    if others:
        raise RefusalError(
            f"DEVICE_NUM={device_num}: {path} also lists the servers {', '.join(others)}, "
            f"which would still wait for all {len(table.devices)} ranks of the table while "
            f"this host started {count} of its {len(local)}. Unset DEVICE_NUM (or set it to "
            f"{len(local)}), or give a rank table of exactly the devices to use on every "
            "server (nothing was started)")
    taken = local[:count]
    data = sub_table(table, taken)
    ranks = new_ranks(taken)
    workers = tuple(Worker(ranks[device], device.device_id) for device in taken)
    table_file = os.path.join(logs, f"rank_table_{count}.json")
    return Plan(workers, count, table_file, data)


def write_sub_table(launch: Plan) -> None:
    """Write the plan's sub-table (if any) where its processes will read it, atomically."""
    if launch.sub_table is not None:
        write_json(launch.sub_table, launch.table_file, indent=2)
