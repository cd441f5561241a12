"""The Chat tab: talk to a finished run (or a base model), answers streamed; a predict box for classifier runs.

Generation goes through the same functions as `finetune-kit chat` (generation.stream_reply), with its settings and
their defaults read from the CLI's own parser, so the two cannot drift apart. One model is kept loaded at a time.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from finetune_kit.errors import UserError
from finetune_kit.model_files import EMBEDDED
from finetune_kit.ui import run_view
from finetune_kit.ui.paths import inside_workspace

_LOADED: dict[str, tuple] = {}
_LOCK = threading.Lock()
CLASSIFIER_RECIPES = ("text_classification", "token_classification")


def chat_defaults() -> SimpleNamespace:
    """`finetune-kit chat`'s generation settings and their defaults (max_new_tokens, temperature, top_p)."""
    from finetune_kit.cli import _build_parser

    return _build_parser().parse_args(["chat", "--model", "-"])


def loaded(workspace: Path, model: str):
    """(model, tokenizer) of a workspace run folder or an embedded checkpoint, loaded once."""
    if not model:
        raise UserError("pick a run (or a base model) first.")
    reference = model if model in EMBEDDED else str(inside_workspace(workspace, model))
    with _LOCK:
        if reference not in _LOADED:
            from finetune_kit.models import load_for_inference

            _LOADED.clear()  # one model at a time: the board shares the machine with training
            _LOADED[reference] = load_for_inference(reference)
        return _LOADED[reference]


def _content(message) -> str:
    content = message["content"] if isinstance(message, dict) else message
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content)


def chat_choices(workspace: Path, queue) -> list[str]:
    finished = [row[0] for row in run_view.runs_table(workspace, queue) if row[4] == "finished"
                and row[1] not in CLASSIFIER_RECIPES]
    return finished + sorted(EMBEDDED)


def build(workspace: Path, queue) -> None:
    from finetune_kit.cli import _options

    defaults = chat_defaults()
    with gr.Row():
        model = gr.Dropdown(chat_choices(workspace, queue), label="run or base model", allow_custom_value=True,
                            elem_id="chat-model", scale=4)
        refresh = gr.Button("Refresh", elem_id="chat-refresh", scale=1)
    with gr.Row():
        max_new_tokens = gr.Number(defaults.max_new_tokens, precision=0, label="max_new_tokens",
                                   elem_id="chat-max-new-tokens")
        temperature = gr.Number(defaults.temperature, label="temperature (0: greedy)", elem_id="chat-temperature")
        top_p = gr.Number(defaults.top_p, label="top_p", elem_id="chat-top-p")
        system = gr.Textbox(label="system prompt", elem_id="chat-system")
    refresh.click(lambda: gr.update(choices=chat_choices(workspace, queue)), None, model)

    def respond(message, history, model_name, new_tokens, temp, top, system_prompt):
        from finetune_kit.generation import stream_reply

        try:
            options = _options(SimpleNamespace(max_new_tokens=int(new_tokens or 0), temperature=float(temp or 0),
                                               top_p=float(top or 0)))
            lm, tokenizer = loaded(workspace, model_name)
            turns = [{"role": "system", "content": system_prompt}] if system_prompt else []
            turns += [{"role": m["role"], "content": _content(m)} for m in history]
            turns.append({"role": "user", "content": _content(message)})
            text = ""
            for piece in stream_reply(lm, tokenizer, turns, options):
                text += piece
                yield text
        except UserError as err:
            yield f"error: {str(err).splitlines()[0]}"

    gr.ChatInterface(respond, additional_inputs=[model, max_new_tokens, temperature, top_p, system],
                     chatbot=gr.Chatbot(elem_id="chat-answers", height=360),
                     textbox=gr.Textbox(placeholder="Type a message", elem_id="chat-input", submit_btn=True),
                     fill_height=False, api_name="chat")

    with gr.Accordion("Classifier runs: predict", open=False):
        runs = [row[0] for row in run_view.runs_table(workspace, queue) if row[1] in CLASSIFIER_RECIPES]
        classifier = gr.Dropdown(runs, label="classifier run", allow_custom_value=True, elem_id="predict-model")
        text = gr.Textbox(label="text (one per line)", lines=3, elem_id="predict-text")
        predict_btn = gr.Button("Predict", elem_id="predict-button")
        result = gr.Code(language="json", label="predictions", elem_id="predict-result")

    predict_btn.click(lambda name, texts: predictions(workspace, name, texts), [classifier, text], result)


def predictions(workspace: Path, name: str, texts: str | None) -> str:
    """The predict box's answer as JSON: a label (and score) per line for a text classifier, entities per line for a
    token classifier; a bad run or empty input as {"error": ...} (one line)."""
    from finetune_kit.predict import classify, tag

    try:
        lm, tokenizer = loaded(workspace, name)
        lines = [t for t in (texts or "").splitlines() if t.strip()]
        if not lines:
            raise UserError("give one or more texts, one per line.")
        tagger = "TokenClassification" in type(lm).__name__
        results = tag(lm, tokenizer, lines) if tagger else classify(lm, tokenizer, lines)
        return json.dumps([{"text": t, **r} for t, r in zip(lines, results)], indent=1)
    except UserError as err:
        return json.dumps({"error": str(err).splitlines()[0]})
