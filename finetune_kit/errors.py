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


# Set to see the traceback of a user error too (for a bug report): FINETUNE_KIT_DEBUG=1 finetune-kit ...
DEBUG_ENV = "FINETUNE_KIT_DEBUG"

# Library failures that are user mistakes the config checks cannot see before the model exists: (exception type,
# text in its message, what to tell the user). Anything else keeps its traceback.
KNOWN_LIBRARY_ERRORS = (
    (ValueError, "not found in the base model", "lora_target_modules names modules the model does not have ({}). "
                                               "Use [all-linear], or names from `finetune-kit inspect <model>`."),
    (ValueError, "Please check the target modules", "lora_target_modules matches no module of the model ({}). "
                                                    "Use [all-linear], or names from `finetune-kit inspect <model>`."),
    # Resuming a checkpoint into a model of other shapes (the preflight compares LoRA settings; this is the rest)
    (RuntimeError, "Error(s) in loading state_dict for Peft", "the checkpoint does not fit the model this config "
                                                             "builds ({}): resume with the settings the run started "
                                                             "with (its config.yaml)."),
    (ValueError, "parameter group that doesn't match the size of optimizer's group",
     "the checkpoint's optimizer state does not fit the parameters this config trains ({}): resume with the settings "
     "the run started with (its config.yaml)."),
    (OSError, "Error no file named", "the model folder has no weights transformers can load ({}). Point "
                                     "model_name_or_path at a whole checkpoint (`finetune-kit export` merges a "
                                     "LoRA run)."),
)


def known_library_error(err: BaseException) -> str | None:
    for kind, text, message in KNOWN_LIBRARY_ERRORS:
        if isinstance(err, kind) and text in str(err):
            return message.format(str(err).splitlines()[0][:300])
    return None


def _close_process_group() -> None:
    """Tear down a finished distributed run's process group before the interpreter exits: left to static destructors,
    gloo's threads can abort a rank ("terminate called without an active exception", SIGABRT) after a good run."""
    torch = sys.modules.get("torch")  # never imported just for this: most commands do not use torch
    if torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def run_cli(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> None:
    """Run `main(argv)`; a user mistake prints one paragraph and exits 2 instead of a traceback (FINETUNE_KIT_DEBUG=1
    shows it); an unexpected error keeps its traceback and asks for a bug report."""
    import os

    from finetune_kit import quiet_libraries

    quiet_libraries()
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        main(argv)
        _close_process_group()
    except UserError as err:
        if debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR) from None
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        sys.stderr.close()
        raise SystemExit(0) from None
    except Exception as err:
        message = known_library_error(err)
        if message is None or debug:
            print("finetune_kit: unexpected error (a bug, or a case we do not check yet): please report it with the "
                  f"traceback below; {DEBUG_ENV}=1 also shows tracebacks of user errors.", file=sys.stderr)
            raise
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
