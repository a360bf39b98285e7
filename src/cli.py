"""What every entry script does: parse the config, run one function, exit with a clear status."""
import sys

from src.config import ConfigError, parse_config

EXPECTED_ERRORS = (ConfigError, ValueError, OSError)


def run(main, description, argv=None):
    """Parse flags into a Config, call ``main(config)``, turn expected failures into messages.

    Exit status: 0 on success, 1 when the run fails on its input (bad data, checkpoint ...),
    2 for unusable flags (argparse's convention), 130 on Ctrl-C.
    """
    config = parse_config(argv, description)
    try:
        main(config)
    except KeyboardInterrupt:
        print("\nInterrupted.", file=sys.stderr)
        return 130
    except EXPECTED_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
