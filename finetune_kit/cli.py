"""`finetune-kit`: the command-line entry point.

    finetune-kit recipes                                                   # the recipes and their shipped configs
    finetune-kit init sft_lora_smollm2 my_sft.yaml                         # a shipped config to start from
    finetune-kit train sft --config sft_lora_smollm2 [--key value ...]     # a shipped config's name, or a path
    finetune-kit train --config my_sft.yaml                                # the recipe named by the config
    finetune-kit check --config my_sft.yaml          # exit 0 clean, 1 warnings, 2 errors
    finetune-kit chat --model runs/sft-smollm2-lora
    finetune-kit generate --model runs/sft-smollm2-lora --input prompts.jsonl --output answers.jsonl
    finetune-kit serve --model runs/sft-smollm2-lora --port 8000
    finetune-kit export runs/sft-smollm2-lora --out exports/quokka --dtype bfloat16
    finetune-kit tokenize smollm2-135m-instruct "Hello there" [--chat]
    finetune-kit inspect runs/sft-smollm2-lora
    finetune-kit predict --model runs/text-classification-minilm-sst2 --text "a gorgeous film"
    finetune-kit tune --config text_classification_minilm_sst2_tune --trials 12
    finetune-kit report runs/sft-smollm2-lora                              # report.html + PNG plots
    finetune-kit ui --workspace ~/finetune-work                            # the web board (extra: finetune-kit[ui])
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from finetune_kit import cli_commands, recipes
from finetune_kit.errors import UserError, run_cli
from finetune_kit.model_files import EMBEDDED, read_adapter_config, require_model_reference, require_weights
from finetune_kit.preflight import preflight


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UserError(f"{self.prog}: {message}")


def _generation_args(parser: argparse.ArgumentParser, max_new_tokens: int = 256) -> None:
    parser.add_argument("--model", required=True, help="run folder (adapter or full model), checkpoint or hub id")
    parser.add_argument("--max_new_tokens", type=int, default=max_new_tokens)
    parser.add_argument("--temperature", type=float, default=0.7, help="0 for greedy decoding")
    parser.add_argument("--top_p", type=float, default=0.9)


def _options(args):
    if args.max_new_tokens < 1 or args.temperature < 0 or not 0 < args.top_p <= 1:
        raise UserError("need max_new_tokens >= 1, temperature >= 0 and 0 < top_p <= 1.")
    from finetune_kit.generation import (
        GenerationOptions,  # torch: after the arguments are known to be good
    )

    return GenerationOptions(args.max_new_tokens, args.temperature, args.top_p)


def _build_parser() -> argparse.ArgumentParser:
    from finetune_kit import __version__

    parser = _Parser(prog="finetune-kit", description="Fine-tune pretrained transformer checkpoints (SFT, preference "
                     "and RL stages, encoder and vision tasks) on the Hugging Face stack; `finetune-kit recipes` lists "
                     "what it trains.")
    parser.add_argument("--version", action="version", version=f"finetune-kit {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    commands.add_parser("train", add_help=False, help="run a training recipe: train [RECIPE] --config CONFIG "
                        f"[--key value ...]; RECIPE one of {', '.join(recipes.names())}, default the one the config names")
    commands.add_parser("check", help="check a config, its data and its memory need before training (reads no "
                        "weights); --recipe NAME when the config names none", add_help=False)
    commands.add_parser("recipes", help="the recipes, one line each, with their shipped configs")
    init = commands.add_parser("init", help="copy a shipped config as a starting point: init NAME [PATH]")
    init.add_argument("name", help="a shipped config (see `finetune-kit recipes`)")
    init.add_argument("path", nargs="?", type=Path, help="where to write it (default: ./NAME.yaml)")
    commands.add_parser("tune", help="Optuna search over the `tune:` space of a recipe YAML (--trials N, "
                        "--study_dir D); run again to continue an interrupted study", add_help=False)
    report = commands.add_parser("report", help="plots and report.html for a finished run folder")
    report.add_argument("run_dir")
    chat = commands.add_parser("chat", help="chat in the terminal, answers streamed token by token")
    _generation_args(chat)
    chat.add_argument("--system", help="system prompt")
    gen = commands.add_parser("generate", help="answer every prompt of a jsonl file (field 'prompt'); a seq2seq run "
                              "reads each prompt as a source (its task prefix added)")
    _generation_args(gen)
    gen.add_argument("--input", required=True, type=Path)
    gen.add_argument("--output", required=True, type=Path)
    gen.add_argument("--batch_size", type=int, default=8)
    gen.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    serve = commands.add_parser("serve", help="OpenAI-compatible HTTP server")
    serve.add_argument("--model", required=True)
    serve.add_argument("--host", default="127.0.0.1", help="127.0.0.1 (default) keeps it on this machine")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--max_tokens_limit", type=int, default=1024)
    export = commands.add_parser("export", help="merge adapters into the base and save a standalone model")
    export.add_argument("source")
    export.add_argument("--out", required=True)
    export.add_argument("--dtype", default="float32")
    export.add_argument("--overwrite", action="store_true")
    tok = commands.add_parser("tokenize", help="show how a checkpoint's tokenizer splits a text")
    tok.add_argument("checkpoint")
    tok.add_argument("text")
    tok.add_argument("--chat", action="store_true", help="render the text as a user turn with the chat template")
    predict = commands.add_parser("predict", help="classify / tag new texts, answer questions, or transform texts "
                                  "with a seq2seq run (its task prefix and generation settings)")
    predict.add_argument("--model", required=True)
    predict.add_argument("--text", action="append", help="a text to classify (repeatable)")
    predict.add_argument("--text_pair", action="append", help="second text of a pair (repeatable, same count)")
    predict.add_argument("--image", action="append", help="an image file to classify (repeatable)")
    predict.add_argument("--question", action="append", help="QA models: a question (repeatable, with --context)")
    predict.add_argument("--context", action="append", help="QA models: the passage each question is about")
    predict.add_argument("--input", type=Path, help="jsonl / csv / tsv file of texts")
    predict.add_argument("--output", type=Path, help="jsonl file for the results (default: print)")
    predict.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    predict.add_argument("--text_column", default="text")
    predict.add_argument("--text_pair_column")
    ui = commands.add_parser("ui", help="the web board: set up, launch, watch, compare and chat with runs (needs the "
                             "`ui` extra: pip install \"finetune-kit[ui]\")")
    ui.add_argument("--host", default="127.0.0.1", help="127.0.0.1 (default) keeps it on this machine; any other "
                    "address needs FINETUNE_KIT_UI_TOKEN set, and the board asks for it")
    ui.add_argument("--port", type=int, default=7860)
    ui.add_argument("--workspace", default=".", help="the folder the board reads and writes (configs, data, runs); "
                    "nothing outside it")
    inspect = commands.add_parser("inspect", help="what a checkpoint is and which recipes fit it")
    inspect.add_argument("checkpoint")
    inspect.add_argument("--json", action="store_true")
    return parser


def _main(argv: list[str] | None) -> None:
    args, rest = _build_parser().parse_known_args(argv)
    if args.command == "train":  # the recipe's name, when given, comes first; the rest are the recipe's arguments
        named = rest.pop(0) if rest and not rest[0].startswith("-") else None
        if {"-h", "--help", "--help-all"} & set(rest):
            from finetune_kit.recipe_help import recipe_help, recipes_help

            return print(recipe_help(recipes.get(named).name, "--help-all" in rest) if named else recipes_help())
        row = recipes.choose(named, rest)
        preflight(row, rest)  # what needs no library, named before trl / transformers load
        return row.load().main(rest)
    if args.command in ("check", "tune") and {"-h", "--help"} & set(rest):
        return print(CHECK_HELP if args.command == "check" else _tune_doc())
    if args.command == "check":
        from finetune_kit.check import check

        raise SystemExit(check(rest))
    if args.command == "tune":
        from finetune_kit.tune import tune

        return tune(rest)
    if rest:
        raise UserError(f"finetune-kit {args.command}: unrecognized arguments: {' '.join(rest)}")
    if args.command in ("chat", "generate", "serve"):
        # Everything checkable without weights (and without torch) first: the prompts file, the output path, the
        # batch size, the port, then the generation options.
        prompts = cli_commands.read_prompts(args.input) if args.command == "generate" else None
        if args.command == "generate":
            cli_commands.require_output_file(args.output, "--output", args.input, args.overwrite)
            if args.batch_size < 1:
                raise UserError(f"--batch_size must be a positive integer, got {args.batch_size}.")
        if args.command == "serve" and not (0 < args.port < 65536 and args.max_tokens_limit >= 1):
            raise UserError(f"serve: --port must be in 1-65535 (got {args.port}) and --max_tokens_limit >= 1 "
                            f"(got {args.max_tokens_limit}).")
        if args.model not in EMBEDDED:  # a missing path, a hub id offline, a broken adapter or cut-short weights:
            require_model_reference(args.model)  # named before torch loads
            if Path(args.model).expanduser().is_dir():
                read_adapter_config(Path(args.model).expanduser())
            require_weights(args.model, args.model)
        options = _options(args) if args.command != "serve" else None
        from finetune_kit.models import is_seq2seq, load_for_inference, require_generative

        if not (args.command == "generate" and is_seq2seq(args.model)):  # generate also runs seq2seq models
            require_generative(args.model)
        model, tokenizer = load_for_inference(args.model)
    if args.command == "ui":
        from finetune_kit.ui.app import serve_board

        return serve_board(args.host, args.port, args.workspace)
    if args.command == "recipes":
        _list_recipes()
    elif args.command == "init":
        _init(args.name, args.path)
    elif args.command == "chat":
        from finetune_kit.chat import chat_loop

        chat_loop(model, tokenizer, options, system=args.system)
    elif args.command == "generate":
        cli_commands.generate(model, tokenizer, prompts, options, args)
    elif args.command == "serve":
        from finetune_kit.serve import serve

        # The model id clients see: the run folder's name (runs/quokka -> quokka), or the hub id / embedded name.
        local = Path(args.model).expanduser()
        serve(model, tokenizer, local.resolve().name if local.exists() else args.model, args.host, args.port,
              args.max_tokens_limit)
    elif args.command == "export":
        from finetune_kit.export import export_model

        print(f"exported to {export_model(args.source, args.out, args.dtype, args.overwrite)}")
    elif args.command == "tokenize":
        from finetune_kit.inspect_model import print_tokens, tokenize_text
        from finetune_kit.models import load_tokenizer

        print_tokens(tokenize_text(load_tokenizer(args.checkpoint), args.text, chat=args.chat))
    elif args.command == "predict":
        cli_commands.predict(args)
    elif args.command == "report":
        from finetune_kit.report import write_report

        print(f"report: {write_report(args.run_dir)}")
    elif args.command == "inspect":
        from finetune_kit.inspect_model import describe, print_summary

        summary = describe(args.checkpoint)
        print(json.dumps(summary, indent=2)) if args.json else print_summary(summary)


CHECK_HELP = """usage: finetune-kit check --config CONFIG [--recipe RECIPE] [--key value ...]

Everything `train` would refuse, found before any weights load: every key (the same checks as train), every data
row, the chat template's loss mask, token lengths and truncation, LoRA targets against the model's modules, the
checkpoint's files, and a peak-memory estimate against the memory available. Exit 0 clean, 1 warnings, 2 errors."""


def _tune_doc() -> str:
    import importlib.util

    spec = importlib.util.find_spec("finetune_kit.tune")  # its docstring, without importing optuna / transformers
    source = open(spec.origin).read()
    return source.split('"""')[1].replace("`finetune-kit tune`: ", "usage: finetune-kit tune ... : ", 1)


def _list_recipes() -> None:
    width = max(len(name) for name in recipes.names())
    shipped = recipes.configs_by_recipe()
    for row in recipes.RECIPES:
        print(f"{row.name:<{width}}  {row.summary}")
        for config in shipped.get(row.name, []):
            print(f"{'':<{width}}    --config {config}")
    print("\nfinetune-kit init <config> [path] copies one to edit; finetune-kit train <recipe> --config <config or path>")


# The keys a user edits first in a copied config (those the config has), with what to put there.
FIRST_KEYS = {"model_name_or_path": "your checkpoint: a hub id, a local folder or a .gguf file",
              "dataset_name": "your data: a local file / folder or a hub dataset id",
              "output_dir": "where the run is written", "reward_model": "your reward-model run folder"}


def _init(name: str, path: Path | None) -> None:
    from finetune_kit.files import write_atomic
    from finetune_kit.yaml_config import config_path, read_yaml_config

    source = config_path(name)
    if source.parent != recipes.CONFIGS_DIR:
        raise UserError(f"init: '{name}' is not a shipped config; one of: {', '.join(recipes.shipped_configs())}.")
    target = path or Path(f"{source.stem}.yaml")
    if target.is_dir():
        target = target / f"{source.stem}.yaml"
    if target.exists():
        raise UserError(f"init: {target} exists; choose another path (nothing was written).")
    text, keys = source.read_text(), read_yaml_config(source)
    recipe = recipes.recipe_named_by(source)
    if recipes.RECIPE_KEY not in keys:  # the copy keeps its recipe whatever it is renamed to
        text = f"{recipes.RECIPE_KEY}: {recipe}\n" + text
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(target, text)
    print(f"wrote {target} (recipe {recipe}). Edit first:")
    for key, what in FIRST_KEYS.items():
        if key in keys:
            print(f"  {key}: {keys[key]!r}  <- {what}")
    print(f"then: finetune-kit check --config {target} && finetune-kit train --config {target}")


def main(argv: list[str] | None = None) -> None:
    run_cli(_main, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
