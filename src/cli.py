"""What every entry script does: parse the config, settle the process, run one function, exit
with a clear status.

The order matters: the config is parsed first (``src.config`` imports no MindSpore), then
``prepare_process`` sets what oneDNN and our kernels read when they load, and only then is the
entry function's module imported (and MindSpore with it).
"""
import importlib
import sys
from typing import Callable, Optional, Union

from src.config import Config, ConfigError, parse_config
from src.device import hardware_problem, prepare_process

EXPECTED_ERRORS = (ConfigError, ValueError, OSError)

Entry = Union[str, Callable[[Config], object]]


def is_expected(exc: BaseException) -> bool:
    """Bad input (flags, data, checkpoints) and the project's own run errors: a message, not a
    traceback. MindSpore's and Python's internal errors keep their traceback."""
    return isinstance(exc, EXPECTED_ERRORS) or type(exc).__module__.startswith("src.")


def parse_runnable_config(argv: Optional[list], description: str,
                          overrides: Optional[dict] = None) -> Config:
    """parse_config, ``prepare_process``, then the checks of what this machine can run
    (``hardware_problem``): an unusable setting exits with status 2 and its message, before
    any work."""
    config = parse_config(argv, description, overrides)
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


def run(entry: Entry, description: str, argv: Optional[list] = None,
        overrides: Optional[dict] = None) -> int:
    """Parse flags into a Config, call the entry function with it, turn expected failures into
    messages.

    ``entry`` is 'module:function' (imported once the process is prepared) or a callable of a
    module that does not import MindSpore at its top. ``overrides`` are this script's own
    defaults (e.g. batch size 1 for export).

    Exit status: 0 on success, 1 when the run fails on its input (bad data, checkpoint ...),
    2 for unusable flags (argparse's convention) or flags this machine cannot run, 130 on
    Ctrl-C.
    """
    config = parse_runnable_config(argv, description, overrides)
    try:
        resolve_entry(entry)(config)
    except KeyboardInterrupt:
        print("\nInterrupted.", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001  (re-raised unless expected)
        if not is_expected(exc):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
