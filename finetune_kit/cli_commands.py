"""What `finetune-kit generate` and `finetune-kit predict` do once the command line is parsed (finetune_kit.cli):
read and check the inputs, load the model, write the answers."""

from __future__ import annotations

import json
from pathlib import Path

from finetune_kit.errors import UserError


def read_prompts(path: Path) -> list[str]:
    from finetune_kit.data.readers import read_file

    if not path.is_file():
        raise UserError(f"input file not found: {path}")
    prompts = []
    for where, row in read_file(path):
        if not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
            raise UserError(f"{where}: field 'prompt' must be a non-empty string.")
        prompts.append(row["prompt"])
    if not prompts:  # before the model loads: an empty answers file after minutes of loading helps nobody
        raise UserError(f"{path}: no rows; give a file with one {{\"prompt\": ...}} per line.")
    return prompts


def require_output_file(path: Path, flag: str, source: Path | None = None, overwrite: bool = False) -> None:
    """An output file's path must name a file in a writable folder, not the input file (`source`), and no file that
    exists unless `overwrite` (results of an earlier run are not replaced unasked): checked before a model loads."""
    import os

    if source is not None and path.exists() and source.exists() and path.resolve() == source.resolve():
        raise UserError(f"{flag} {path} is the input file; writing the results there would replace it. Give another "
                        "path (nothing was written).")
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder; give a file path (nothing was written).")
    if path.exists() and not overwrite:
        raise UserError(f"{flag} {path} exists; give another path, or --overwrite to replace it (nothing was "
                        "written).")
    folder = next(p for p in (path.parent, *path.parent.parents) if p.exists())
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: {folder} is not a writable folder (nothing was written).")


def generate(model, tokenizer, prompts: list[str], options, args) -> None:
    from functools import partial

    from tqdm.auto import tqdm

    from finetune_kit.files import atomic_output
    from finetune_kit.generation import generate_batch

    answer_batch = partial(generate_batch, options=options)
    if model.config.is_encoder_decoder:  # no chat template: the prompt is the source, with the run's task prefix
        from finetune_kit.tasks.seq2seq import generate_texts

        settings = run_config(args.model)
        answer_batch = partial(generate_texts, prefix=settings.get("source_prefix"),
                               max_source_length=settings.get("max_source_length"), **options.generate_kwargs())
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(args.output) as out:  # an existing file is replaced only by a complete new one
        for start in tqdm(range(0, len(prompts), args.batch_size), desc="Generating", unit="batch"):
            batch = prompts[start:start + args.batch_size]
            for prompt, answer in zip(batch, answer_batch(model, tokenizer, batch)):
                out.write(json.dumps({"prompt": prompt, "answer": answer}) + "\n")


def predict(args) -> None:
    from finetune_kit.data.readers import read_file
    from finetune_kit.models import load_for_inference
    from finetune_kit.predict import classify, tag

    if args.image:
        return predict_images(args)
    if args.question:
        return predict_answers(args)
    if bool(args.text) == bool(args.input):
        raise UserError("predict: give either --text / --image (one or more) or --input FILE.")
    texts, pairs = args.text or [], args.text_pair
    if args.input:
        if not args.input.is_file():
            raise UserError(f"input file not found: {args.input}")
        rows = read_file(args.input)
        if not rows:
            raise UserError(f"{args.input}: no rows; give a file with one {{\"{args.text_column}\": ...}} per line.")
        for where, row in rows:
            for column in filter(None, (args.text_column, args.text_pair_column)):
                if not isinstance(row.get(column), str) or not row[column].strip():
                    raise UserError(f"{where}: field '{column}' must be non-empty text.")
        texts = [row[args.text_column] for _, row in rows]
        pairs = [row[args.text_pair_column] for _, row in rows] if args.text_pair_column else None
    if pairs is not None and len(pairs) != len(texts):
        raise UserError(f"predict: {len(texts)} texts but {len(pairs)} text pairs.")
    if args.output:
        require_output_file(args.output, "--output", args.input, args.overwrite)
    model, tokenizer = load_for_inference(args.model, merge=True)
    kind = type(model).__name__
    if "TokenClassification" in kind:
        results = [{"text": t, **r} for t, r in zip(texts, tag(model, tokenizer, texts))]
    elif model.config.is_encoder_decoder and "SequenceClassification" not in kind:
        from finetune_kit.predict import transduce

        outputs = transduce(model, tokenizer, texts, run_config(args.model))
        results = [{"text": t, **r} for t, r in zip(texts, outputs)]
    else:
        results = [{"text": t, **r} for t, r in zip(texts, classify(model, tokenizer, texts, pairs))]
    lines = [json.dumps(r) for r in results]
    if args.output:
        from finetune_kit.files import write_atomic

        args.output.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(args.output, "\n".join(lines) + "\n")
    else:
        print("\n".join(lines))


def run_config(model: str) -> dict:
    """The resolved config a run folder recorded (config.yaml); {} for a checkpoint that is no run."""
    from finetune_kit.files import read_yaml_mapping

    return read_yaml_mapping(Path(model) / "config.yaml") or {}


def run_null_threshold(model: str) -> float:
    """The null threshold a question_answering run chose or was given (its config.yaml), else 0.0."""
    value = run_config(model).get("null_score_threshold")
    return float(value) if isinstance(value, (int, float)) else 0.0


def predict_answers(args) -> None:
    from finetune_kit.models import load_for_inference
    from finetune_kit.predict import answer

    if not args.context or len(args.context) not in (1, len(args.question)):
        raise UserError("predict: give one --context for all questions, or one per --question.")
    contexts = args.context * len(args.question) if len(args.context) == 1 else args.context
    model, tokenizer = load_for_inference(args.model, merge=True)
    threshold = run_null_threshold(args.model)
    for result in answer(model, tokenizer, args.question, contexts, null_score_threshold=threshold):
        print(json.dumps(result))


def predict_images(args) -> None:
    from finetune_kit.models import load_for_inference
    from finetune_kit.predict import classify_images
    from finetune_kit.tasks.images import check_images

    check_images([(path, {"image": path}) for path in args.image])
    model, processor = load_for_inference(args.model)
    for path, result in zip(args.image, classify_images(model, processor, args.image)):
        print(json.dumps({"image": path, **result}))
