"""The Data tab: a workspace file's first rows as the recipe will see them, and `finetune-kit check` on it.

Rows go through the recipe's own reader and normaliser (format detection included), then: for SFT, the chat
template's rendering with the part that carries loss marked (the same spans the recipe masks with,
data.chat.assistant_spans); for preference data, prompt / chosen / rejected; for text, token and image classification,
the label counts after the task's own validation.
"""

from __future__ import annotations

import collections
from functools import lru_cache
from pathlib import Path

import gradio as gr
import pandas as pd

from finetune_kit import recipes
from finetune_kit.errors import UserError
from finetune_kit.ui import form
from finetune_kit.ui.paths import DATA_SUFFIXES, inside_workspace, workspace_files
from finetune_kit.ui.setup_tab import full_check

TRAINED = "trained (loss)"


@lru_cache(maxsize=2)
def _tokenizer(model: str):
    from finetune_kit.models import load_tokenizer

    return load_tokenizer(model)


def _text(turns) -> str:
    return turns if isinstance(turns, str) else "\n".join(f"{t['role']}: {t['content']}" for t in turns)


def marked_rows(rows: list[dict], tokenizer) -> list[tuple[str, str | None]]:
    """HighlightedText pieces of normalised SFT rows: loss-carrying text labelled TRAINED, a rule between rows."""
    from finetune_kit.data.chat import assistant_spans

    pieces: list[tuple[str, str | None]] = []
    for number, row in enumerate(rows, start=1):
        pieces.append((f"\n── row {number} ──\n", None))
        if "messages" in row:
            text, spans = assistant_spans(tokenizer, row["messages"])
            at = 0
            for start, end in spans:
                pieces += [(text[at:start], None), (text[start:end], TRAINED)]
                at = end
            pieces.append((text[at:], None))
        elif "completion" in row:  # trl trains the completion only
            pieces += [(_text(row["prompt"]), None), (_text(row["completion"]), TRAINED)]
        else:
            pieces.append((row.get("text", ""), TRAINED))
    return [p for p in pieces if p[0]]


LABELLED = ("text_classification", "token_classification", "image_classification")


def label_counts(recipe: str, path: Path):
    """(status, table of label -> count) of a classification file, read and validated by the recipe's own reader
    (the one its preflight runs): rows per class; for token classification, tokens per tag."""
    from finetune_kit.preflight import config_view

    cfg = config_view(recipes.key_index(recipes.get(recipe))["fields"], {"dataset_name": str(path)})
    counts: collections.Counter = collections.Counter()
    if recipe == "token_classification":
        from finetune_kit.tasks.tokens import tagged_rows

        rows, _, _, names = tagged_rows(cfg)
        counts.update(tag for row in rows for tag in row["tags"])
        status, unit = f"{len(rows)} rows, {len(names)} tags", "tokens"
    elif recipe == "image_classification":
        from finetune_kit.tasks.images import labelled_images

        _, examples, names = labelled_images(cfg)
        counts.update(names[e["label"]] for e in examples)
        status, unit = f"{len(examples)} images, {len(names)} classes", "images"
    else:
        from finetune_kit.tasks.classification import MULTI, REGRESSION, labelled_examples

        _, examples, problem, names = labelled_examples(cfg)
        train = examples["train"]
        if problem == REGRESSION:
            scores = [e["label"] for e in train]
            return f"{len(train)} rows, regression: scores {min(scores):g} to {max(scores):g}", None, None
        for example in train:  # the labels are ids (single) or 0/1 vectors (multi) by now: counted by name
            counts.update([n for n, on in zip(names, example["label"]) if on] if problem == MULTI
                          else [names[example["label"]]])
        status, unit = f"{len(train)} rows, {problem}, {len(names)} labels", "rows"
    table = pd.DataFrame([{"label": k, unit: v} for k, v in counts.most_common()])
    return f"{status}; {unit} per label:", None, table


def check_report(workspace: Path, recipe: str, data: str, model: str) -> str:
    """`finetune-kit check` of the recipe's defaults with this data file and model: the Check button's report."""
    config = {"recipe": recipe, "model_name_or_path": model, "dataset_name": data or "",
              "output_dir": ".board/check-run"}
    path = workspace / ".board" / "check" / "data-check.yaml"
    try:
        form.validate(workspace, recipe, config, path)
    except UserError as err:
        return f"error: {err}"
    return full_check(workspace, recipe, path)


def preview(workspace: Path, recipe: str, data: str, model: str, count: int):
    """(status, highlighted SFT rows, table of rows) for the first `count` rows of `data`."""
    from finetune_kit.config_plain import DataArguments
    from finetune_kit.data import ROW_NORMALISERS, load_rows

    row = recipes.get(recipe)
    path = inside_workspace(workspace, data)
    if row.rows is not None:
        rows = load_rows(str(path), DataArguments(dataset_name=str(path)), normaliser=ROW_NORMALISERS[row.rows])
        shown = rows[:count]
        if row.rows == "sft":
            form.confine_paths(workspace, {"model_name_or_path": model})
            return f"{len(rows)} rows, every row valid; first {len(shown)} as trained:", \
                marked_rows(shown, _tokenizer(model)), None
        table = pd.DataFrame([{k: _text(v) if isinstance(v, list) else v for k, v in r.items()} for r in shown])
        return f"{len(rows)} rows, every row valid ({row.rows}):", None, table
    if recipe in LABELLED:
        return label_counts(recipe, path)
    from finetune_kit.data.readers import read_rows

    rows = read_rows(str(path))
    return f"{len(rows)} rows (read as stored; the recipe validates them when it starts):", None, \
        pd.DataFrame([r for _, r in rows[:count]])


def build(workspace: Path) -> None:
    files = workspace_files(workspace, DATA_SUFFIXES)
    with gr.Row():
        recipe = gr.Dropdown(recipes.names(), value="sft", label="recipe", elem_id="data-recipe")
        data = gr.Dropdown(files, value=files[0] if files else None, label="data file (workspace)",
                           elem_id="data-file", allow_custom_value=True)
        model = gr.Textbox("smollm2-135m-instruct", label="model (its tokenizer and chat template)",
                           elem_id="data-model")
        count = gr.Number(5, precision=0, minimum=1, maximum=100, label="rows", elem_id="data-count")
    with gr.Row():
        preview_btn = gr.Button("Preview", variant="primary", elem_id="preview-button")
        check_btn = gr.Button("Check (finetune-kit check)", elem_id="data-check-button")
        refresh_btn = gr.Button("Refresh file list", elem_id="data-refresh")
    status = gr.Markdown(elem_id="data-status")
    marked = gr.HighlightedText(label="rendered rows (highlighted: the part that carries loss)",
                                color_map={TRAINED: "green"}, combine_adjacent=True, elem_id="data-marked")
    table = gr.Dataframe(label="rows", interactive=False, wrap=True, elem_id="data-table")
    report = gr.Textbox(label="check report", lines=10, interactive=False, elem_id="data-check-report")

    def on_preview(recipe_name, data_file, model_name, n):
        try:
            text, pieces, frame = preview(workspace, recipe_name, data_file or "", model_name, int(n or 5))
        except UserError as err:
            return f"**error:** {str(err).splitlines()[0]}", None, None
        return text, pieces, frame

    def on_check(recipe_name, data_file, model_name):
        return check_report(workspace, recipe_name, data_file, model_name)

    preview_btn.click(on_preview, [recipe, data, model, count], [status, marked, table])
    check_btn.click(on_check, [recipe, data, model], report)
    refresh_btn.click(lambda: gr.update(choices=workspace_files(workspace, DATA_SUFFIXES)), None, data)
