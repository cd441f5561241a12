"""Cross-field checks every recipe config runs, each a named function of the whole config returning an error message
naming the keys, or None. They run in `parse_config`, before any model or dataset is touched; each is tested on its own.
"""

from __future__ import annotations


def quantization_is_exclusive(cfg) -> str | None:
    if cfg.model.load_in_4bit and cfg.model.load_in_8bit:
        return "load_in_4bit and load_in_8bit are both true; choose one."
    return None


def quantization_needs_adapter(cfg) -> str | None:
    # Quantized base weights cannot take gradient updates; only adapters on top of them can (QLoRA).
    if (cfg.model.load_in_4bit or cfg.model.load_in_8bit) and not cfg.model.use_peft:
        return "load_in_4bit / load_in_8bit train adapters only: set use_peft: true."
    return None


def dora_needs_peft(cfg) -> str | None:
    if cfg.model.use_dora and not cfg.model.use_peft:
        return "use_dora: true needs use_peft: true."
    return None


def dataset_is_given(cfg) -> str | None:
    if not cfg.data.dataset_name:
        return "dataset_name is required (a local file or folder, or a hub dataset id)."
    return None


def eval_split_ratio_in_range(cfg) -> str | None:
    if not 0.0 <= cfg.data.eval_split_ratio < 1.0:
        return f"eval_split_ratio must be in [0, 1), got {cfg.data.eval_split_ratio}."
    if cfg.data.eval_split_ratio and cfg.data.eval_dataset_name:
        return "eval_dataset_name and eval_split_ratio are both set; use one source of validation data."
    return None


def eval_strategy_has_data(cfg) -> str | None:
    strategy = getattr(cfg.training.eval_strategy, "value", cfg.training.eval_strategy)
    if strategy != "no" and not (cfg.data.eval_dataset_name or cfg.data.eval_split_ratio):
        return f"eval_strategy is '{strategy}' but there is no validation data: set eval_split_ratio or eval_dataset_name."
    return None


def learning_rate_positive(cfg) -> str | None:
    if not cfg.training.learning_rate > 0:
        return f"learning_rate must be positive, got {cfg.training.learning_rate}."
    return None


def lora_rank_positive(cfg) -> str | None:
    if cfg.model.use_peft and cfg.model.lora_r <= 0:
        return f"lora_r must be a positive integer, got {cfg.model.lora_r}."
    return None


def one_mixed_precision(cfg) -> str | None:
    if cfg.training.bf16 and cfg.training.fp16:
        return "bf16 and fp16 are both true; choose one."
    return None


def batch_sizes_positive(cfg) -> str | None:
    for key in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        value = getattr(cfg.training, key, None)
        if value is not None and value < 1:
            return f"{key} must be a positive integer, got {value}."
    return None


def trains_something(cfg) -> str | None:
    """num_train_epochs 0 without max_steps finishes 'successfully' with an untrained model: refuse it."""
    args = cfg.training
    if args.max_steps is not None and args.max_steps > 0:
        return None
    if not args.num_train_epochs > 0:
        return (f"num_train_epochs is {args.num_train_epochs} and max_steps is not set: the run would train nothing; "
                "set num_train_epochs > 0 or max_steps > 0.")
    return None


def lora_values_in_range(cfg) -> str | None:
    model = cfg.model
    if not model.use_peft:
        return None
    if not 0 <= model.lora_dropout < 1:
        return f"lora_dropout must be in [0, 1), got {model.lora_dropout}."
    if not model.lora_alpha > 0:
        return f"lora_alpha must be positive, got {model.lora_alpha}."
    if model.lora_target_modules is not None and len(model.lora_target_modules) == 0:
        return "lora_target_modules is empty: name modules (e.g. [q_proj, v_proj]) or use [all-linear]."
    return None


LENGTH_KEYS = ("max_length", "max_prompt_length", "max_completion_length", "max_new_tokens")


def lengths_positive(cfg) -> str | None:
    """A token length of 0 or less leaves nothing to train on (max_length: 0 ended in an IndexError in trl)."""
    for part in (getattr(cfg, name) for name in ("training", "task", "rewards", "ppo") if hasattr(cfg, name)):
        for key in LENGTH_KEYS:
            value = getattr(part, key, None)
            if isinstance(value, int) and not isinstance(value, bool) and value < 1:
                return f"{key} must be a positive number of tokens, got {value}."
    return None


# report_to name -> the module it needs, and the package that ships it (our extras cover the first four).
TRACKERS = {"tensorboard": ("tensorboard", "finetune-kit[tensorboard]"), "wandb": ("wandb", "finetune-kit[wandb]"),
            "mlflow": ("mlflow", "finetune-kit[mlflow]"), "trackio": ("trackio", "finetune-kit[trackio]"),
            "comet_ml": ("comet_ml", "comet_ml"), "clearml": ("clearml", "clearml"), "dvclive": ("dvclive", "dvclive"),
            "neptune": ("neptune", "neptune"), "swanlab": ("swanlab", "swanlab"), "codecarbon": ("codecarbon",
                                                                                                  "codecarbon")}


def trackers_installed(cfg) -> str | None:
    """A tracker named in report_to must be importable now, not after the model has loaded."""
    import importlib.util

    for name in cfg.training.report_to or []:
        module, package = TRACKERS.get(name, (None, None))
        if module and importlib.util.find_spec(module) is None:
            return f"report_to: {name} needs the {module} package, which is not installed: pip install '{package}'."
    return None


COMMON_CHECKS = (
    quantization_is_exclusive,
    quantization_needs_adapter,
    dora_needs_peft,
    dataset_is_given,
    eval_split_ratio_in_range,
    eval_strategy_has_data,
    learning_rate_positive,
    lora_rank_positive,
    one_mixed_precision,
    trackers_installed,
    batch_sizes_positive,
    trains_something,
    lora_values_in_range,
    lengths_positive,
)
