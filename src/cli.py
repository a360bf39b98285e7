"""What every entry script does: parse the config, settle the process, run one function, exit
with a clear status.

The order matters: the config is parsed first (``src.config`` imports no MindSpore), then
``prepare_process`` sets what oneDNN and our kernels read when they load, and only then is the
entry function's module imported (and MindSpore with it).
"""
import argparse
import importlib
import os
import sys
from typing import Callable, Optional, Union

from src.config import Config, ConfigError
from src.config_loader import parse_config
from src.device import hardware_problem, prepare_process
from src.interrupts import Interrupted, Interrupts

EXPECTED_ERRORS = (ConfigError, ValueError, OSError)

Entry = Union[str, Callable[[Config], object]]


def is_expected(exc: BaseException) -> bool:
    """Bad input (flags, data, checkpoints) and the project's own run errors: a message, not a
    traceback. MindSpore's and Python's internal errors keep their traceback."""
    return isinstance(exc, EXPECTED_ERRORS) or type(exc).__module__.startswith("src.")


def parse_runnable_config(argv: Optional[list], description: str,
                          overrides: Optional[dict] = None, script: str = "",
                          own: Optional[argparse.ArgumentParser] = None) -> Config:
    """parse_config, ``prepare_process``, then the checks of what this machine can run
    (``hardware_problem``): an unusable setting exits with status 2 and its message, before
    any work."""
    config = parse_config(argv, description, overrides, script, own)
    prepare_process(config)
    problem = hardware_problem(config)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        raise SystemExit(2)
    return config


def resolve_entry(entry: Entry) -> Callable[[Config], object]:
    """A callable, or 'package.module:function' imported now (after ``prepare_process``)."""
    if callable(entry):
        return entry
    module, _, function = entry.partition(":")
    return getattr(importlib.import_module(module), function)


def stopped_line(stop: BaseException, what: str, kept: str) -> str:
    """The one line an entry point prints when a stop signal ended it: which signal, what
    stopped, what is kept."""
    name = stop.name if isinstance(stop, Interrupted) else "Ctrl-C (SIGINT)"
    return f"{name}: {what} stopped; {kept}" if kept else f"{name}: {what} stopped"


def interrupted_status(stop: BaseException) -> int:
    """128 + the signal's number (130 for Ctrl-C)."""
    return stop.status if isinstance(stop, Interrupted) else 130


def run_interruptible(work: Callable[[], int], what: str, kept: str = "",
                      mindspore: bool = True) -> int:
    """``work()`` with stop signals turned into one line and the status 128 + the signal
    (``src.interrupts``), for entry points that do not parse a Config (``run`` does this).
    ``mindspore`` False: the process runs no MindSpore graph (SIGTERM is left as it is)."""
    with Interrupts(take_sigterm=mindspore):
        try:
            return work()
        except KeyboardInterrupt as stop:
            if not getattr(stop, "reported", False):
                print(f"\n{stopped_line(stop, what, kept)}", file=sys.stderr, flush=True)
            return interrupted_status(stop)


def run(entry: Entry, description: str, argv: Optional[list] = None,
        overrides: Optional[dict] = None, what: str = "", kept: str = "",
        default_output_dir: str = "", own: Optional[argparse.ArgumentParser] = None) -> int:
    """Parse flags into a Config, call the entry function with it, turn expected failures into
    messages.

    ``entry`` is 'module:function' (imported once the process is prepared) or a callable of a
    module that does not import MindSpore at its top. ``overrides`` are this script's own
    defaults. ``what`` names the script in the line a stop signal prints (default: the
    program's file name), ``kept`` says what stays written then; ``{output_dir}`` in it becomes
    the output folder (``--output_dir``, else ``default_output_dir``). --help lists ``own``
    (the script's own flags, parsed by it) and the config keys the script reads
    (``src.config.SCRIPT_KEYS``).

    Exit status: 0 on success, 1 when the run fails on its input (bad data, checkpoint ...),
    2 for unusable flags (argparse's convention) or flags this machine cannot run, 128 + the
    signal on a stop signal (130 on Ctrl-C, 143 on SIGTERM), with one line saying so.
    """
    what = what or os.path.basename(sys.argv[0] or "the program")
    config = parse_runnable_config(argv, description, overrides, what, own)
    kept = kept.format(output_dir=config.output_dir or default_output_dir or "its output folder")

    def work() -> int:
        try:
            resolve_entry(entry)(config)
        except Exception as exc:  # noqa: BLE001  (re-raised unless expected)
            if not is_expected(exc):
                raise
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return 0

    return run_interruptible(work, what, kept)
