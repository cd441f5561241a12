"""GRPO presets: the trl `GRPOConfig` options a published method uses, set together by one key (`grpo_preset: dapo`).

Each value is what trl's paper index (docs/source/paper_index.md) or `GRPOConfig`'s own docstrings give for the
method, with the paper section behind it; the README's GRPO section has the same table. Only the options that define
the method's loss are set: batch shapes, generation counts and lengths, learning rates are the paper's scale, not its
method, and stay the user's. A key the user sets (YAML or command line) wins over the preset; every key the preset
sets is a recorded decision (printed, and in run_info.json), so a run says which values came from where.

RLOO gets no presets: trl's `RLOOConfig` has none of the options that tell these methods apart (loss_type,
importance_sampling_level, scale_rewards).
"""

from __future__ import annotations

from finetune_kit.decisions import Decision

GRPO_PRESETS: dict[str, dict[str, object]] = {
    # DAPO (arXiv 2503.14476): token-level loss, clip-higher epsilon 0.2 / 0.28 (sec. 4.1), overlong filtering
    # (truncated answers carry no loss), no KL term (sec. 2.3). Dynamic sampling has no trl option; the soft overlong
    # punishment is a reward function (trl.rewards.get_soft_overlong_punishment), not a config key.
    "dapo": {"loss_type": "dapo", "epsilon": 0.2, "epsilon_high": 0.28, "mask_truncated_completions": True,
             "beta": 0.0},
    # Dr. GRPO (arXiv 2503.20783): the loss divided by a constant (max_completion_length), not by answer length;
    # rewards not divided by their group's standard deviation (a question-difficulty bias); no KL term.
    "dr_grpo": {"loss_type": "dr_grpo", "scale_rewards": "none", "beta": 0.0},
    # GSPO (arXiv 2507.18071, v2 sec. 5.1): one importance ratio per sequence (length-normalised), GRPO's per-sequence
    # loss, clipping at 3e-4 / 4e-4, no KL. It changes updates only off-policy (steps_per_generation above
    # gradient_accumulation_steps, or num_iterations > 1): the paper's 4 mini-batches per rollout are a batch shape.
    "gspo": {"importance_sampling_level": "sequence", "loss_type": "grpo", "epsilon": 3e-4, "epsilon_high": 4e-4,
             "beta": 0.0},
    # CISPO (MiniMax-M1, arXiv 2506.13585): clips the importance weight itself, not the update; trl reads its upper
    # bound from epsilon_high, recommended 5.0 (ScaleRL, arXiv 2510.13786). Left unset, epsilon_high falls back to
    # epsilon (0.2), which caps every weight at 0.2.
    "cispo": {"loss_type": "cispo", "epsilon_high": 5.0},
    # GRPO as DeepSeekMath (arXiv 2402.03300) defined it: each answer's loss averaged over its own tokens, rewards
    # scaled by their group's standard deviation, KL coefficient 0.04 (sec. 4.2), per-token ratios.
    "grpo": {"loss_type": "grpo", "scale_rewards": "group", "importance_sampling_level": "token", "beta": 0.04},
}

SOURCES = {"dapo": "DAPO, arXiv 2503.14476 (trl paper index)",
           "dr_grpo": "Dr. GRPO, arXiv 2503.20783 (trl paper index, GRPOConfig.scale_rewards)",
           "gspo": "GSPO, arXiv 2507.18071 v2 sec. 5.1 (trl paper index)",
           "cispo": "CISPO, MiniMax-M1 arXiv 2506.13585; epsilon_high from ScaleRL (GRPOConfig.epsilon_high)",
           "grpo": "GRPO as in DeepSeekMath, arXiv 2402.03300 sec. 4.2"}


def preset_decisions(preset: str | None, user: set[str]) -> list[Decision]:
    """The options `preset` sets, one decision each, leaving out the keys the user set; [] without a preset."""
    if preset is None:
        return []
    return [Decision(key, value, f"grpo_preset {preset}: {SOURCES[preset]}")
            for key, value in GRPO_PRESETS[preset].items() if key not in user]
