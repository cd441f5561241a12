"""The board's one rule for files: every path it reads or writes is inside its workspace folder.

A path typed into the board (a config, a data file, an output folder, a run to open) goes through `inside_workspace`
before anything touches it: `..` parts, absolute paths elsewhere and symbolic links that lead out of the workspace
are refused with a one-line error naming the path, not silently rewritten.
"""

from __future__ import annotations

from pathlib import Path, PurePath

from finetune_kit.errors import UserError


def existing_workspace(workspace: Path) -> Path:
    """The workspace folder, resolved; a one-line error when it was deleted or moved while the board ran."""
    root = Path(workspace).resolve()
    if not root.is_dir():
        raise UserError(f"the workspace {root} no longer exists (deleted or moved while the board ran); restore it, "
                        "or restart the board with --workspace DIR.")
    return root


def inside_workspace(workspace: Path, value: str | Path) -> Path:
    """The absolute, link-free path of `value` (relative to the workspace, or absolute inside it)."""
    text = str(value).strip()
    if not text or "\x00" in text:
        raise UserError(f"path {text!r}: give a file or folder inside the workspace {workspace}.")
    root = existing_workspace(workspace)
    given = PurePath(text)
    # `..` is refused even where it would land back inside: a path that climbs is a mistake or an attack, never needed.
    if ".." in given.parts:
        raise UserError(f"path {text!r}: '..' is not allowed; give a path inside the workspace {root}.")
    candidate = Path(given) if given.is_absolute() else root / given
    # resolve() follows every link on the way (a link anywhere in the path, to a file or a folder); what it leads to
    # must be inside the workspace too. strict=False: a file the board is about to write need not exist yet.
    resolved = candidate.resolve()
    if resolved != root and root not in resolved.parents:
        raise UserError(f"path {text!r} is outside the workspace {root} (or a link leads there); the board reads "
                        "and writes only inside it.")
    return resolved


def relative_name(workspace: Path, path: Path) -> str:
    """How the board shows a workspace path: relative to the workspace, with '/' separators."""
    return Path(path).resolve().relative_to(Path(workspace).resolve()).as_posix()


DATA_SUFFIXES = (".json", ".jsonl", ".csv", ".tsv", ".parquet", ".txt")
CONFIG_SUFFIXES = (".yaml", ".yml")
# Folders the file pickers never descend into: the board's own records, run folders' checkpoints, environments.
SKIPPED = {".board", ".git", ".venv", "node_modules", "__pycache__"}


def workspace_files(workspace: Path, suffixes: tuple[str, ...], limit: int = 500) -> list[str]:
    """Files of the workspace with one of `suffixes`, as relative names, links leading outside left out."""
    root = Path(workspace).resolve()
    found: list[str] = []
    for path in sorted(root.rglob("*")):
        parts = path.relative_to(root).parts
        if any(p in SKIPPED or p.startswith("checkpoint-") for p in parts[:-1]):
            continue
        if path.suffix.lower() in suffixes and path.is_file():
            try:
                inside_workspace(root, path)
                found.append(path.relative_to(root).as_posix())
            except UserError:
                continue
        if len(found) >= limit:
            break
    return found
