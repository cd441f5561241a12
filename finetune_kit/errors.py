"""User-facing errors: one paragraph, exit code 2, no traceback.

Anything the user can fix (a config key, a data row, a path) raises `UserError`. `run_cli` turns it into a
message on stderr and `SystemExit(2)`; genuine bugs keep their traceback so they can be reported.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A mistake in the user's input (config, data, paths). The message names what and where."""


class ConfigError(UserError):
    """A config key or value is wrong."""


class DataError(UserError):
    """A dataset file or row is wrong."""


def run_cli(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> None:
    """Run `main(argv)`; on `UserError` print one paragraph and exit 2 instead of a traceback."""
    try:
        main(argv)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR) from None
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        sys.stderr.close()
        raise SystemExit(0) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
