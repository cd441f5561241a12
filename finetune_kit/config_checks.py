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


# --- checks of some recipes' own parts (the recipe table's `checks` names them) ---


def has_reward_source(cfg) -> str | None:
    if not cfg.rewards.reward_model and not cfg.rewards.reward_functions:
        return "no reward: set reward_model (a reward-model run folder) and/or reward_functions (module:function)."
    return None


def reward_weights_match_sources(cfg) -> str | None:
    """trl weighs its reward functions one weight each (a reward model is one of them here): another count failed
    inside the trainer, after the model had loaded."""
    weights = getattr(cfg.training, "reward_weights", None)
    sources = len(cfg.rewards.reward_functions or []) + bool(cfg.rewards.reward_model)
    if weights is not None and len(weights) != sources:
        return (f"reward_weights has {len(weights)} values for {sources} reward source(s) (reward_functions, then "
                "reward_model): give one weight each, or leave it unset for 1 each.")
    return None


def ppo_needs_adapter(cfg) -> str | None:
    # The reference is the base with adapters disabled: one model copy instead of two.
    if not cfg.model.use_peft:
        return "PPO trains LoRA adapters (the reference is the base with adapters off): set use_peft: true."
    return None


def ppo_batches_divide(cfg) -> str | None:
    p = cfg.ppo
    if p.rollout_batch_size <= 0 or p.mini_batch_size <= 0 or p.rollout_batch_size % p.mini_batch_size:
        return (f"rollout_batch_size ({p.rollout_batch_size}) must be a positive multiple of mini_batch_size "
                f"({p.mini_batch_size}).")
    return None


def ppo_needs_max_steps(cfg) -> str | None:
    if cfg.training.max_steps <= 0:
        return "max_steps: set the number of PPO steps (each samples rollout_batch_size prompts)."
    return None


def ppo_reports_nowhere(cfg) -> str | None:
    """Our PPO loop logs to the terminal and log_history.json only: a tracker named in report_to would stay silent."""
    trackers = [t for t in tracker_names(cfg) if t != "none"]
    if trackers:
        return (f"report_to: {', '.join(trackers)}: the ppo recipe logs to the terminal and log_history.json only; "
                "use report_to: none.")
    return None


def ppo_ranges(cfg) -> str | None:
    p = cfg.ppo
    if not (0 < p.gamma <= 1 and 0 <= p.lam <= 1):
        return f"gamma must be in (0, 1] and lam in [0, 1], got gamma={p.gamma}, lam={p.lam}."
    if p.cliprange <= 0 or p.cliprange_value <= 0 or p.kl_coef < 0 or p.ppo_epochs < 1 or p.max_new_tokens < 1:
        return "cliprange and cliprange_value must be > 0, kl_coef >= 0, ppo_epochs and max_new_tokens >= 1."
    if p.early_stop_kl < 0:
        return f"early_stop_kl must be >= 0 (0 turns it off), got {p.early_stop_kl}."
    return None


def guard_ranges(cfg) -> str | None:
    g = cfg.guard
    if g.kl_ceiling < 0 or g.guard_eval_steps < 0:
        return (f"kl_ceiling and guard_eval_steps must be >= 0 (0 turns each off), got {g.kl_ceiling}, "
                f"{g.guard_eval_steps}.")
    return None


def best_policy_needs_held_out(cfg) -> str | None:
    """keep_policy: best picks a step by its held-out reward: without held-out prompts there is nothing to pick by."""
    if cfg.guard.keep_policy == "best" and not (cfg.data.eval_dataset_name or cfg.data.eval_split_ratio):
        return ("keep_policy: best scores held-out prompts: set eval_split_ratio (e.g. 0.1) or eval_dataset_name, "
                "or keep_policy: last.")
    return None


def beta_positive(cfg) -> str | None:
    """DPO / KTO / CPO scale their implicit reward by beta, ORPO its odds-ratio term: 0 or less trains towards
    nothing (SimPO divides by it), or away from the data."""
    if not cfg.training.beta > 0:
        return f"beta must be positive, got {cfg.training.beta} (0.1 is the usual value; SimPO uses about 2)."
    return None


def betas_positive(cfg) -> str | None:
    """Online DPO's beta, one value or one per epoch (trl's list form): each must be positive, as for DPO."""
    betas = cfg.training.beta if isinstance(cfg.training.beta, list) else [cfg.training.beta]
    bad = next((b for b in betas if not b > 0), None)
    if bad is not None:  # the value itself: the YAML's one value and trl's one-item list read the same
        return f"beta must be positive (one value, or one per epoch), got {float(bad)} (0.1 is the usual value)."
    return None


def distill_has_teacher(cfg) -> str | None:
    if not cfg.training.teacher_model_name_or_path:
        return ("distill needs a teacher: set teacher_model_name_or_path (a checkpoint folder, hub id, run folder, or "
                "smollm2-135m-instruct).")
    return None


def student_config_trains_whole(cfg) -> str | None:
    """A student built from student_config starts from random weights: adapters on them, or quantizing them, would
    train (almost) nothing worth having."""
    student = cfg.model.student_config
    if student is None or isinstance(student, str):  # a command-line JSON string: checked again once parsed
        return None
    if not isinstance(student, dict) or not student:
        return f"student_config must be a mapping of config values (e.g. {{num_hidden_layers: 4}}), got {student!r}."
    if cfg.model.use_peft or cfg.model.load_in_4bit or cfg.model.load_in_8bit:
        return ("student_config builds a new student with random weights, which all train: set use_peft: false and "
                "leave load_in_4bit / load_in_8bit off (or name a trained student in model_name_or_path).")
    return None


def cpo_alpha_not_negative(cfg) -> str | None:
    """cpo_alpha weighs the NLL of the chosen answer: below 0 it would push the chosen answers down."""
    if cfg.training.cpo_alpha < 0:
        return f"cpo_alpha must be >= 0 (0: no NLL term, as SimPO), got {cfg.training.cpo_alpha}."
    return None


def reward_head_with_lora(cfg) -> str | None:
    if cfg.model.use_peft and cfg.model.lora_task_type != "SEQ_CLS":
        return f"lora_task_type must be SEQ_CLS for a reward model (got {cfg.model.lora_task_type})."
    return None


def step_separator_given(cfg) -> str | None:
    """The prm recipe labels the separator after each step: an empty one leaves no token to label."""
    if not cfg.task.step_separator:
        return "step_separator is empty: each step's label sits on the separator after it; use e.g. '\\n'."
    return None


def stride_below_window(cfg) -> str | None:
    if not 0 <= cfg.task.doc_stride < cfg.task.max_length // 2:
        return f"doc_stride ({cfg.task.doc_stride}) must be below half of max_length ({cfg.task.max_length})."
    return None


def null_calibration_in_range(cfg) -> str | None:
    if not 0 <= cfg.task.null_calibration_ratio < 1:
        return (f"null_calibration_ratio must be in [0, 1), got {cfg.task.null_calibration_ratio} (0: no paragraphs "
                "held out; the threshold is then 0.0 unless null_score_threshold is set).")
    return None


def mlm_probability_in_range(cfg) -> str | None:
    if not 0 < cfg.task.mlm_probability < 1:
        return f"mlm_probability must be between 0 and 1, got {cfg.task.mlm_probability}."
    return None


def classifier_splits_in_range(cfg) -> str | None:
    total = cfg.data.eval_split_ratio + cfg.task.test_split_ratio
    if not 0 <= cfg.task.test_split_ratio < 1 or total >= 1:
        return f"eval_split_ratio + test_split_ratio must stay below 1, got {total}."
    return None


def one_test_source(cfg) -> str | None:
    if cfg.task.test_dataset_name and cfg.task.test_split_ratio:
        return "test_dataset_name and test_split_ratio are both set; use one source of test data."
    return None


def weights_or_balanced_sampling(cfg) -> str | None:
    if cfg.task.class_weights and cfg.task.sampling != "none":
        return "class_weights and sampling both correct for imbalance; use one of them."
    return None


def freeze_layers_not_negative(cfg) -> str | None:
    if cfg.task.freeze_layers < 0:
        return f"freeze_layers must be >= 0, got {cfg.task.freeze_layers}."
    return None


def sampling_without_lengths(cfg) -> str | None:
    """sft_vision: rows are tokenized batch by batch by trl's vision collator, so no token lengths exist to group by
    (transformers' length-grouped samplers would fail when training starts)."""
    strategy = getattr(cfg.training, "train_sampling_strategy", "random")
    if strategy in ("group_by_length", "batch_rebalance"):
        return (f"train_sampling_strategy {strategy} needs token lengths, which image rows only get inside each batch; "
                "use random (the default) or sequential.")
    return None


def translation_languages_paired(cfg) -> str | None:
    """seq2seq: translation rows are read by both language codes, or by neither (source / target columns)."""
    if bool(cfg.task.source_lang) != bool(cfg.task.target_lang):
        return "source_lang and target_lang go together (translation pairs); set both, or neither for plain columns."
    return None


def caption_template_names_label(cfg) -> str | None:
    """clip: the template turns each class label into its caption; without {label} every class reads the same."""
    try:
        filled = cfg.task.caption_template.format(label="\0")
    except (KeyError, IndexError, ValueError) as err:
        return f"caption_template {cfg.task.caption_template!r} is not a template with one {{label}} field ({err})."
    if "\0" not in filled:
        return f"caption_template {cfg.task.caption_template!r} has no {{label}}: every class would get one caption."
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
