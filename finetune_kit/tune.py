"""`finetune-kit tune`: an Optuna study over a search space declared in the recipe's own YAML.

    finetune-kit tune --config text_classification_minilm_sst2_tune --trials 12 \
        [--timeout_minutes 30] [--study_dir D] [--key value ...: overrides for every trial]

The YAML is a normal recipe config plus a `tune:` block (training ignores it):

    tune:
      metric: accuracy          # a validation metric: eval_<metric> as the recipe logs it (loss, accuracy,
      direction: maximize       #   f1_macro, rewards/accuracies, ...)
      trials: 12                # default for --trials: the study's total, also when resumed
      pruning: {startup_trials: 3, warmup_evals: 1}   # median pruning; `pruning: false` turns it off
      space:
        learning_rate: {low: 1.0e-5, high: 1.0e-3, log: true}   # float (int when both bounds are ints)
        per_device_train_batch_size: [16, 32, 64]                # a list: one of these
        lora_r: {low: 4, high: 32, step: 4}

Every trial runs the recipe in this process with the sampled keys as command-line overrides, its own seed
(`seed + trial number`) and run folder (`<study_dir>/trial-<n>`). Each evaluation reports `eval_<metric>` to Optuna,
which prunes a trial whose value is worse than the median of earlier trials at the same step; the objective is the
last evaluation. Trials live in `<study_dir>/study.db` (SQLite): run the same command again to continue an
interrupted study (a trial cut off mid-run is marked failed and does not count). At the end: a table of trials,
`<study_dir>/best.yaml` (the best trial's full config, ready to run), `tune_report.html` with the objective across
trials and parameter importances.
"""

from __future__ import annotations

import argparse
import gc
import math
import warnings
from pathlib import Path
from typing import Any

import yaml
from transformers import TrainerCallback

from finetune_kit import recipes
from finetune_kit.config import (
    TUNE_KEY,
    ConfigError,
    _yaml_value_to_args,
    known_keys,
    parse_config,
    read_yaml_config,
    unknown_key_message,
)
from finetune_kit.data import split_seed
from finetune_kit.errors import UserError
from finetune_kit.guards import TrainingDiverged
from finetune_kit.trainer_setup import driver_callbacks

STUDY_NAME = "finetune-kit"
TUNE_KEYS = {"metric", "direction", "trials", "pruning", "space"}


def parse_space(space: Any, known: list[str], where: str) -> dict[str, dict[str, Any]]:
    """Validate the `space` mapping: each key a config key, each value a list or a {low, high, log, step} range."""
    if not isinstance(space, dict) or not space:
        raise ConfigError(f"{where}: tune.space must be a mapping of config keys to ranges or lists of choices.")
    parsed = {}
    for key, spec in space.items():
        if key not in known:
            raise ConfigError(unknown_key_message(str(key), known, f"tune.space in {where}"))
        if key in ("output_dir", "seed", "split_seed"):
            raise ConfigError(f"{where}: tune.space key '{key}' is set per trial by tune; leave it out.")
        if isinstance(spec, list):
            if not spec:
                raise ConfigError(f"{where}: tune.space.{key}: an empty list of choices.")
            parsed[key] = {"choices": spec}
            continue
        if not isinstance(spec, dict) or not {"low", "high"} <= spec.keys() or spec.keys() - {"low", "high", "log",
                                                                                              "step"}:
            raise ConfigError(f"{where}: tune.space.{key} must be a list of choices or {{low, high[, log][, step]}}, "
                              f"got {spec!r}.")
        low, high = _number(spec["low"]), _number(spec["high"])
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or low >= high:
            raise ConfigError(f"{where}: tune.space.{key}: low and high must be numbers with low < high, got "
                              f"{low!r} and {high!r}.")
        if spec.get("log") and low <= 0:
            raise ConfigError(f"{where}: tune.space.{key}: a log range needs low > 0, got {low}.")
        parsed[key] = {"low": low, "high": high, "log": bool(spec.get("log", False)), "step": spec.get("step"),
                       "int": isinstance(low, int) and isinstance(high, int)}
    return parsed


def _number(value: Any) -> Any:
    """YAML reads 1e-5 (no dot) as a string; take it as the number it means."""
    if isinstance(value, str):
        try:
            return int(value) if value.strip().lstrip("+-").isdigit() else float(value)
        except ValueError:
            return value
    return value


def parse_tune(block: Any, where: str, known: list[str]) -> dict[str, Any]:
    if not isinstance(block, dict):
        raise ConfigError(f"{where}: no `tune:` block (metric, direction, space); see finetune_kit/tune.py.")
    unknown = sorted(block.keys() - TUNE_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown tune key '{unknown[0]}' (known: {', '.join(sorted(TUNE_KEYS))}).")
    if "metric" not in block:
        raise ConfigError(f"{where}: tune.metric is missing (e.g. accuracy, loss, f1_macro).")
    direction = block.get("direction", "maximize")
    if direction not in ("maximize", "minimize"):
        raise ConfigError(f"{where}: tune.direction must be maximize or minimize, got {direction!r}.")
    pruning = block.get("pruning", {})
    if pruning is not False and (not isinstance(pruning, dict) or pruning.keys() - {"startup_trials", "warmup_evals"}):
        raise ConfigError(f"{where}: tune.pruning must be false or {{startup_trials, warmup_evals}}, got {pruning!r}.")
    trials = block.get("trials")
    if trials is not None and (not isinstance(trials, int) or isinstance(trials, bool) or trials < 1):
        raise ConfigError(f"{where}: tune.trials must be a whole number >= 1, got {trials!r}.")
    return {"metric": str(block["metric"]).removeprefix("eval_"), "direction": direction,
            "trials": trials, "pruning": pruning, "space": parse_space(block.get("space"), known, where)}


def sample(trial, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    params = {}
    for key, spec in space.items():
        if "choices" in spec:
            params[key] = trial.suggest_categorical(key, spec["choices"])
        elif spec["int"]:
            params[key] = trial.suggest_int(key, spec["low"], spec["high"], step=spec["step"] or 1, log=spec["log"])
        else:
            params[key] = trial.suggest_float(key, spec["low"], spec["high"], step=spec["step"], log=spec["log"])
    return params


class ReportToTrial(TrainerCallback):
    """Hands every evaluation's eval_<metric> to the Optuna trial; stops the trial when Optuna prunes it."""

    def __init__(self, trial, metric: str):
        self.trial, self.key, self.last, self.evaluations = trial, f"eval_{metric}", None, 0

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        import optuna

        value = (metrics or {}).get(self.key)
        if value is None or not math.isfinite(value):
            return
        self.last, self.evaluations = float(value), self.evaluations + 1
        self.trial.report(self.last, step=self.evaluations)
        if self.trial.should_prune():
            why = (f"{self.key} = {self.last:.4g} at evaluation {self.evaluations} (training step "
                   f"{state.global_step}): worse than the median of earlier trials there")
            print(f"trial {self.trial.number} pruned: {why}")
            raise optuna.TrialPruned(why)


def _mark_interrupted(study) -> None:
    """Trials left RUNNING were cut off by a killed process (a study runs one trial at a time): fail them."""
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
        study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
        print(f"trial {trial.number} was cut off by an interrupted run: marked failed, not counted")


def _counted(study) -> int:
    from optuna.trial import TrialState

    return sum(1 for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
               or (t.state == TrialState.FAIL and not t.user_attrs.get("interrupted")))


def tune(argv: list[str]) -> dict[str, Any]:
    """Run (or continue) a study; returns the best trial's number, value, params and paths."""
    import optuna

    parser = argparse.ArgumentParser(prog="finetune-kit tune", add_help=False)
    parser.add_argument("--config", required=True)
    parser.add_argument("--trials", type=int)
    parser.add_argument("--recipe")
    parser.add_argument("--study_dir")
    parser.add_argument("--timeout_minutes", type=float, help="start no new trial after this long (a search budget)")
    args, overrides = parser.parse_known_args(argv)
    row = recipes.choose(args.recipe, ["--config", args.config], default="sft")
    config_type = row.config_type()
    raw = read_yaml_config(args.config)
    settings = parse_tune(raw.get(TUNE_KEY), args.config, known_keys(config_type))
    base = parse_config(config_type, ["--config", args.config, *overrides])  # the base config must be valid
    for key, spec in settings["space"].items():  # and every edge of the space, before a study or trial starts
        for value in spec.get("choices") or (spec["low"], spec["high"]):
            try:
                parse_config(config_type, ["--config", args.config, *overrides, *_yaml_value_to_args(key, value)])
            except ConfigError as err:
                raise ConfigError(f"{args.config}: tune.space.{key} allows {value!r}, which the config refuses "
                                  f"({err}); narrow the space.") from None
    total = args.trials or settings["trials"]
    if not total or total < 1:
        raise ConfigError("the number of trials: --trials N (>= 1) or tune.trials in the YAML.")
    study_dir = Path(args.study_dir or f"{base.training.output_dir}-tune")
    study_dir.mkdir(parents=True, exist_ok=True)
    signature = {"config": str(recipes.config_path(args.config).resolve()), "metric": settings["metric"],
                 "direction": settings["direction"], "space": sorted(settings["space"])}

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruning = settings["pruning"]
    # Steps are evaluation counts (1, 2, ...), so trials with other batch sizes compare at their k-th evaluation;
    # `warmup_evals` evaluations are free, pruning starts with the next.
    pruner = optuna.pruners.NopPruner() if pruning is False else optuna.pruners.MedianPruner(
        n_startup_trials=pruning.get("startup_trials", 3), n_warmup_steps=pruning.get("warmup_evals", 1) + 1)
    study = _open_study(study_dir / "study.db", settings["direction"], pruner, base.training.seed)
    if study.user_attrs.get("signature", signature) != signature:
        raise UserError(f"{study_dir} holds a study of another config or search space "
                        f"({study.user_attrs['signature']}); choose another --study_dir.")
    study.set_user_attr("signature", signature)
    _mark_interrupted(study)
    done = _counted(study)
    remaining = total - done
    print(f"study {study_dir}: {done} trial(s) done, {max(remaining, 0)} to run (of {total}); objective "
          f"eval_{settings['metric']} ({settings['direction']})")
    module = row.load()

    def objective(trial) -> float:
        params = sample(trial, settings["space"])
        run_dir = study_dir / f"trial-{trial.number}"
        seed = base.training.seed + trial.number
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("seed", seed)
        trial.set_user_attr("split_seed", split_seed(base.data, base.training.seed))
        print(f"\n=== trial {trial.number} ({_counted(study) + 1}/{total}): {params}")
        # Own seed per trial, the same held-out rows for all: split_seed stays the base config's.
        argv_trial = ["--config", args.config, *overrides, "--output_dir", str(run_dir), "--seed", str(seed),
                      "--split_seed", str(split_seed(base.data, base.training.seed))]
        for key, value in params.items():
            argv_trial += _yaml_value_to_args(key, value)
        reporter = ReportToTrial(trial, settings["metric"])
        try:
            with driver_callbacks(reporter):
                metrics = module.main(argv_trial)
        finally:
            gc.collect()
            _empty_cuda_cache()
        value = metrics.get(f"eval_{settings['metric']}", reporter.last)
        if value is None:
            raise UserError(f"trial {trial.number}: the run reported no eval_{settings['metric']}; tune needs a "
                            "validation set (eval_split_ratio or eval_dataset_name) and eval_strategy steps or "
                            "epoch, and tune.metric one of the metrics it logs.")
        held_out = {k: v for k, v in metrics.items() if k.startswith("test_") and isinstance(v, (int, float))}
        if held_out:
            trial.set_user_attr("test_metrics", held_out)
        return float(value)

    if remaining > 0:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.optimize(objective, n_trials=remaining, catch=(TrainingDiverged,),
                           timeout=args.timeout_minutes * 60 if args.timeout_minutes else None)
    return finish_study(study, raw, study_dir, settings)


def _open_study(db: Path, direction: str, pruner, seed: int):
    """The study stored in `db`, created when absent. A file sqlite cannot read is named and left as it is, never
    replaced by a new study: its trials are the user's record of the search, and may be recoverable."""
    import optuna
    from sqlalchemy.exc import DatabaseError

    storage = f"sqlite:///{db.resolve()}"
    try:
        # The sampler's seed moves on with the trials already stored: a resumed study must not redraw the random
        # start-up configurations of the trials it already has.
        exists = db.is_file() and STUDY_NAME in optuna.get_all_study_names(storage)
        stored = len(optuna.load_study(study_name=STUDY_NAME, storage=storage).trials) if exists else 0
        return optuna.create_study(study_name=STUDY_NAME, storage=storage, direction=direction, load_if_exists=True,
                                   pruner=pruner, sampler=optuna.samplers.TPESampler(seed=seed + stored))
    except DatabaseError as err:
        raise UserError(f"{db}: not a readable study database ({err.orig}); it was left as it is: move it away to "
                        "start a new study there, or give another --study_dir.") from None


def _empty_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _trial_rows(study) -> list[list[Any]]:
    rows = []
    for t in study.trials:
        test = t.user_attrs.get("test_metrics", {})
        rows.append([t.number, t.state.name.lower(), t.value if t.value is not None else "",
                     ", ".join(f"{k}={_short(v)}" for k, v in t.params.items()),
                     ", ".join(f"{k}={_short(v)}" for k, v in test.items() if "runtime" not in k
                               and "per_second" not in k)])
    return rows


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _plots(study, study_dir: Path) -> list[Path]:
    """The objective across trials and the parameter importances, as PNGs (what Optuna can draw for this study)."""
    import matplotlib.pyplot as plt  # Optuna draws through pyplot; each figure is closed once saved
    import optuna.visualization.matplotlib as ovm
    paths = []
    for name, draw in (("objective_by_trial.png", ovm.plot_optimization_history),
                       ("param_importances.png", ovm.plot_param_importances)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = draw(study)
        except (ValueError, RuntimeError) as err:  # e.g. importances need two finished trials that differ
            print(f"{name}: not drawn ({err})")
            continue
        figure = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        figure.set_size_inches(7, 4)
        figure.tight_layout()
        figure.savefig(study_dir / name, dpi=100)
        plt.close(figure)
        paths.append(study_dir / name)
    return paths


def finish_study(study, raw: dict[str, Any], study_dir: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """Print the trials, write best.yaml and tune_report.html; the best trial's summary."""
    from finetune_kit.report import _figure, _table, write_html

    header = ["trial", "state", f"eval_{settings['metric']}", "parameters", "held-out (test_*)"]
    rows = _trial_rows(study)
    print("\n" + " | ".join(header))
    for row in rows:
        print(" | ".join(_short(v) for v in row))
    try:
        best = study.best_trial
    except ValueError:
        raise UserError(f"no trial of the study in {study_dir} completed; see the trials above.") from None
    config = {k: v for k, v in raw.items() if k != TUNE_KEY}
    config.update(best.params)
    config.update({"seed": best.user_attrs["seed"], "split_seed": best.user_attrs["split_seed"],
                   "output_dir": str(study_dir / "best-run")})
    best_yaml = study_dir / "best.yaml"
    best_yaml.write_text(f"# Best trial {best.number} of {study_dir}: eval_{settings['metric']} = {best.value:.6g}; "
                         f"its run folder: {best.user_attrs['run_dir']}\n" + yaml.safe_dump(config, sort_keys=False))
    plots = _plots(study, study_dir)
    html = write_html(study_dir / "tune_report.html", f"Tuning report: {study_dir.name}", [
        ("Best trial", _table([["trial", best.number], [f"eval_{settings['metric']}", best.value],
                               ["run folder", best.user_attrs["run_dir"]], ["config", str(best_yaml)],
                               *[[k, v] for k, v in best.params.items()]], ["", ""])),
        ("Trials", _table(rows, header)),
        ("Plots", "".join(_figure(p, study_dir) for p in plots)),
    ])
    print(f"\nbest: trial {best.number}, eval_{settings['metric']} = {best.value:.6g}, run folder "
          f"{best.user_attrs['run_dir']}\nready-to-run config: {best_yaml}\nreport: {html}")
    return {"number": best.number, "value": best.value, "params": best.params, "run_dir": best.user_attrs["run_dir"],
            "best_yaml": str(best_yaml), "report": str(html), "test_metrics": best.user_attrs.get("test_metrics", {}),
            "trials": len(study.trials)}
