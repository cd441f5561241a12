"""Files written whole or not at all: a temporary name beside the target, renamed into place on success.

A command that fails half-way (a bad row, a model that cannot load, Ctrl-C) leaves an existing file as it was.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_output(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file beside `path` for writing; on a clean exit it replaces `path`, else it is removed."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the result should look like any file the user writes
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: str | Path, text: str) -> None:
    with atomic_output(path) as handle:
        handle.write(text)


def read_yaml_mapping(path: Path) -> dict | None:
    """The mapping a YAML file holds ({} for an empty file or one that holds no mapping), or None where the file is
    absent, unreadable or not YAML: how a run folder's config.yaml is read back (the CLI's predict / generate, the
    board)."""
    import yaml

    if not path.is_file():
        return None
    try:
        values = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return values if isinstance(values, dict) else {}
