"""The Runs tab: the workspace's runs in a table, one run watched (progress, curves, log tail), Stop / Resume,
its report, export of a LoRA run, and several runs' curves on one chart.

A timer refreshes what is on screen every second from the files the runs write (finetune_kit.ui.run_view); no
state lives in the page.
"""

from __future__ import annotations

import html
import subprocess
import sys
from pathlib import Path

import gradio as gr
import pandas as pd

from finetune_kit.errors import UserError
from finetune_kit.ui import run_view
from finetune_kit.ui.jobs import job_id
from finetune_kit.ui.paths import existing_workspace, inside_workspace

REFRESH_S = 1.0
LOSS_KEYS, LR_KEYS = ("loss", "eval_loss"), ("learning_rate",)


def command_result(done: subprocess.CompletedProcess) -> str:
    """A CLI command's outcome in one line: its last stdout line when it succeeded ("exported to ..."), its one-line
    error (stderr) when not. A library's warning on stderr (bitsandbytes with `kernels`, offline) must not stand in
    for the result."""
    if done.returncode:
        lines = (done.stderr.strip() or done.stdout.strip()).splitlines()
        return f"**error:** {lines[-1] if lines else f'exited {done.returncode}'}"
    lines = done.stdout.strip().splitlines()
    return lines[-1] if lines else "done"


def _frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["step", "value", "series"])


def _curve_summary(rows: list[dict]) -> str:
    loss = [r for r in rows if r["series"] == "loss"]
    if not loss:
        return "no loss logged yet"
    return f"{len(loss)} loss points, last {loss[-1]['value']:.4g} at step {loss[-1]['step']:g}"


def build(workspace: Path, queue) -> dict:
    """The tab's components; returns what the page does when it opens (watch the newest run)."""
    root = workspace.resolve()

    def run_names() -> list[str]:
        return [row[0] for row in run_view.runs_table(root, queue)]

    def watched(run: str | None, drawn=None):
        """Progress, loss plot, learning-rate plot, metric chart, curve summary, log tail of the watched run, and
        what the metric chart now shows (a session's state: the chart is redrawn only when its points change)."""
        if not run:
            return "pick a run", _frame([]), _frame([]), None, "", "", None
        folder = inside_workspace(root, run)
        progress, log, state = run_view.board_paths(root, queue, run)
        rows_of_run = run_view.history(folder, progress)
        rows = run_view.curve_rows({run: rows_of_run})
        # Every series the chart may ever show is in its first data (a null point where none is logged yet): gradio's
        # LinePlot keeps the series of its first data and would never draw eval_loss appearing at the first eval.
        loss = [r for r in rows if r["series"] in LOSS_KEYS] + [{"step": 0, "value": None, "series": k}
                                                               for k in LOSS_KEYS]
        lr = [r for r in rows if r["series"] in LR_KEYS]
        metrics = run_view.metric_series(rows_of_run)
        points = (run, tuple((k, len(v)) for k, v in metrics.items()))
        chart = gr.update() if points == drawn else run_view.metrics_figure(rows_of_run)
        text = run_view.progress_text(progress, state) if progress else ""
        status = f"**{state}**" if state else ""
        tail = run_view.log_tail(log) if log else "(not launched from this board: no log here)"
        summary = "; ".join([_curve_summary(rows)] + [f"{k} {len(v)} points, last {v[-1][1]:.4g}"
                                                      for k, v in metrics.items()])
        return " · ".join(filter(None, [status, text])) or "finished outside the board", _frame(loss), _frame(lr), \
            chart, summary, tail, points

    def refresh(run, drawn):
        # The run picker's choices follow the workspace, its value only the user: a tick that left before a pick
        # would otherwise put the old value back.
        try:
            existing_workspace(root)
            table = run_view.runs_table(root, queue)
            names = [row[0] for row in table]
            shown = watched(run if run in names else None, drawn)
        except UserError as err:  # the workspace deleted under the board, a run folder gone mid-read: say so
            return (gr.update(), gr.update(), gr.update(), f"**error:** {err}", gr.update(), gr.update(), gr.update(),
                    gr.update(), gr.update(), drawn)
        return (pd.DataFrame(table, columns=run_view.COLUMNS), gr.update(choices=names), gr.update(choices=names),
                *shown)

    timer = gr.Timer(REFRESH_S)
    table = gr.Dataframe(pd.DataFrame([], columns=run_view.COLUMNS), label="runs", interactive=False,
                         elem_id="runs-table", wrap=True)
    with gr.Row():
        run = gr.Dropdown(run_names(), label="watch run", elem_id="run-select", scale=3)
        stop_btn = gr.Button("Stop", variant="stop", elem_id="stop-button", scale=1)
        resume_btn = gr.Button("Resume", elem_id="resume-button", scale=1)
        report_btn = gr.Button("Open report", elem_id="report-button", scale=1)
        export_btn = gr.Button("Export (merge LoRA)", elem_id="export-button", scale=1)
    action = gr.Markdown(elem_id="run-action-status")
    progress = gr.Markdown(elem_id="run-progress")
    summary = gr.Markdown(elem_id="curve-summary")
    with gr.Row():
        loss_plot = gr.LinePlot(_frame([]), x="step", y="value", color="series", title="loss", elem_id="loss-plot")
        lr_plot = gr.LinePlot(_frame([]), x="step", y="value", color="series", title="learning rate",
                              elem_id="lr-plot")
    metric_plot = gr.Plot(label="evaluation metrics and rewards", elem_id="metric-plot")
    drawn = gr.State(None)
    log = gr.Textbox(label="log tail", lines=12, max_lines=12, autoscroll=True, interactive=False, elem_id="log-tail")
    with gr.Accordion("Report", open=True):
        report_file = gr.File(label="report.html", elem_id="report-file")
        report_view = gr.HTML(elem_id="report-view")
    with gr.Accordion("Compare runs", open=True):
        with gr.Row():
            compare = gr.Dropdown(run_names(), multiselect=True, label="runs", elem_id="compare-runs", scale=3)
            key = gr.Dropdown(["loss", "eval_loss", "learning_rate", "grad_norm"], value="loss", label="curve",
                              allow_custom_value=True, elem_id="compare-key", scale=1)
        compare_plot = gr.Plot(label="compare", elem_id="compare-plot")
        compare_summary = gr.Markdown(elem_id="compare-summary")

    watched_outputs = [progress, loss_plot, lr_plot, metric_plot, summary, log, drawn]
    timer.tick(refresh, [run, drawn], [table, run, compare, *watched_outputs], show_progress="hidden")

    def on_pick(name):
        try:
            return watched(name)
        except UserError as err:
            return f"**error:** {err}", _frame([]), _frame([]), None, "", "", None

    run.change(on_pick, run, watched_outputs, show_progress="hidden")

    def job_of(name: str | None) -> str:
        if not name:
            raise UserError("pick a run first.")
        jid = job_id(name)
        if jid not in queue.jobs:
            raise UserError(f"{name} was not launched from this board; stop / resume it where it was started.")
        return jid

    def acting(action, says: str):
        """A button's handler: `action(job id)` on the watched run, and what happened (or the one-line error)."""
        def handler(name):
            try:
                job = action(job_of(name))
                return f"{job.output_dir}: {job.state} ({says})"
            except UserError as err:
                return f"**error:** {err}"
        return handler

    on_stop = acting(queue.stop, "a checkpoint is saved at the end of the current step")
    on_resume = acting(queue.resume, "resuming from the newest complete checkpoint")

    def on_report(name):
        from finetune_kit.report import write_report

        try:
            folder = inside_workspace(root, name or "")
            page = folder / "report.html"
            if not page.is_file():
                page = write_report(folder)  # a run that finished without one, or an older run
        except UserError as err:
            return f"**error:** {err}", None, ""
        # srcdoc keeps the report's own styles inside its frame; its plots are embedded, so nothing is fetched.
        frame = (f'<iframe title="run report" srcdoc="{html.escape(page.read_text(), quote=True)}" '
                 'style="width:100%;height:720px;border:1px solid #ddd"></iframe>')
        return f"report of {name}", str(page), frame

    def on_export(name):
        try:
            folder = inside_workspace(root, name or "")
            if not (folder / "adapter_config.json").is_file():
                raise UserError(f"{name} holds no LoRA adapter (adapter_config.json): nothing to merge.")
            out = inside_workspace(root, f"exports/{folder.name}")
        except UserError as err:
            return f"**error:** {err}"
        done = subprocess.run([sys.executable, "-m", "finetune_kit.cli", "export", str(folder), "--out", str(out),
                               "--overwrite"], cwd=root, capture_output=True, text=True, timeout=1800)
        return command_result(done)

    stop_btn.click(on_stop, run, action)
    resume_btn.click(on_resume, run, action)
    report_btn.click(on_report, run, [action, report_file, report_view])
    export_btn.click(on_export, run, action)

    def on_compare(names, curve):
        histories = {}
        for name in names or []:
            progress_file, _, _ = run_view.board_paths(root, queue, name)
            try:
                histories[name] = run_view.history(inside_workspace(root, name), progress_file)
            except UserError as err:
                return None, f"**error:** {err}"
        counts = {name: len(run_view.curve_rows({name: h}, (curve,))) for name, h in histories.items()}
        summary = ", ".join(f"{name}: {curve} ({n} points)" for name, n in counts.items()) or "pick runs to compare"
        return run_view.compare_figure(histories, curve), summary

    gr.on([compare.change, key.change], on_compare, [compare, key], [compare_plot, compare_summary])

    def newest_run():
        names = run_names()
        return gr.update(choices=names, value=names[0] if names else None)

    return {"run": run, "newest_run": newest_run}
