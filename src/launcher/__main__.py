"""``python -m src.launcher [--cwd DIR] ARGUMENTS``: what scripts/run_distribute_train.sh runs
(its usage: ``src.launcher.options``); relative paths are taken from DIR (default: here).

Exit status: 0 when every rank finished, 1 when one failed (named, with its log), 2 for a
refusal before anything is created or started, 128 + N when signal N stopped the job.
"""
import os
import shutil
import sys
from pathlib import Path
from typing import Mapping, Optional, Sequence

from src.cpu import LOCAL_PROCESSES_VARIABLE
from src.launcher import RefusalError, UsageError
from src.launcher.options import Options, parse
from src.launcher.rank_table import Plan, host_names, load, plan, write_sub_table
from src.launcher.supervise import supervise_msrun, supervise_ranks

ROOT = str(Path(__file__).resolve().parents[2])


def job_environment(options: Options, base: Mapping[str, str]) -> dict[str, str]:
    """The environment every process of the job gets."""
    env = dict(base)
    if options.comm_timeout is not None:
        # The CPU collectives read it when the job starts (src.train.agreement); unset,
        # train.py sets its default.
        env["MS_CPU_COMM_OP_TIMEOUT"] = str(options.comm_timeout)
    if options.worker_num is not None:
        env[LOCAL_PROCESSES_VARIABLE] = str(options.local_worker_num)
        # msrun starts the `python` found on PATH: make it this project's.
        venv = os.path.join(ROOT, ".venv", "bin")
        if os.access(os.path.join(venv, "python"), os.X_OK):
            env["PATH"] = venv + os.pathsep + env.get("PATH", "")
    return env


def find_msrun(env: Mapping[str, str]) -> str:
    """msrun's path on the job's PATH."""
    found = shutil.which("msrun", path=env.get("PATH", ""))
    if not found:
        raise RefusalError("msrun not found (it comes with the mindspore package): run "
                           "`make setup`, or put the environment that has mindspore on PATH")
    return found


def run_rank_table(options: Options, launch: Plan, env: Mapping[str, str], python: str) -> int:
    """One process per device of ``launch``, supervised."""
    try:
        write_sub_table(launch)
    except OSError as exc:
        print(f"error: cannot write the rank sub-table {launch.table_file}: {exc.strerror}",
              file=sys.stderr)
        return 2
    if launch.sub_table is not None:
        count = launch.rank_size
        print(f"rank table: DEVICE_NUM={count}, the first {count} devices of this host in "
              f"{options.rank_table}; their own table (ranks 0..{count - 1}): "
              f"{launch.table_file}", flush=True)
    print(f"rank table: {len(launch.workers)} processes here of {launch.rank_size}; logs in "
          f"{options.logs}", flush=True)
    ranks = [(worker.rank, {**env, **launch.environment(worker)}) for worker in launch.workers]
    status = supervise_ranks([python, *options.train_arguments()], ranks, options.logs, ROOT)
    if status == 0:
        print(f"All {len(launch.workers)} processes finished; outputs in {options.output_path}")
    return status


def run_msrun(options: Options, msrun: str, env: Mapping[str, str]) -> int:
    """The job through msrun, supervised."""
    node = ["--node_rank", str(options.node_rank)] if options.node_rank >= 0 else []
    command = [msrun, "--worker_num", str(options.worker_num),
               "--local_worker_num", str(options.local_worker_num),
               "--master_addr", options.master_addr, "--master_port", str(options.master_port),
               *node, "--log_dir", options.logs, "--join", "True",
               "--cluster_time_out", str(options.timeout), "--tail_worker_log", "0",
               *options.train_arguments()]
    print(f"msrun: {options.worker_num} processes ({options.local_worker_num} here), scheduler "
          f"{options.master_addr}:{options.master_port}; logs in {options.logs}", flush=True)
    return supervise_msrun(command, env, options.logs, ROOT,
                           marks=[options.output_path, "train.py"])


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Check everything, create the output folders, run the job; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    cwd = os.getcwd()
    if args[:1] == ["--cwd"] and len(args) > 1:
        cwd, args = args[1], args[2:]
    try:
        options = parse(args, cwd)
        env = job_environment(options, os.environ)
        if options.rank_table:
            launch = plan(load(options.rank_table), host_names(), env.get("DEVICE_NUM", ""),
                          options.logs)
        else:
            msrun = find_msrun(env)
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return 2
    except RefusalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        os.makedirs(options.mindrecord_path, exist_ok=True)
        os.makedirs(options.logs, exist_ok=True)
    except OSError as exc:
        print(f"error: cannot create output folders: {exc}", file=sys.stderr)
        return 2
    if options.rank_table:
        return run_rank_table(options, launch, env, env.get("PYTHON") or sys.executable)
    return run_msrun(options, msrun, env)


if __name__ == "__main__":
    sys.exit(main())
