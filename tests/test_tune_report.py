"""`finetune-kit tune` (Optuna over a YAML search space) and run reports (PNG plots + report.html)."""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys

import pytest
import yaml

from conftest import run_recipe, write_config, write_jsonl
from test_classification import sentiment_rows


def _tune_config(tmp_path, model_dir, **tune) -> str:
    data = write_jsonl(tmp_path / "sentiment.jsonl", sentiment_rows(160))
    cfg = {"model_name_or_path": str(model_dir), "dataset_name": str(data), "output_dir": str(tmp_path / "run"),
           "eval_split_ratio": 0.25, "num_train_epochs": 4, "eval_strategy": "epoch", "save_strategy": "no",
           "per_device_train_batch_size": 16, "learning_rate": 1e-3, "max_length": 16, "logging_steps": 2,
           "report_to": "none", "disable_tqdm": True, "seed": 0,
           "tune": {"metric": "accuracy", "direction": "maximize", "pruning": {"startup_trials": 1, "warmup_evals": 1},
                    "space": {"learning_rate": {"low": 1.0e-5, "high": 5.0e-3, "log": True},
                              "per_device_train_batch_size": [8, 16]}, **tune}}
    return write_config(tmp_path / "text_classification_tune.yaml", cfg)


def _study(study_dir):
    import optuna

    return optuna.load_study(study_name="finetune-kit", storage=f"sqlite:///{(study_dir / 'study.db').resolve()}")


def test_study_prunes_only_below_median_writes_a_runnable_best_yaml_and_resumes(tmp_path, tiny_bert_dir):
    from optuna.trial import TrialState

    from finetune_kit.tune import tune

    config = _tune_config(tmp_path, tiny_bert_dir)
    study_dir = tmp_path / "study"
    tune(["--config", config, "--trials", "2", "--study_dir", str(study_dir)])
    study = _study(study_dir)
    assert [t.number for t in study.trials] == [0, 1]
    study.ask()  # a trial left RUNNING, as a killed `tune` leaves it
    best = tune(["--config", config, "--trials", "4", "--study_dir", str(study_dir)])

    trials = _study(study_dir).trials
    assert [t.number for t in trials] == [0, 1, 2, 3, 4]  # the count continues
    assert trials[2].state == TrialState.FAIL and trials[2].user_attrs["interrupted"]
    counted = [t for t in trials if t.number != 2]
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in counted)
    assert len({t.user_attrs["seed"] for t in counted}) == 4  # a seed per trial
    for trial in counted:
        evals = [e["eval_accuracy"] for e in json.loads((tmp_path / "study" / f"trial-{trial.number}" /
                                                         "log_history.json").read_text()) if "eval_accuracy" in e] \
            if trial.state == TrialState.COMPLETE else None
        reported = [trial.intermediate_values[k] for k in sorted(trial.intermediate_values)]
        if trial.state == TrialState.COMPLETE:
            assert trial.value == evals[-1] and reported == evals  # objective = the last validation accuracy
            continue
        # Pruned only after the warmup, when its best accuracy so far is strictly below the median of the earlier
        # completed trials at the same evaluation (Optuna's MedianPruner rule).
        step = max(trial.intermediate_values)
        earlier = [t.intermediate_values[step] for t in trials if t.number < trial.number and
                   t.state == TrialState.COMPLETE and step in t.intermediate_values]
        assert step >= 2 and earlier and max(reported) < statistics.median(earlier)

    assert best["value"] == max(t.value for t in counted if t.state == TrialState.COMPLETE)
    best_yaml = yaml.safe_load((study_dir / "best.yaml").read_text())
    assert "tune" not in best_yaml and best_yaml["learning_rate"] == best["params"]["learning_rate"]
    metrics = run_recipe("text_classification", ["--config", str(study_dir / "best.yaml"), "--num_train_epochs", "1"])
    assert metrics["eval_accuracy"] >= 0 and (study_dir / "best-run" / "run_info.json").is_file()
    html = (study_dir / "tune_report.html").read_text()
    assert "objective_by_trial.png" in html and f"trial-{best['number']}" in html


def test_tune_config_errors_name_the_key(tmp_path, tiny_bert_dir):
    from finetune_kit.config import ConfigError
    from finetune_kit.tune import tune

    for tune_block, needle in ((dict(space={"learning_rat": [1e-3]}), "learning_rat"),
                               (dict(space={"learning_rate": {"low": 0.0, "high": 1e-3, "log": True}}), "low > 0"),
                               (dict(direction="up"), "tune.direction"),
                               (dict(metrc="accuracy"), "metrc"),
                               (dict(trials="many"), "tune.trials"),
                               # a space edge the config itself refuses: once found by trial 0's traceback, a study
                               # database already written
                               (dict(space={"learning_rate": {"low": -1.0, "high": 1e-3}}),
                                r"tune\.space\.learning_rate allows -1\.0, which the config refuses \(.*learning_rate "
                                "must be positive"),
                               (dict(space={"per_device_train_batch_size": [8, 0]}),
                                r"tune\.space\.per_device_train_batch_size allows 0, which the config refuses")):
        config = _tune_config(tmp_path, tiny_bert_dir, **tune_block)
        with pytest.raises(ConfigError, match=needle):
            tune(["--config", config, "--trials", "1", "--study_dir", str(tmp_path / "never")])
    assert not (tmp_path / "never").exists()


def test_training_ignores_the_tune_block(tmp_path, tiny_bert_dir):
    from finetune_kit.config import parse_config
    from finetune_kit.config_tasks import TextClassificationConfig

    cfg = parse_config(TextClassificationConfig, ["--config", _tune_config(tmp_path, tiny_bert_dir)])
    assert cfg.training.learning_rate == 1e-3


@pytest.fixture(scope="module")
def reported_run(tmp_path_factory, tiny_bert_dir):
    tmp = tmp_path_factory.mktemp("report")
    data = write_jsonl(tmp / "rows.jsonl", sentiment_rows(96))
    cfg = {"model_name_or_path": str(tiny_bert_dir), "dataset_name": str(data), "output_dir": str(tmp / "run"),
           "eval_split_ratio": 0.25, "num_train_epochs": 3, "eval_strategy": "epoch", "save_strategy": "no",
           "per_device_train_batch_size": 16, "learning_rate": 3e-3, "max_length": 16, "logging_steps": 2,
           "report_to": "none", "disable_tqdm": True, "seed": 0}
    run_recipe("text_classification", ["--config", write_config(tmp / "c.yaml", cfg)])
    return tmp / "run"


def test_a_finished_run_has_plots_and_an_html_report_with_its_numbers(reported_run):

    names = {p.name for p in (reported_run / "report").glob("*.png")}
    assert names == {"loss.png", "learning_rate.png", "grad_norm.png", "eval_metrics.png", "confusion_matrix.png"}
    assert all((reported_run / "report" / n).stat().st_size > 5000 for n in names)
    html = (reported_run / "report.html").read_text()
    info = json.loads((reported_run / "run_info.json").read_text())
    assert f"{info['metrics']['train_loss']:.4g}" in html  # the final numbers come from the run's records
    assert html.count("data:image/png;base64,") == len(names)  # embedded: one file to share
    assert all(f'href="report/{n}"' in html for n in names)
    # Regenerated from the folder alone: the same plots, the same numbers.
    (reported_run / "report.html").unlink()
    shutil.rmtree(reported_run / "report")
    out = subprocess.run([sys.executable, "-m", "finetune_kit.cli", "report", str(reported_run)], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    assert (reported_run / "report.html").read_text().count("data:image/png;base64,") == len(names)


def test_report_false_writes_none_and_a_non_run_folder_is_a_clear_error(tmp_path, tiny_bert_dir):
    data = write_jsonl(tmp_path / "rows.jsonl", sentiment_rows(32))
    config = write_config(tmp_path / "c.yaml", {"model_name_or_path": str(tiny_bert_dir), "dataset_name": str(data),
                                                "output_dir": str(tmp_path / "run"), "max_steps": 2,
                                                "report": False, "report_to": "none", "save_strategy": "no"})
    run_recipe("text_classification", ["--config", config])
    assert (tmp_path / "run" / "run_info.json").is_file() and not (tmp_path / "run" / "report.html").exists()
    out = subprocess.run([sys.executable, "-m", "finetune_kit.cli", "report", str(tmp_path)], capture_output=True,
                         text=True)
    assert out.returncode == 2 and "no log_history.json" in out.stderr and "Traceback" not in out.stderr


BROWSER = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(BROWSER is None, reason="no headless Chromium here (Debian package `chromium`); optional")
def test_report_renders_its_images_in_a_browser(reported_run, tmp_path):
    from PIL import Image

    shot = tmp_path / "shot.png"
    subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={shot}", "--window-size=1200,2400", (reported_run / "report.html").as_uri()],
                   capture_output=True, timeout=120, check=True)
    image = Image.open(shot).convert("RGB")
    assert image.size == (1200, 2400)
    # matplotlib's default line / colormap blues appear only where the plot images were drawn, not in the page text.
    blue = sum(1 for r, g, b in image.getdata() if b > 150 and r < 90 and 90 < g < 160)
    assert blue > 500, blue


def test_a_tracker_that_is_not_installed_is_named_with_its_extra(tmp_path):
    import importlib.util

    from finetune_kit.config import ConfigError, parse_config
    from finetune_kit.config_decoder import SFTRecipeConfig

    missing = next((t for t in ("wandb", "mlflow", "trackio", "tensorboard") if importlib.util.find_spec(t) is None),
                   None)
    if missing is None:
        pytest.skip("every tracker is installed here")
    data = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "completion": "b"}])
    with pytest.raises(ConfigError, match=rf"report_to: {missing} .*finetune-kit\[{missing}\]"):
        parse_config(SFTRecipeConfig, ["--dataset_name", str(data), "--output_dir", str(tmp_path / "o"),
                                       "--report_to", missing])


def test_split_seed_keeps_the_held_out_rows_whatever_the_training_seed(tmp_path):
    from finetune_kit.config import DataArguments
    from finetune_kit.data import load_sft_datasets

    data = write_jsonl(tmp_path / "d.jsonl", [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(40)])

    def held_out(seed, split_seed=None):
        args = DataArguments(dataset_name=str(data), eval_split_ratio=0.25, split_seed=split_seed)
        return load_sft_datasets(args, seed=seed)[1]["prompt"]

    assert held_out(1) != held_out(2)  # without it the split follows the seed
    assert held_out(1, split_seed=7) == held_out(2, split_seed=7) == held_out(7)


def test_a_resumed_study_does_not_redraw_the_configurations_it_has(tmp_path, tiny_bert_dir, monkeypatch):
    """Resuming reseeds the sampler past the stored trials (same seed again = the same random start-up draws)."""
    import optuna

    from finetune_kit import tune as tune_module

    drawn = []

    class Recipe:  # stands in for the recipe: reports the sampled learning rate as the metric, trains nothing
        @staticmethod
        def main(argv):
            rate = float(argv[argv.index("--learning_rate") + 1])
            drawn.append(rate)
            return {"eval_accuracy": rate}

    from finetune_kit import recipes

    monkeypatch.setattr(recipes.Recipe, "load", lambda row: Recipe)
    config = _tune_config(tmp_path, tiny_bert_dir, pruning=False)
    study_dir = str(tmp_path / "study")
    tune_module.tune(["--config", config, "--trials", "3", "--study_dir", study_dir])
    tune_module.tune(["--config", config, "--trials", "6", "--study_dir", study_dir])
    assert len(drawn) == 6 and len(set(drawn)) == 6
    assert len(optuna.load_study(study_name="finetune-kit", storage=f"sqlite:///{tmp_path / 'study' / 'study.db'}")
               .trials) == 6


def test_progress_bars_are_quiet_in_logs_and_can_be_asked_for(tmp_path, monkeypatch):
    from finetune_kit.config_decoder import SFTTrainingArguments

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert SFTTrainingArguments(output_dir=str(tmp_path)).disable_tqdm is True  # a CI log: no redrawn bars
    assert SFTTrainingArguments(output_dir=str(tmp_path), disable_tqdm=False).disable_tqdm is False
    monkeypatch.setitem(sys.modules, "ipykernel", object())
    assert SFTTrainingArguments(output_dir=str(tmp_path)).disable_tqdm is False  # a notebook: bars
    monkeypatch.delitem(sys.modules, "ipykernel")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert SFTTrainingArguments(output_dir=str(tmp_path)).disable_tqdm is False  # a terminal: bars
