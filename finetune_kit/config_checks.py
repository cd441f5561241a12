"""Cross-field checks of the recipe configs, each a named function of the whole config returning an error message
naming the keys, or None; the recipe table (`Recipe.checks`) says which a recipe runs. Each is tested on its own.

They run twice on the same values, by the same functions: in `finetune_kit.preflight` on the YAML and command-line
values (before trl / transformers are imported, so a mistake is named in well under 2 s), and in `parse_config` on the
typed config. So this module imports nothing beyond the standard library, and a check reads only plain values
(numbers, strings, lists); the output-folder checks also ask the file system which paths exist.
"""

from __future__ import annotations

import math
from pathlib import Path


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
    if not cfg.data.dataset_name and not getattr(cfg.data, "datasets", None):
        return "dataset_name is required (a local file or folder, or a hub dataset id; or datasets: a mixture)."
    return None


def streaming_has_steps(cfg) -> str | None:
    """A stream has no length: the trainer needs max_steps, and a validation split cannot be cut from it."""
    if not getattr(cfg.data, "streaming", False):
        return None
    if (getattr(cfg.training, "max_steps", 0) or 0) <= 0:
        return "streaming: true reads rows as training goes, so the run length is unknown: set max_steps."
    if cfg.data.eval_split_ratio:
        return "streaming: true cannot hold out eval_split_ratio of a stream; give eval_dataset_name instead."
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


# Keys naming what a run reads (local paths among hub ids): output_dir must not be one of them or hold one.
INPUT_KEYS = ("model_name_or_path", "tokenizer_name_or_path", "ref_model_name_or_path", "teacher_model_name_or_path",
              "reward_model", "dataset_name", "eval_dataset_name", "test_dataset_name", "zero_shot_dataset_name",
              "chat_template_path")


def _inputs(cfg):
    """(key, value) of every input a config names, the sources of a mixture and reward function files included."""
    for part in vars(cfg).values():
        for key in INPUT_KEYS:
            value = getattr(part, key, None)
            if isinstance(value, str):
                yield key, value
        for source in getattr(part, "datasets", None) or []:
            if isinstance(source, dict) and isinstance(source.get("dataset_name"), str):
                yield "datasets: dataset_name", source["dataset_name"]
        for spec in getattr(part, "reward_functions", None) or []:
            if isinstance(spec, str) and spec.rpartition(":")[0].endswith(".py"):
                yield "reward_functions", spec.rpartition(":")[0]


def output_apart_from_inputs(cfg) -> str | None:
    """A run writing into the folder it reads from would replace its own model or data (overwrite_output_dir sets the
    old folder aside and deletes it after the first step; a new adapter there would name itself as its base)."""
    output_dir = getattr(getattr(cfg, "training", None), "output_dir", None)
    if not output_dir:
        return None
    out = Path(output_dir).expanduser().resolve()
    for key, value in _inputs(cfg):
        path = Path(value).expanduser()
        if path.exists() and (path.resolve() == out or out in path.resolve().parents):
            where = "is" if path.resolve() == out else "holds"
            return (f"output_dir {output_dir} {where} {key} {value}: the run would replace what it reads. Choose "
                    "another output_dir (to continue a run, give --resume_from_checkpoint).")
    return None


def output_not_around_working_folder(cfg) -> str | None:
    """overwrite_output_dir sets the old output folder aside and deletes it after the first step: with output_dir
    "." (or a folder above it) that would be the folder the user works in, with their data and code."""
    output_dir = getattr(getattr(cfg, "training", None), "output_dir", None)
    if not output_dir or not getattr(getattr(cfg, "run", None), "overwrite_output_dir", False):
        return None
    out, here = Path(output_dir).expanduser().resolve(), Path.cwd().resolve()
    if out == here or out in here.parents:
        where = "the folder you are in" if out == here else "a folder above the one you are in"
        return (f"output_dir {output_dir} is {where} and overwrite_output_dir would replace it, with everything in "
                "it: give the run a folder of its own.")
    return None


# key: (lowest, highest, whether the lowest itself is allowed); every value must also be a finite number.
_OPTIMIZER_RANGES = {
    "weight_decay": (0.0, math.inf, True),
    "adam_beta1": (0.0, 1.0, True),
    "adam_beta2": (0.0, 1.0, True),
    "adam_epsilon": (0.0, math.inf, True),
    "max_grad_norm": (0.0, math.inf, True),  # 0 turns clipping off, as in transformers
    "neftune_noise_alpha": (0.0, math.inf, False),
    "label_smoothing_factor": (0.0, 1.0, True),
}


def numbers_in_range(cfg) -> str | None:
    """Values transformers takes unchecked that fail only once training has started (numpy's seed range, torch's
    optimizer and NEFTune checks, an endless epoch count turned into steps), or that silently do nothing (a NaN
    clip norm is never above 0, so nothing is clipped)."""
    args = cfg.training
    for key in ("seed", "data_seed"):
        value = getattr(args, key, None)
        if value is not None and not 0 <= value < 2**32:
            return f"{key} must be between 0 and 2**32 - 1 (numpy's seed range), got {value}."
    if not math.isfinite(args.learning_rate):
        return f"learning_rate must be a finite number, got {args.learning_rate}."
    if not (args.max_steps is not None and args.max_steps > 0) and not math.isfinite(args.num_train_epochs):
        return f"num_train_epochs must be a finite number (or set max_steps), got {args.num_train_epochs}."
    for key, (low, high, low_allowed) in _OPTIMIZER_RANGES.items():
        value = getattr(args, key, None)
        if value is None or not isinstance(value, (int, float)):
            continue
        if not (math.isfinite(value) and (low <= value if low_allowed else low < value) and value < high):
            bound = f"{'at least' if low_allowed else 'above'} {low:g}" + (f" and below {high:g}"
                                                                          if math.isfinite(high) else "")
            return f"{key} must be a number {bound}, got {value}."
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


# What transformers 5 takes as attn_implementation (its AttentionInterface, plus "eager"; a test keeps the two in
# step) and ours (finetune_kit.cpu_attention.NAME); "paged|" before any of them, or a Hub kernel named org/name.
ATTENTION_NAMES = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flash_attention_4", "flex_attention",
                   "eager_bf16_softmax")


def attention_known(cfg) -> str | None:
    """An attn_implementation transformers does not know failed only when the weights loaded, after `check` passed."""
    name = getattr(getattr(cfg, "model", None), "attn_implementation", None)
    if name is None:
        return None
    base = name.removeprefix("paged|")
    if base in ATTENTION_NAMES or "/" in base:
        return None
    return (f"attn_implementation {name!r} is not an attention transformers knows: use one of "
            f"{', '.join(ATTENTION_NAMES)}, or a Hub kernel named org/name.")


LENGTH_KEYS = ("max_length", "max_prompt_length", "max_completion_length", "max_new_tokens", "max_source_length",
               "max_target_length")


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


def tracker_names(cfg) -> list[str]:
    """report_to as a list: the YAML may give one name (`report_to: none`), which transformers turns into a list."""
    value = cfg.training.report_to
    return [value] if isinstance(value, str) else list(value or [])


def trackers_installed(cfg) -> str | None:
    """A tracker named in report_to must be importable now, not after the model has loaded."""
    import importlib.util

    for name in tracker_names(cfg):
        module, package = TRACKERS.get(name, (None, None))
        if module and importlib.util.find_spec(module) is None:
            return f"report_to: {name} needs the {module} package, which is not installed: pip install '{package}'."
    return None


COMMON_CHECKS = (
    quantization_is_exclusive,
    quantization_needs_adapter,
    dora_needs_peft,
    dataset_is_given,
    streaming_has_steps,
    eval_split_ratio_in_range,
    eval_strategy_has_data,
    learning_rate_positive,
    lora_rank_positive,
    one_mixed_precision,
    trackers_installed,
    batch_sizes_positive,
    trains_something,
    numbers_in_range,
    output_apart_from_inputs,
    output_not_around_working_folder,
    lora_values_in_range,
    lengths_positive,
    attention_known,
)
