"""Reward sources named in a config: Python functions (`module:function` or `path/to/file.py:function`) found without
running them and a reward model's folder or hub id (the preflight, before any library loads, and the RL recipes
first), functions loaded (the recipes, `check`). Imports nothing heavy."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from pathlib import Path

from finetune_kit.errors import UserError


def locate_reward_function(spec: str) -> tuple[str, str]:
    """(module or file, function name) of `spec`, whose file or module must exist; nothing is imported."""
    module_name, _, name = spec.rpartition(":")
    if not module_name or not name:
        raise UserError(f"reward function '{spec}': write it as module:function or path/to/file.py:function.")
    if module_name.endswith(".py"):
        if not Path(module_name).is_file():
            raise UserError(f"reward function '{spec}': file not found: {module_name}")
        return module_name, name
    try:
        found = importlib.util.find_spec(module_name)  # imports the parent packages of a dotted name
    except (ImportError, ValueError):  # a parent package that is missing, or a malformed name
        found = None
    except Exception as err:  # noqa: BLE001 - a parent package's own code can fail in any way
        raise UserError(f"reward function '{spec}': importing {module_name} failed ({type(err).__name__}: {err}).") \
            from None
    if found is None:
        raise UserError(f"reward function '{spec}': no module named {module_name} on the Python path (or give "
                        "path/to/file.py:function).")
    return module_name, name


def load_reward_function(spec: str) -> Callable:
    """`module:function` or `file.py:function` -> the function."""
    module_name, name = locate_reward_function(spec)
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            loader_spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(loader_spec)
            loader_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - a user module can fail to import in any way
        raise UserError(f"reward function '{spec}': importing {module_name} failed ({type(err).__name__}: {err}).") \
            from None
    function = getattr(module, name, None)
    if not callable(function):
        raise UserError(f"reward function '{spec}': {module_name} has no function '{name}'.")
    return function


def require_reward_sources(reward_model: str | None, functions: list[str] | None) -> None:
    """Every reward function's file or module, and the reward model's folder or hub id, exist: errors name the key."""
    from finetune_kit.model_files import EMBEDDED, require_model_reference

    for spec in functions or []:
        locate_reward_function(spec)
    if reward_model and reward_model not in EMBEDDED:
        try:
            require_model_reference(reward_model)
        except UserError as err:
            raise UserError(f"reward_model: {err}") from None
