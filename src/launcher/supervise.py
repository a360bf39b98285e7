"""Running a distributed job in the foreground and telling which rank failed.

Two forms: one process per device started here (a rank table), or msrun, which starts the
workers itself. Either way the first failure stops the rest and is reported with its rank and
the tail of its log (``worker_<rank>.log``). SIGINT or SIGTERM to the launcher asks every rank
to stop (SIGTERM: the trainers stop after the same step and rank 0 saves); a second one stops
them at once.
"""
import os
import re
import signal
import subprocess
import sys
import time
from typing import Any, Callable, Mapping, Optional, Sequence

from src.launcher.processes import ranks_by_pid

TROUBLE = re.compile(r"Traceback|^error:|Error code|exit with exception|Killed", re.M)
MESSAGE = re.compile(r"^error:|Error:|Traceback")
ERROR = re.compile(r"Traceback|^error:", re.M)
MSRUN_FAILURE = re.compile(r"Worker process (\d+) exit with exception")


class Signals:
    """Counts SIGINT and SIGTERM while active (``with Signals() as signals:``), instead of
    dying at once; the earlier handlers come back at the end."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "Signals":
        for number in (signal.SIGINT, signal.SIGTERM):
            self._previous[number] = signal.signal(number, self._handle)
        return self

    def _handle(self, number: int, _frame: object) -> None:
        self.received.append(number)

    def __exit__(self, *_exc: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    def status(self) -> int:
        """The shell's exit status for the first signal received (128 + its number)."""
        return 128 + self.received[0]

    def say_stopped(self, logs: str) -> None:
        name = signal.Signals(self.received[0]).name
        print(f"Stopped: {name} received; the ranks were asked to stop. Logs: {logs}",
              file=sys.stderr)


def log_of(logs: str, rank: str) -> str:
    """A rank's log file."""
    return os.path.join(logs, f"worker_{rank}.log")


def _text(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return ""


def worker_logs(logs: str) -> list[tuple[str, str]]:
    """(rank, path) of the workers' logs, by rank."""
    found = []
    for name in os.listdir(logs) if os.path.isdir(logs) else []:
        match = re.fullmatch(r"worker_(\d+)\.log", name)
        if match:
            found.append((int(match.group(1)), match.group(1), os.path.join(logs, name)))
    return [(rank, path) for _, rank, path in sorted(found)]


def report_failure(logs: str, failed: Optional[str], detail: str = "") -> None:
    """What failed, on stderr: every worker log with an error and its last error lines, the
    first failing rank with the tail of its log, and where all logs are."""
    def say(text: str) -> None:
        print(text, file=sys.stderr)

    say("FAILED: the distributed job did not finish.")
    for _, path in worker_logs(logs):
        text = _text(path)
        if TROUBLE.search(text):
            say(f"  see {path}")
            for line in [line for line in text.splitlines() if MESSAGE.search(line)][-2:]:
                say(f"    {line}")
    if failed is not None:
        say(f"  first failing rank: {failed}, log {log_of(logs, failed)}{detail}")
        for line in _text(log_of(logs, failed)).splitlines()[-3:]:
            say(f"    {line}")
    say(f"  all logs: {logs}")


def _exit_detail(code: int) -> str:
    if code < 0:
        return f" (killed by {signal.Signals(-code).name})"
    return f" (exit status {code})"


def _send(process: subprocess.Popen, number: int, group: bool = False) -> None:
    if process.poll() is not None:
        return
    try:
        if group:
            os.killpg(process.pid, number)   # started in its own session: pgid == pid
        else:
            process.send_signal(number)
    except ProcessLookupError:
        pass


def supervise_ranks(command: Sequence[str], ranks: Sequence[tuple[int, Mapping[str, str]]],
                    logs: str, cwd: str, poll: float = 0.5, grace: float = 10.0) -> int:
    """Start ``command`` once per (rank, environment), output to ``logs``/worker_<rank>.log;
    on the first failure stop the others (SIGTERM, SIGKILL after ``grace`` seconds) and report
    it. Returns 0, 1 (a rank failed) or 128 + the signal that stopped the job."""
    processes: dict[int, subprocess.Popen] = {}
    failed: Optional[int] = None
    stopped_at: Optional[float] = None
    with Signals() as signals:
        try:
            for rank, env in ranks:
                with open(log_of(logs, str(rank)), "wb") as log:
                    processes[rank] = subprocess.Popen(
                        list(command), cwd=cwd, env=dict(env), stdout=log,
                        stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as exc:
            print(f"error: cannot start {command[0]}: {exc.strerror}", file=sys.stderr)
            for process in processes.values():
                _send(process, signal.SIGKILL, group=True)
                process.wait()
            return 1
        handled = 0
        while True:
            running = [process for process in processes.values() if process.poll() is None]
            if failed is None and not signals.received:
                failed = next((rank for rank, process in processes.items()
                               if process.returncode not in (None, 0)), None)
            if not running:
                break
            if len(signals.received) > handled:
                handled = len(signals.received)
                stopped_at = stopped_at or time.monotonic()
                for process in running:
                    _send(process, signal.SIGTERM if handled == 1 else signal.SIGKILL,
                          group=handled > 1)
            elif failed is not None and stopped_at is None:
                stopped_at = time.monotonic()
                for process in running:
                    _send(process, signal.SIGTERM)
            elif failed is not None and stopped_at is not None and \
                    time.monotonic() - stopped_at > grace:
                for process in running:
                    _send(process, signal.SIGKILL, group=True)
            time.sleep(poll)
        if signals.received:
            signals.say_stopped(logs)
            return signals.status()
    if failed is not None:
        report_failure(logs, str(failed), _exit_detail(processes[failed].returncode))
        return 1
    return 0


def _copy_new(path: str, offset: int) -> int:
    """Print what ``path`` gained since ``offset`` (a growing log); returns the new offset."""
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except OSError:
        return offset
    if data:
        sys.stdout.write(data.decode(errors="replace"))
        sys.stdout.flush()
    return offset + len(data)


def failing_rank(logs: str, ranks: Mapping[int, str]) -> Optional[str]:
    """The first rank that failed: the first worker msrun.log says exited with an exception
    (``ranks``: its process id -> rank), else the first worker log with an error."""
    for pid in MSRUN_FAILURE.findall(_text(os.path.join(logs, "msrun.log"))):
        if int(pid) in ranks:
            return ranks[int(pid)]
    return next((rank for rank, path in worker_logs(logs) if ERROR.search(_text(path))), None)


def supervise_msrun(command: Sequence[str], env: Mapping[str, str], logs: str, cwd: str,
                    marks: Sequence[str], poll: float = 1.0,
                    scan: Callable[..., dict[int, str]] = ranks_by_pid) -> int:
    """Run msrun (``command``) with its output in ``logs``/msrun.log, copied to stdout; learn
    which worker (a descendant whose command line holds ``marks``) is which rank, to name the
    one that fails. Returns 0, 1 or 128 + the signal that stopped the job."""
    log_path = os.path.join(logs, "msrun.log")
    with open(log_path, "wb") as log, Signals() as signals:
        # Its own session: a Ctrl-C reaches the launcher only, which stops the ranks itself.
        launcher = subprocess.Popen(list(command), cwd=cwd, env=dict(env), stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        ranks: dict[int, str] = {}
        offset, handled = 0, 0
        while True:
            done = launcher.poll() is not None
            ranks = scan(marks, ancestor=launcher.pid, known=ranks)
            offset = _copy_new(log_path, offset)
            if done:
                break
            if len(signals.received) > handled:
                handled = len(signals.received)
                workers = list(scan(marks, ancestor=launcher.pid)) if handled == 1 else []
                for pid in workers:
                    try:
                        os.kill(pid, signal.SIGTERM)
                    except ProcessLookupError:
                        pass
                if not workers:   # none yet, or asked twice: msrun kills its workers on SIGINT
                    _send(launcher, signal.SIGINT)
            time.sleep(poll)
    if signals.received:
        signals.say_stopped(logs)
        return signals.status()
    if launcher.returncode != 0:
        report_failure(logs, failing_rank(logs, ranks))
        return 1
    return 0
