"""What every entry script does: parse the config, run one function, exit with a clear status."""
import sys

from src.config import ConfigError, parse_config
from src.device import hardware_problem

EXPECTED_ERRORS = (ConfigError, ValueError, OSError)


def is_expected(exc):
    """Bad input (flags, data, checkpoints) and the project's own run errors: a message, not a
    traceback. MindSpore's and Python's internal errors keep their traceback."""
    return isinstance(exc, EXPECTED_ERRORS) or type(exc).__module__.startswith("src.")


def parse_runnable_config(argv, description, overrides=None):
    """parse_config, then the checks of what this machine can run (``hardware_problem``): an
    unusable setting exits with status 2 and its message, before any work."""
    config = parse_config(argv, description, overrides)
    problem = hardware_problem(config)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        raise SystemExit(2)
    return config


def run(main, description, argv=None, overrides=None):
    """Parse flags into a Config, call ``main(config)``, turn expected failures into messages.

    ``overrides`` are this script's own defaults (e.g. batch size 1 for export).

    Exit status: 0 on success, 1 when the run fails on its input (bad data, checkpoint ...),
    2 for unusable flags (argparse's convention) or flags this machine cannot run, 130 on
    Ctrl-C.
    """
    config = parse_runnable_config(argv, description, overrides)
    try:
        main(config)
    except KeyboardInterrupt:
        print("\nInterrupted.", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001  (re-raised unless expected)
        if not is_expected(exc):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
