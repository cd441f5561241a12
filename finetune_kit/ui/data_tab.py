"""The Data tab: a workspace file's first rows as the recipe will see them, and `finetune-kit check` on it.

Rows go through the recipe's own reader and normaliser (format detection included), then: for SFT, the chat
template's rendering with the part that carries loss marked (the same spans the recipe masks with,
data.chat.assistant_spans); for preference data, prompt / chosen / rejected; for text classification, the label
counts after the task's own validation.
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
    if recipe == "text_classification":
        from finetune_kit.preflight import config_view
        from finetune_kit.tasks.classification import labelled_examples

        cfg = config_view(recipes.key_index(row)["fields"], {"dataset_name": str(path)})
        _, examples, problem, names = labelled_examples(cfg)
        counts = collections.Counter(str(e["label"]) for e in examples["train"])
        table = pd.DataFrame([{"label": k, "rows": v} for k, v in counts.most_common()])
        return f"{len(examples['train'])} rows, {problem}, labels {', '.join(map(str, names or []))}:", None, table
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
        config = {"recipe": recipe_name, "model_name_or_path": model_name, "dataset_name": data_file or "",
                  "output_dir": ".board/check-run"}
        path = workspace / ".board" / "check" / "data-check.yaml"
        try:
            form.validate(workspace, recipe_name, config, path)
        except UserError as err:
            return f"error: {err}"
        return full_check(workspace, recipe_name, path)

    preview_btn.click(on_preview, [recipe, data, model, count], [status, marked, table])
    check_btn.click(on_check, [recipe, data, model], report)
    refresh_btn.click(lambda: gr.update(choices=workspace_files(workspace, DATA_SUFFIXES)), None, data)
