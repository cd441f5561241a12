"""Run reports: PNG plots of a run's logs and one self-contained `report.html` that embeds them.

    finetune-kit report runs/my-run        (also written at the end of every training run)

Reads only the run folder (`log_history.json`, `run_info.json`, `config.yaml`), so any finished run, old or new,
can be reported again. Plots: training / validation loss, learning rate, gradient norm, every other logged metric
over steps (task metrics, DPO rewards, PPO reward / KL ...), and for classifiers the confusion matrix with a
per-class precision / recall / F1 table. PNGs go to `<run>/report/`; the HTML embeds them (one file to share) and
links each PNG by name.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Any

import yaml

from finetune_kit.errors import UserError

PLOTS = "report"
HTML = "report.html"
# Bookkeeping the trainers log alongside the metrics; not worth a curve.
SKIP = ("epoch", "step", "total_flos", "num_tokens", "num_input_tokens_seen", "nonfinite_skipped",
        "nonfinite_skipped_steps")
SKIP_SUFFIX = ("_runtime", "_per_second", "_num_tokens")
LOSS, LR, GRAD = ("loss", "eval_loss"), "learning_rate", "grad_norm"


def _series(history: list[dict[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    """Every numeric, finite key of the logs as (step, value) points; the end-of-training summary row is left out."""
    series: dict[str, list[tuple[float, float]]] = {}
    for position, row in enumerate(history, start=1):
        if "train_runtime" in row:
            continue
        step = row.get("step", position)
        if not isinstance(step, (int, float)) or isinstance(step, bool):  # a hand-edited log: plot by position
            step = position
        for key, value in row.items():
            if key in SKIP or key.endswith(SKIP_SUFFIX) or isinstance(value, bool):
                continue
            if isinstance(value, (int, float)) and math.isfinite(value):
                series.setdefault(key, []).append((step, float(value)))
    return series


def _figure_of(width: float, height: float):
    """A matplotlib Figure drawn straight to a file: no pyplot, so no backend is chosen or changed in the caller's
    process (a notebook keeps its own) and nothing needs closing."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100)


def _line_plot(path: Path, title: str, curves: dict[str, list[tuple[float, float]]]) -> Path:
    fig = _figure_of(6.4, 3.6)
    ax = fig.subplots()
    for name, points in curves.items():
        xs, ys = zip(*points)
        ax.plot(xs, ys, marker="o" if len(points) < 30 else None, markersize=3, label=name)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    if len(curves) > 1:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    return path


def _metric_grid(path: Path, curves: dict[str, list[tuple[float, float]]]) -> Path:
    columns = min(3, len(curves))
    rows = math.ceil(len(curves) / columns)
    fig = _figure_of(4.2 * columns, 2.8 * rows)
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax, (name, points) in zip(axes.flat, curves.items()):
        xs, ys = zip(*points)
        ax.plot(xs, ys, marker="o" if len(points) < 30 else None, markersize=3)
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(curves):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    return path


def _confusion_plot(path: Path, matrix: list[list[int]], names: list[str]) -> Path:
    size = max(3.6, 0.5 * len(names) + 2)
    fig = _figure_of(size, size)
    ax = fig.subplots()
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    peak = max((max(row) for row in matrix), default=0)
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            ax.text(j, i, str(count), ha="center", va="center", color="white" if count > peak / 2 else "black")
    ax.set_title("confusion matrix (held-out)")
    fig.tight_layout()
    fig.savefig(path)
    return path


def make_plots(history: list[dict[str, Any]], per_class: dict | None, folder: Path) -> list[Path]:
    """Write the run's PNGs into `folder`; return their paths in reading order."""
    folder.mkdir(parents=True, exist_ok=True)
    series = _series(history)
    plots = []
    losses = {name: series[name] for name in LOSS if name in series}
    if losses:
        plots.append(_line_plot(folder / "loss.png", "loss", losses))
    if LR in series:
        plots.append(_line_plot(folder / "learning_rate.png", "learning rate", {LR: series[LR]}))
    if GRAD in series:
        plots.append(_line_plot(folder / "grad_norm.png", "gradient norm (before clipping)", {GRAD: series[GRAD]}))
    others = {k: v for k, v in series.items() if k not in (*LOSS, LR, GRAD) and len(v) >= 2}
    evals = {k: v for k, v in others.items() if k.startswith("eval_")}
    trains = {k: v for k, v in others.items() if not k.startswith("eval_")}
    if evals:
        plots.append(_metric_grid(folder / "eval_metrics.png", dict(list(evals.items())[:12])))
    if trains:
        plots.append(_metric_grid(folder / "train_metrics.png", dict(list(trains.items())[:12])))
    if per_class and per_class.get("confusion_matrix"):
        names = [k for k, v in per_class.items() if isinstance(v, dict) and "f1-score" in v
                 and k not in ("macro avg", "weighted avg", "micro avg", "samples avg")]
        matrix = per_class["confusion_matrix"]
        if len(names) != len(matrix):
            names = [str(i) for i in range(len(matrix))]
        plots.append(_confusion_plot(folder / "confusion_matrix.png", matrix, names))
    return plots


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else html.escape(str(value))


def _table(rows: list[list[Any]], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_number(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _figure(path: Path, base: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    link = path.relative_to(base).as_posix()
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(path.name)}">'
            f'<figcaption><a href="{html.escape(link)}">{html.escape(path.name)}</a></figcaption></figure>')


STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}table{border-collapse:collapse;"
         "margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}"
         "figure{display:inline-block;margin:0.5em}img{max-width:100%}pre{background:#f6f6f6;padding:1em;"
         "overflow:auto}")


def write_html(path: Path, title: str, sections: list[tuple[str, str]]) -> Path:
    """One self-contained page: a title and (heading, html) sections."""
    body = "".join(f"<h2>{html.escape(heading)}</h2>{content}" for heading, content in sections if content)
    path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                    f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>")
    return path


def _read_json(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return default
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not valid JSON ({err}); the report cannot be made from it.") from None


def write_report(run_dir: str | Path) -> Path:
    """Plots and report.html for a run folder; the path of the HTML."""
    run = Path(run_dir)
    if not (run / "log_history.json").is_file():
        raise UserError(f"{run} holds no log_history.json: not a finetune_kit run folder (or the run has not "
                        "finished).")
    history = _read_json(run / "log_history.json", [])
    if not isinstance(history, list) or not all(isinstance(entry, dict) for entry in history):
        raise UserError(f"{run / 'log_history.json'} is not a list of logged steps (objects); the report cannot be "
                        "made from it.")
    info = _read_json(run / "run_info.json", {})
    if not isinstance(info, dict):
        raise UserError(f"{run / 'run_info.json'} is not a JSON object; the report cannot be made from it.")
    metrics = info.get("metrics") if isinstance(info.get("metrics"), dict) else {}  # hand-edited files too
    per_class = metrics.get("per_class") if isinstance(metrics.get("per_class"), dict) else None
    plots = make_plots(history, per_class, run / PLOTS)
    final = [[k, v] for k, v in metrics.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)]
    sections = [
        ("Run", _table([["recipe", info.get("recipe", "?")], ["folder", str(run.resolve())],
                        ["git revision", info.get("git_revision") or "?"],
                        ["peak memory (MiB)", json.dumps(info.get("peak_memory_mb"))]], ["", ""])),
        ("Final numbers", _table(final, ["metric", "value"]) if final else ""),
        ("Plots", "".join(_figure(p, run) for p in plots)),
    ]
    if per_class:
        rows = [[name, v["precision"], v["recall"], v["f1-score"], v["support"]]
                for name, v in per_class.items() if isinstance(v, dict) and "f1-score" in v]
        sections.append(("Per class (held-out)", _table(rows, ["class", "precision", "recall", "F1", "support"])))
    if (run / "config.yaml").is_file():
        sections.append(("Config", f"<pre>{html.escape((run / 'config.yaml').read_text())}</pre>"))
    if info.get("versions"):
        sections.append(("Versions", f"<pre>{html.escape(yaml.safe_dump(info['versions']))}</pre>"))
    return write_html(run / HTML, f"Run report: {run.name}", sections)
