"""Config checks of some recipes' own parts (PPO / GRPO rewards and guards, preference betas, distillation, reward
and process-reward heads, the encoder, vision and seq2seq tasks): the recipe table's `checks` names them beside
`config_checks.COMMON_CHECKS`. The same rules as there: each a named function of the whole config returning an
error message naming the keys, or None; run by the preflight on plain values and by `parse_config` on the typed
config, so this module imports nothing, and a check reads only plain values.
"""

from __future__ import annotations

from finetune_kit.config_checks import tracker_names


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
