"""The distributed launcher (src/launcher) without MindSpore: rank tables and their sub-tables,
refusals before anything starts, the supervisors with a stand-in program in place of train.py,
the /proc scan, and run_distribute_train.sh end to end with a stand-in python."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from src.launcher import RefusalError, UsageError
from src.launcher.__main__ import job_environment, main
from src.launcher.options import parse
from src.launcher.processes import ranks_by_pid
from src.launcher.rank_table import host_names, load, plan, write_sub_table
from src.launcher.supervise import failing_rank, supervise_msrun, supervise_ranks
from tests.conftest import ROOT

# Records its environment and the rank table it was given to STANDIN_RECORDS/rank_<RANK_ID>.json,
# then exits 1 if it is rank STANDIN_FAIL (once rank 0 has started), else sleeps STANDIN_SLEEP s.
# Started with `-m` (the launcher itself, through PYTHON), it hands over to the real python.
STANDIN = """#!__PYTHON__
import json, os, sys, time
if sys.argv[1:2] == ["-m"]:
    os.execv("__PYTHON__", ["__PYTHON__", *sys.argv[1:]])
rank = os.environ.get("RANK_ID", "none")
records = os.environ["STANDIN_RECORDS"]
table = os.environ.get("RANK_TABLE_FILE", "")
record = {name: os.environ.get(name) for name in ("RANK_ID", "RANK_SIZE", "DEVICE_ID",
                                                 "RANK_TABLE_FILE", "MINDSPORE_HCCL_CONFIG_PATH",
                                                 "SSD_LOCAL_PROCESSES")}
record.update(argv=sys.argv[1:], pid=os.getpid(),
              table=json.load(open(table)) if os.path.isfile(table) else None)
with open(os.path.join(records, f".rank_{rank}.tmp"), "w") as handle:
    json.dump(record, handle)
os.replace(os.path.join(records, f".rank_{rank}.tmp"), os.path.join(records, f"rank_{rank}.json"))
print(f"rank {rank} started", flush=True)
if os.environ.get("STANDIN_FAIL") == rank:
    deadline = time.time() + 10
    while not os.path.exists(os.path.join(records, "rank_0.json")) and time.time() < deadline:
        time.sleep(0.05)
    print(f"error: rank {rank} fails on purpose", flush=True)
    sys.exit(1)
time.sleep(float(os.environ.get("STANDIN_SLEEP", "0")))
"""


def table_file(path, *servers):
    """A rank table json: servers as (server_id, number of devices), ranks in table order."""
    rank, server_list = 0, []
    for server_id, count in servers:
        devices = []
        for device in range(count):
            devices.append({"device_id": str(device), "device_ip": f"192.98.{rank}.1",
                            "rank_id": str(rank)})
            rank += 1
        server_list.append({"server_id": server_id, "device": devices})
    path.write_text(json.dumps({"version": "1.0", "server_count": str(len(servers)),
                                "server_list": server_list, "status": "completed"}))
    return str(path)


@pytest.fixture
def standin(tmp_path):
    """The stand-in program's path and the folder of its records."""
    path = tmp_path / "standin"
    path.write_text(STANDIN.replace("__PYTHON__", sys.executable))
    path.chmod(0o755)
    records = tmp_path / "records"
    records.mkdir()
    return str(path), records


def read_records(records):
    return {int(name[5:-5]): json.loads((records / name).read_text())
            for name in sorted(os.listdir(records)) if name.endswith(".json")}


def gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


# Rank tables.

BAD_TABLES = {
    "{not json": "is not valid json",
    '{"servers": []}': "has no 'server_list' list",
    '{"server_list": [{"device": []}]}': "has no 'server_id' in server_list[0]",
    '{"server_list": [{"server_id": "a"}]}': "has no 'device' list in server_list[0] (a)",
    '{"server_list": [{"server_id": "a", "device": [{"device_id": "0", "rank_id": "0"}, '
    '{"device_id": "1"}]}]}': "has no 'rank_id' in server_list[0].device[1]",
    '{"server_list": [{"server_id": "a", "device": [{"device_id": "0", "rank_id": "x"}]}]}':
        "has rank_id 'x' in server_list[0].device[0], not a whole number",
    '{"server_list": [{"server_id": "a", "device": [{"device_id": "0", "rank_id": "0"}]}, '
    '{"server_id": "b", "device": [{"device_id": "0", "rank_id": 0}]}]}':
        "has rank_id 0 twice, in server_list[0].device[0] and server_list[1].device[0]",
    '{"server_list": [{"server_id": "a", "device": [{"device_id": "0", "rank_id": "0"}, '
    '{"device_id": "0", "rank_id": "1"}]}]}': "has device_id 0 twice in server_list[0]",
    '{"server_list": [{"server_id": "a", "device": [{"device_id": "0", "rank_id": "0"}, '
    '{"device_id": "1", "rank_id": "2"}]}]}': "has rank_ids [0, 2]: HCCL needs 0 .. 1, each once",
    '{"server_list": []}': "lists no device",
}


@pytest.mark.parametrize("text", list(BAD_TABLES))
def test_a_wrong_table_is_named_with_what_is_wrong(tmp_path, text):
    path = tmp_path / "table.json"
    path.write_text(text)
    with pytest.raises(RefusalError) as caught:
        load(str(path))
    message = str(caught.value)
    assert message.startswith(f"RANK_TABLE_FILE {path} ")
    assert BAD_TABLES[text] in message
    assert "server_list: [{server_id, device: [{device_id, device_ip, rank_id}" in message


def test_an_unreadable_table_is_named(tmp_path):
    with pytest.raises(RefusalError) as caught:
        load(str(tmp_path / "none.json"))
    assert f"RANK_TABLE_FILE {tmp_path / 'none.json'} cannot be read: No such file" \
        in str(caught.value)


def test_device_num_below_the_hosts_devices_gives_a_sub_table(tmp_path):
    path = table_file(tmp_path / "t.json", ("hostA", 8))
    logs = str(tmp_path / "out" / "logs")
    launch = plan(load(path), {"hostA"}, "2", logs)
    assert [(worker.rank, worker.device_id) for worker in launch.workers] == [(0, "0"), (1, "1")]
    assert launch.rank_size == 2
    assert launch.table_file == os.path.join(logs, "rank_table_2.json")
    write_sub_table(launch)
    assert os.listdir(logs) == ["rank_table_2.json"]   # no temporary file left
    table = json.loads(open(launch.table_file).read())
    assert table["version"] == "1.0" and table["status"] == "completed"
    assert table["server_count"] == "1"
    [server] = table["server_list"]
    assert server["server_id"] == "hostA"
    assert server["device"] == [
        {"device_id": "0", "device_ip": "192.98.0.1", "rank_id": "0"},
        {"device_id": "1", "device_ip": "192.98.1.1", "rank_id": "1"}]
    assert load(launch.table_file).devices   # a valid table itself
    assert launch.environment(launch.workers[1]) == {
        "RANK_TABLE_FILE": launch.table_file, "MINDSPORE_HCCL_CONFIG_PATH": launch.table_file,
        "RANK_SIZE": "2", "RANK_ID": "1", "DEVICE_ID": "1", "SSD_LOCAL_PROCESSES": "2"}


def test_a_sub_table_renumbers_the_ranks_across_this_hosts_servers(tmp_path):
    """Two servers that are both this host (a name and an address): 3 of 4 devices."""
    path = table_file(tmp_path / "t.json", ("hostA", 2), ("10.0.0.7", 2))
    launch = plan(load(path), {"hostA", "10.0.0.7"}, "3", str(tmp_path))
    assert [(worker.rank, worker.device_id) for worker in launch.workers] == \
           [(0, "0"), (1, "1"), (2, "0")]
    table = launch.sub_table
    assert table["server_count"] == "2"
    assert [[d["rank_id"] for d in s["device"]] for s in table["server_list"]] == \
           [["0", "1"], ["2"]]


def test_the_whole_table_is_used_as_it_is(tmp_path):
    path = table_file(tmp_path / "t.json", ("hostA", 8))
    for device_num in ("", "8"):
        launch = plan(load(path), {"hostA"}, device_num, str(tmp_path))
        assert launch.table_file == path and launch.sub_table is None
        assert launch.rank_size == 8 and len(launch.workers) == 8
    path = table_file(tmp_path / "t2.json", ("hostA", 2), ("hostB", 2))
    launch = plan(load(path), {"hostB"}, "2", str(tmp_path))
    assert [(worker.rank, worker.device_id) for worker in launch.workers] == [(2, "0"), (3, "1")]
    assert launch.rank_size == 4 and launch.table_file == path


@pytest.mark.parametrize("device_num", ["0", "9", "x", "-1"])
def test_device_num_out_of_range_is_refused(tmp_path, device_num):
    path = table_file(tmp_path / "t.json", ("hostA", 8))
    with pytest.raises(RefusalError) as caught:
        plan(load(path), {"hostA"}, device_num, str(tmp_path / "logs"))
    assert f"DEVICE_NUM={device_num}: this host has 8 device(s) in {path}; set DEVICE_NUM to " \
           "1 .. 8" in str(caught.value)
    assert "nothing was started" in str(caught.value)
    assert not (tmp_path / "logs").exists()


def test_reducing_this_hosts_devices_of_a_larger_table_is_refused(tmp_path):
    path = table_file(tmp_path / "t.json", ("hostA", 2), ("hostB", 2))
    with pytest.raises(RefusalError) as caught:
        plan(load(path), {"hostA"}, "1", str(tmp_path))
    message = str(caught.value)
    assert message.startswith(f"DEVICE_NUM=1: {path} also lists the servers hostB")
    assert "Unset DEVICE_NUM (or set it to 2)" in message and "nothing was started" in message


def test_a_host_the_table_does_not_list_is_refused(tmp_path):
    path = table_file(tmp_path / "t.json", ("hostA", 2), ("hostB", 2))
    with pytest.raises(RefusalError) as caught:
        plan(load(path), {"hostC", "127.0.0.1"}, "", str(tmp_path))
    assert f"{path} lists no device of this host: its servers are hostA, hostB, this host is " \
           "127.0.0.1, hostC" in str(caught.value)
    assert "nothing was started" in str(caught.value)


def test_host_names_hold_this_hosts_name():
    names = host_names()
    assert socket.gethostname() in names and "127.0.0.1" in names


def test_refusals_from_main_create_nothing(tmp_path, monkeypatch, capsys):
    path = table_file(tmp_path / "t.json", (socket.gethostname(), 8))
    (tmp_path / "data").mkdir()
    monkeypatch.setenv("DEVICE_NUM", "9")
    status = main(["--cwd", str(tmp_path), path, "coco", "data", "mr", "out"])
    assert status == 2
    assert "error: DEVICE_NUM=9: this host has 8 device(s)" in capsys.readouterr().err
    assert not (tmp_path / "mr").exists() and not (tmp_path / "out").exists()


# The command line.

def test_options_take_paths_from_the_callers_folder(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "t.json").write_text("{}")
    (tmp_path / "init.ckpt").write_bytes(b"")
    options = parse(["t.json", "coco", "data", "mr", "out", "init.ckpt", "--", "--lr", "0.1"],
                    str(tmp_path))
    assert options.rank_table == str(tmp_path / "t.json") and options.worker_num is None
    assert options.logs == str(tmp_path / "out" / "logs")
    assert options.train_arguments() == [
        "train.py", "--distribute", "true", "--dataset", "coco", "--data_url",
        str(tmp_path / "data"), "--mindrecord_url", str(tmp_path / "mr"), "--train_url",
        str(tmp_path / "out"), "--pre_trained", str(tmp_path / "init.ckpt"), "--lr", "0.1"]
    options = parse(["--worker_num", "4", "--node_rank", "1", "--comm_timeout", "60", "voc",
                     "data", "mr", "out"], str(tmp_path))
    assert (options.worker_num, options.local_worker_num, options.node_rank) == (4, 4, 1)
    assert options.comm_timeout == 60 and options.rank_table is None
    env = job_environment(parse(["--worker_num", "4", "--local_worker_num", "2", "voc", "data",
                                 "mr", "out"], str(tmp_path)), {"PATH": "/bin"})
    assert env["SSD_LOCAL_PROCESSES"] == "2"   # this host's cores shared by its 2 processes


@pytest.mark.parametrize("args, message", [
    (["coco"], None),
    (["--worker_num", "2", "coco", "d"], None),
    (["--worker_num", "x", "coco", "data", "mr", "out"], "--worker_num must be a number, got 'x'"),
    (["--worker_num", "2", "--node_rank", "-x", "coco", "data", "mr", "out"],
     "--node_rank must be a number, got '-x'"),
    (["--worker_num", "2", "--comm_timeout", "0", "coco", "data", "mr", "out"],
     "--comm_timeout must be above 0 seconds"),
    (["--worker_num", "2", "pascal", "data", "mr", "out"],
     "DATASET must be coco, voc or other, got 'pascal'"),
    (["--worker_num", "2", "coco", "nope", "mr", "out"], "DATASET_PATH '{tmp}/nope' is not a"),
    (["t.json", "coco", "data", "mr", "out"], "RANK_TABLE_FILE '{tmp}/t.json' is not a file"),
    (["--worker_num", "2", "coco", "data", "mr", "out", "x.ckpt"],
     "PRE_TRAINED_PATH '{tmp}/x.ckpt' is not a file"),
])
def test_options_refuse_with_the_reason(tmp_path, args, message):
    (tmp_path / "data").mkdir()
    with pytest.raises(RefusalError) as caught:
        parse(args, str(tmp_path))
    if message is None:
        assert isinstance(caught.value, UsageError) and str(caught.value).startswith("Usage: ")
    else:
        assert message.format(tmp=tmp_path) in str(caught.value)


# The supervisors.

def rank_processes(launch, records, **env):
    base = dict(os.environ, STANDIN_RECORDS=str(records), **env)
    return [(worker.rank, {**base, **launch.environment(worker)}) for worker in launch.workers]


def two_of_eight(tmp_path):
    path = table_file(tmp_path / "t.json", ("hostA", 8))
    logs = tmp_path / "logs"
    logs.mkdir()
    launch = plan(load(path), {"hostA"}, "2", str(logs))
    write_sub_table(launch)
    return launch, logs


def test_each_rank_sees_two_ranks_and_a_two_device_table(tmp_path, standin):
    program, records = standin
    launch, logs = two_of_eight(tmp_path)
    status = supervise_ranks([sys.executable, program, "train.py"],
                             rank_processes(launch, records), str(logs), str(tmp_path), poll=0.05)
    assert status == 0
    seen = read_records(records)
    assert sorted(seen) == [0, 1]
    for rank, record in seen.items():
        assert record["RANK_ID"] == str(rank) and record["DEVICE_ID"] == str(rank)
        assert record["RANK_SIZE"] == "2"
        assert record["RANK_TABLE_FILE"] == str(logs / "rank_table_2.json")
        devices = [d for server in record["table"]["server_list"] for d in server["device"]]
        assert [d["rank_id"] for d in devices] == ["0", "1"]
        assert f"rank {rank} started" in (logs / f"worker_{rank}.log").read_text()


def test_a_failing_rank_stops_the_others_and_is_named(tmp_path, standin, capsys):
    program, records = standin
    launch, logs = two_of_eight(tmp_path)
    start = time.time()
    status = supervise_ranks([sys.executable, program, "train.py"],
                             rank_processes(launch, records, STANDIN_FAIL="1", STANDIN_SLEEP="60"),
                             str(logs), str(tmp_path), poll=0.05)
    assert status == 1 and time.time() - start < 30
    assert gone(read_records(records)[0]["pid"])
    err = capsys.readouterr().err
    assert "FAILED: the distributed job did not finish." in err
    assert f"first failing rank: 1, log {logs / 'worker_1.log'} (exit status 1)" in err
    assert "    error: rank 1 fails on purpose" in err
    assert f"  see {logs / 'worker_1.log'}" in err and f"see {logs / 'worker_0.log'}" not in err


def test_sigterm_to_the_launcher_stops_the_ranks(tmp_path, standin):
    program, records = standin
    launch, logs = two_of_eight(tmp_path)
    script = tmp_path / "launch.py"
    script.write_text("\n".join([
        "import json, sys",
        f"sys.path.insert(0, {ROOT!r})",
        "from src.launcher.supervise import supervise_ranks",
        f"ranks = [tuple(pair) for pair in json.load(open({str(tmp_path / 'ranks.json')!r}))]",
        f"sys.exit(supervise_ranks([sys.executable, {program!r}, 'train.py'], ranks, "
        f"{str(logs)!r}, {str(tmp_path)!r}, poll=0.05))", ""]))
    (tmp_path / "ranks.json").write_text(
        json.dumps(rank_processes(launch, records, STANDIN_SLEEP="60")))
    job = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 30
    while len(read_records(records)) < 2 and time.time() < deadline and job.poll() is None:
        time.sleep(0.05)
    pids = [record["pid"] for record in read_records(records).values()]
    assert len(pids) == 2
    job.send_signal(signal.SIGTERM)
    _, err = job.communicate(timeout=30)
    assert job.returncode == 128 + signal.SIGTERM
    assert "Stopped: SIGTERM received" in err
    assert all(gone(pid) for pid in pids)


def test_the_proc_scan_maps_a_started_process_to_its_rank(tmp_path):
    mark = f"launch-test-{tmp_path.name}"
    sleep = [sys.executable, "-c", "import time; time.sleep(30)"]
    env = dict(os.environ, RANK_ID="3")
    unranked = {name: value for name, value in os.environ.items() if name != "RANK_ID"}
    jobs = [subprocess.Popen([*sleep, mark], env=env),
            subprocess.Popen([*sleep, mark], env=unranked),
            subprocess.Popen([*sleep, "other"], env=env)]
    try:
        assert ranks_by_pid([mark, "time.sleep"]) == {jobs[0].pid: "3"}
        assert ranks_by_pid([mark], ancestor=os.getpid()) == {jobs[0].pid: "3"}
        assert ranks_by_pid([mark], ancestor=jobs[1].pid) == {}
    finally:
        for job in jobs:
            job.kill()
            job.wait()


FAKE_MSRUN = """
import os, subprocess, sys, time
logs, out = sys.argv[1:3]
workers = []
for rank in (0, 1):
    code = "import sys, time; time.sleep(1.5 if sys.argv[-1] == '1' else 60); sys.exit(1)"
    with open(os.path.join(logs, f"worker_{rank}.log"), "w") as log:
        workers.append(subprocess.Popen(
            [sys.executable, "-c", code, "train.py", "--train_url", out, str(rank)],
            env=dict(os.environ, RANK_ID=str(rank)), stdout=log, stderr=log))
workers[1].wait()
print(f"[ERROR] Worker process {workers[1].pid} exit with exception. Error code: 1.", flush=True)
workers[0].kill()
sys.exit(1)
"""


def test_the_msrun_supervisor_names_the_rank_msrun_saw_fail(tmp_path, capsys):
    """The failing worker's log has no error: only the /proc scan can tell its rank."""
    fake, logs, out = tmp_path / "msrun.py", tmp_path / "logs", tmp_path / "out"
    fake.write_text(FAKE_MSRUN)
    logs.mkdir()
    status = supervise_msrun([sys.executable, str(fake), str(logs), str(out)], os.environ,
                             str(logs), str(tmp_path), marks=[str(out), "train.py"], poll=0.1)
    assert status == 1
    captured = capsys.readouterr()
    assert "exit with exception. Error code: 1." in captured.out   # msrun.log, copied
    assert f"first failing rank: 1, log {logs / 'worker_1.log'}" in captured.err


STOPPABLE_MSRUN = """
import os, subprocess, sys
logs, out = sys.argv[1:3]
code = ("import signal, sys, time\\n"
        "def stop(number, frame):\\n"
        "    print('got', signal.Signals(number).name, flush=True)\\n"
        "    sys.exit(0)\\n"
        "signal.signal(signal.SIGTERM, stop)\\n"
        "print('ready', flush=True)\\n"
        "time.sleep(60)\\n")
workers = []
for rank in (0, 1):
    with open(os.path.join(logs, f"worker_{rank}.log"), "w") as log:
        workers.append(subprocess.Popen(
            [sys.executable, "-c", code, "train.py", out], env=dict(os.environ, RANK_ID=str(rank)),
            stdout=log, stderr=log, start_new_session=True))
sys.exit(max(worker.wait() for worker in workers))
"""


def test_sigterm_to_the_msrun_launcher_asks_the_workers_to_stop(tmp_path):
    """msrun puts its workers in sessions of their own: the launcher signals them itself."""
    fake, logs, out = tmp_path / "msrun.py", tmp_path / "logs", tmp_path / "out"
    fake.write_text(STOPPABLE_MSRUN)
    logs.mkdir()
    script = tmp_path / "launch.py"
    script.write_text("\n".join([
        "import os, sys",
        f"sys.path.insert(0, {ROOT!r})",
        "from src.launcher.supervise import supervise_msrun",
        f"sys.exit(supervise_msrun([sys.executable, {str(fake)!r}, {str(logs)!r}, "
        f"{str(out)!r}], os.environ, {str(logs)!r}, {str(tmp_path)!r}, "
        f"marks=[{str(out)!r}, 'train.py'], poll=0.1))", ""]))
    job = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    worker_logs = [logs / f"worker_{rank}.log" for rank in (0, 1)]
    deadline = time.time() + 30
    while time.time() < deadline and job.poll() is None and not all(
            log.exists() and "ready" in log.read_text() for log in worker_logs):
        time.sleep(0.05)
    time.sleep(0.3)   # a scan or two
    job.send_signal(signal.SIGTERM)
    _, err = job.communicate(timeout=30)
    assert job.returncode == 128 + signal.SIGTERM, err
    assert "Stopped: SIGTERM received" in err
    for log in worker_logs:
        assert "got SIGTERM" in log.read_text()


def test_the_failing_rank_falls_back_to_the_first_log_with_an_error(tmp_path):
    (tmp_path / "msrun.log").write_text("Worker process 999999 exit with exception. Error\n")
    (tmp_path / "worker_0.log").write_text("fine\n")
    (tmp_path / "worker_10.log").write_text("error: late\n")
    (tmp_path / "worker_2.log").write_text("Traceback (most recent call last):\n")
    assert failing_rank(str(tmp_path), {}) == "2"
    assert failing_rank(str(tmp_path), {999999: "10"}) == "10"
    (tmp_path / "worker_2.log").write_text("fine\n")
    assert failing_rank(str(tmp_path), {}) == "10"


def test_the_launcher_does_not_load_mindspore():
    code = ("import sys; import src.launcher.__main__, src.launcher.supervise; "
            "sys.exit('mindspore' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


# The script end to end.

def test_the_script_starts_device_num_ranks_with_their_own_table(tmp_path, standin):
    program, records = standin
    path = table_file(tmp_path / "table.json", (socket.gethostname(), 8))
    (tmp_path / "data").mkdir()
    env = dict(os.environ, DEVICE_NUM="2", PYTHON=program, STANDIN_RECORDS=str(records))
    result = subprocess.run(["bash", os.path.join(ROOT, "scripts", "run_distribute_train.sh"),
                             path, "coco", "data", "mr", "out"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    out = tmp_path / "out"
    assert f"All 2 processes finished; outputs in {out}" in result.stdout
    sub_table = out / "logs" / "rank_table_2.json"
    seen = read_records(records)
    assert sorted(seen) == [0, 1]
    for rank, record in seen.items():
        assert (record["RANK_ID"], record["DEVICE_ID"], record["RANK_SIZE"]) == \
               (str(rank), str(rank), "2")
        assert record["SSD_LOCAL_PROCESSES"] == "2"    # this host's cores shared by 2
        assert record["RANK_TABLE_FILE"] == record["MINDSPORE_HCCL_CONFIG_PATH"] == str(sub_table)
        assert [len(server["device"]) for server in record["table"]["server_list"]] == [2]
        assert record["argv"][:3] == ["train.py", "--distribute", "true"]
        assert record["argv"][record["argv"].index("--train_url") + 1] == str(out)
