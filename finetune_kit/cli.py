"""`finetune-kit`: the command-line entry point.

    finetune-kit train sft --config recipes/configs/sft_lora_smollm2.yaml [--key value ...]
    finetune-kit check --config recipes/configs/sft_lora_smollm2.yaml     # exit 0 clean, 1 warnings, 2 errors
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from finetune_kit.errors import UserError, run_cli

# Recipes are readable scripts in the source tree (recipes/<name>.py), run here exactly as `python recipes/x.py`.
RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"


def available_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.py") if not p.name.startswith("_"))


def load_recipe(name: str):
    path = RECIPES_DIR / f"{name}.py"
    if not path.is_file():
        raise UserError(f"unknown recipe '{name}'; available: {', '.join(available_recipes()) or 'none found'}.")
    spec = importlib.util.spec_from_file_location(f"finetune_kit_recipe_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(prog="finetune-kit", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="run a training recipe", add_help=False)
    train.add_argument("recipe", help=f"one of: {', '.join(available_recipes())}")
    commands.add_parser("check", help="check a config and its data before training (reads no weights)",
                        add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.command == "train":
        load_recipe(args.recipe).main(rest)
    elif args.command == "check":
        from finetune_kit.check import check_sft

        raise SystemExit(check_sft(rest))


def main(argv: list[str] | None = None) -> None:
    run_cli(_main, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
