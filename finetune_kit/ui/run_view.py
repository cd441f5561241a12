"""What the board shows of runs: the workspace's run folders as table rows, their curves, progress and log tail.

Everything is read from files, so a run started from a terminal shows up like one started from the board: a run
folder is any folder of the workspace holding run_info.json (finished) or checkpoint-N folders (stopped or killed),
plus the board's own jobs (queued, running). Curves come from the board's progress lines while a run trains, else
from what the recipe wrote (log_history.json, or the newest checkpoint's trainer_state.json), turned into series
by the same function the HTML report uses.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from finetune_kit.files import read_yaml_mapping
from finetune_kit.report import _series
from finetune_kit.runs import RUN_INFO, newest_complete_checkpoint
from finetune_kit.ui.jobs import BOARD_DIR, JobQueue
from finetune_kit.ui.paths import SKIPPED

COLUMNS = ["run", "recipe", "model", "data", "status", "metrics", "duration"]
# Final metrics worth a column: losses and the task metrics the recipes report (accuracy, f1, reward accuracy ...).
_METRIC_HINTS = ("loss", "accuracy", "f1", "exact", "reward")


def run_folders(workspace: Path, depth: int = 3) -> list[Path]:
    """Folders of the workspace that hold a run: run_info.json or a checkpoint-N folder."""
    root = Path(workspace).resolve()
    found = set()
    for pattern in ("run_info.json", "checkpoint-*/trainer_state.json"):
        for level in range(depth):
            for hit in root.glob("*/" * level + pattern):
                run = hit.parent if pattern == RUN_INFO else hit.parent.parent
                parts = run.relative_to(root).parts
                if run != root and not any(p in SKIPPED for p in parts):
                    found.add(run)
    return sorted(found)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _run_config(run: Path, job_config: Path | None) -> dict:
    """The run's recorded config, else the config its job was launched with (a run not yet written), else {}."""
    for path in filter(None, (run / "config.yaml", job_config)):
        if (values := read_yaml_mapping(path)) is not None:
            return values
    return {}


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


def final_metrics(info: dict | None) -> str:
    metrics = (info or {}).get("metrics") or {}
    shown = [f"{k} {v:.4g}" for k, v in metrics.items()
             if isinstance(v, (int, float)) and any(h in k for h in _METRIC_HINTS)]
    return ", ".join(shown[:4])


def runs_table(workspace: Path, queue: JobQueue | None) -> list[list[str]]:
    """One row per run (COLUMNS), the board's jobs first by newest, then other run folders."""
    root = Path(workspace).resolve()
    jobs = {(root / j.output_dir).resolve(): j for j in (queue.jobs.values() if queue else [])}
    rows = []
    for run in sorted(set(jobs) | set(run_folders(root)), key=lambda r: -(jobs[r].created if r in jobs else 0)):
        job = jobs.get(run)
        info = _read_json(run / RUN_INFO)
        cfg = _run_config(run, root / job.config if job else None)
        if job is not None:
            status = job.state + (f" #{queue.position(job.id)}" if job.state == "queued" else "")
            if job.state == "finished" and info is None:
                status = "ended without run_info.json"
        else:
            status = "finished" if info else _stopped_status(run)
        metrics = info.get("metrics", {}) if info else {}
        duration = metrics.get("train_runtime")
        if duration is None and job is not None and job.started:
            duration = (job.ended or time.time()) - job.started
        rows.append([run.relative_to(root).as_posix(), (info or {}).get("recipe") or (job.recipe if job else ""),
                     str(cfg.get("model_name_or_path", "")), str(cfg.get("dataset_name", "")), status,
                     final_metrics(info), _duration(duration)])
    return rows


def _stopped_status(run: Path) -> str:
    """A run folder without run_info.json: resumable only from a checkpoint whose save finished (the one `--resume
    latest` would take); a folder of cut-short checkpoints is not."""
    checkpoint = newest_complete_checkpoint(run)
    return f"stopped (resumable from {checkpoint.name})" if checkpoint else "stopped (no complete checkpoint)"


def progress_events(path: Path) -> list[dict]:
    events = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                continue  # a line being written
    return events


def history(run: Path, progress: Path | None) -> list[dict]:
    """The run's log rows (loss, learning_rate, eval metrics, with their step): live progress lines first."""
    events = progress_events(progress) if progress else []
    logs = [{**e["logs"], "step": e["step"]} for e in events if e.get("event") == "log"]
    if logs:
        return logs
    saved = _read_json(run / "log_history.json")
    if isinstance(saved, list):
        return saved
    checkpoint = newest_complete_checkpoint(run)
    state = _read_json(checkpoint / "trainer_state.json") if checkpoint else None
    return (state or {}).get("log_history", [])


def curve_rows(runs: dict[str, list[dict]], keys: tuple[str, ...] | None = None) -> list[dict]:
    """Long-format rows (step, value, series) for a line plot; series is `run: key` when several runs are drawn."""
    rows = []
    for name, rows_of_run in runs.items():
        for key, points in _series(rows_of_run).items():
            if keys is not None and key not in keys:
                continue
            label = f"{name}: {key}" if len(runs) > 1 else key
            rows += [{"step": step, "value": value, "series": label} for step, value in points]
    return rows


def compare_figure(histories: dict[str, list[dict]], key: str):
    """One matplotlib figure with `key` of each run over steps (gr.Plot shows it). A figure, not gradio's LinePlot:
    that chart keeps the series of its first data and draws no line for a run added to the comparison later."""
    from finetune_kit.report import _figure_of

    fig = _figure_of(8.0, 3.6)
    ax = fig.subplots()
    for name, rows_of_run in histories.items():
        points = _series(rows_of_run).get(key, [])
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o" if len(points) < 30 else None, markersize=3, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel(key)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend()
    fig.tight_layout()
    return fig


# The metric chart: the evaluation metrics a recipe reports (eval_accuracy, eval_f1, eval_reward, ...; eval_loss is on
# the loss chart) and the online-RL quantities logged at every step (PPO's mean reward and KL, the preference losses'
# reward margin and accuracy).
STEP_METRICS = ("reward", "reward_mean", "kl", "rewards/margins", "rewards/accuracies", "policy_loss", "value_loss")


def metric_series(rows_of_run: list[dict]) -> dict[str, list[tuple[float, float]]]:
    """The (step, value) points of each metric the metric chart shows, in a stable order."""
    series = _series(rows_of_run)
    keys = sorted(k for k in series if k.startswith("eval_") and k != "eval_loss")
    keys += [k for k in STEP_METRICS if k in series]
    return {k: series[k] for k in keys}


def metrics_figure(rows_of_run: list[dict], most: int = 4):
    """One small panel per metric (their scales differ), at most `most`; None when nothing is logged yet."""
    from finetune_kit.report import _figure_of

    shown = list(metric_series(rows_of_run).items())[:most]
    if not shown:
        return None
    fig = _figure_of(3.2 * len(shown), 2.8)
    for ax, (key, points) in zip(fig.subplots(1, len(shown), squeeze=False)[0], shown):
        xs, ys = zip(*points)
        ax.plot(xs, ys, marker="o" if len(points) < 30 else None, markersize=3)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def progress_text(progress: Path | None, job_state: str | None, now: float | None = None) -> str:
    """`step 6 / 10 (60%), 1.2 s/step, about 5 s left` from the worker's progress lines."""
    events = progress_events(progress) if progress else []
    steps = [e for e in events if e.get("event") in ("begin", "step")]
    if not steps:
        return "waiting for the first step" if job_state in ("queued", "running") else ""
    begins = [i for i, e in enumerate(steps) if e["event"] == "begin"]
    since = steps[begins[-1]:] if begins else steps  # this attempt only: a resume starts its clock again
    last, first = since[-1], since[0]
    total = last.get("max_steps") or 0
    text = f"step {last['step']} / {total}" + (f" ({100 * last['step'] // total}%)" if total else "")
    done = last["step"] - first["step"]
    if done > 0 and total:
        per_step = (last["time"] - first["time"]) / done
        text += f", {per_step:.2f} s/step"
        if job_state in ("running",):
            left = max(0.0, (total - last["step"]) * per_step - ((now or time.time()) - last["time"]))
            text += f", about {_duration(left)} left"
    return text


def log_tail(path: Path, lines: int = 40) -> str:
    if not path.is_file():
        return ""
    with open(path, "rb") as handle:
        handle.seek(max(0, path.stat().st_size - 64_000))
        text = handle.read().decode(errors="replace")
    return "\n".join(text.replace("\r", "\n").splitlines()[-lines:])


def board_paths(workspace: Path, queue: JobQueue | None, run: str) -> tuple[Path | None, Path | None, str | None]:
    """(progress lines, log, job state) of a run the board launched; Nones for other runs."""
    for job in (queue.jobs.values() if queue else []):
        if job.output_dir == run:
            folder = Path(workspace).resolve() / BOARD_DIR / "jobs" / job.id
            return folder / "progress.jsonl", folder / "train.log", job.state
    return None, None, None
