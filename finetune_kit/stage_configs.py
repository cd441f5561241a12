"""Configs of the stages around SFT: continued pretraining, reward model, DPO, KTO, GRPO and our PPO.

Each trainer's own trl config is used as it is (keys named as trl names them), with the machine defaults of
`TrlMachineDefaults`; what trl has no key for lives in a small task part. Checks are named functions, as for SFT.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import DPOConfig, GRPOConfig, KTOConfig, RewardConfig, SFTConfig

from finetune_kit.config import DataArguments, ModelArguments, RunArguments, register_checks
from finetune_kit.recipe_configs import COMMON_CHECKS, ClassifierTrainingArguments, TrlMachineDefaults


@dataclass
class PretrainTrainingArguments(TrlMachineDefaults, SFTConfig):
    """trl's `SFTConfig` set up for plain-text language modelling: documents joined with EOS, cut into blocks."""

    packing: bool = field(default=True, metadata={"help": "Join documents (EOS between them) into full blocks."})
    # 'wrapped' fills every block completely, cutting documents at block edges: the classic run_clm.py grouping.
    packing_strategy: str = field(default="wrapped", metadata={
        "help": "wrapped: fixed-length blocks across documents; bfd: whole documents, best-fit.",
        "choices": ["bfd", "bfd_split", "wrapped"]})
    max_length: int | None = field(default=512, metadata={"help": "Tokens per block."})


@dataclass
class PretrainConfig:
    """`recipes/pretrain.py`: continued causal-LM pretraining on plain text."""

    model: ModelArguments
    data: DataArguments
    training: PretrainTrainingArguments
    run: RunArguments


@dataclass
class RewardTrainingArguments(TrlMachineDefaults, RewardConfig):
    """trl's `RewardConfig` with machine-chosen bf16."""


@dataclass
class RewardModelArguments(ModelArguments):
    # The score head is new: peft trains and saves it with the adapter only for SEQ_CLS adapters.
    lora_task_type: str = field(default="SEQ_CLS", metadata={"help": "peft task type; SEQ_CLS for a reward model."})


@dataclass
class RewardRecipeConfig:
    """`recipes/reward.py`: a one-score sequence-classification head on a causal LM, trained on preference pairs."""

    model: RewardModelArguments
    data: DataArguments
    training: RewardTrainingArguments
    run: RunArguments


@dataclass
class ReferenceArguments:
    ref_model_name_or_path: str | None = field(default=None, metadata={
        "help": "An explicit frozen reference model (a second copy in memory). Default: with LoRA the base model "
                "with adapters disabled; without LoRA a frozen copy of the starting model."})


@dataclass
class DPOTrainingArguments(TrlMachineDefaults, DPOConfig):
    """trl's `DPOConfig` (loss_type sigmoid / ipo / hinge / ..., beta, precompute_ref_log_probs) with machine bf16."""


@dataclass
class DPORecipeConfig:
    """`recipes/dpo.py`: direct preference optimisation on chosen / rejected pairs."""

    model: ModelArguments
    data: DataArguments
    task: ReferenceArguments
    training: DPOTrainingArguments
    run: RunArguments


@dataclass
class KTOTrainingArguments(TrlMachineDefaults, KTOConfig):
    """trl's `KTOConfig` (desirable / undesirable weights, beta) with machine bf16."""


@dataclass
class KTORecipeConfig:
    """`recipes/kto.py`: KTO on unpaired desirable / undesirable answers."""

    model: ModelArguments
    data: DataArguments
    task: ReferenceArguments
    training: KTOTrainingArguments
    run: RunArguments


@dataclass
class RewardSourceArguments:
    """Where rewards come from in online RL: a trained reward model, Python functions, or both (summed)."""

    reward_model: str | None = field(default=None, metadata={
        "help": "A reward-model run folder or checkpoint (one-score sequence classifier)."})
    reward_functions: list[str] | None = field(default=None, metadata={
        "help": "Python reward functions as module:function or path/to/file.py:function; each gets prompts and "
                "completions (text) and returns one number per completion."})
    max_prompt_length: int = field(default=256, metadata={"help": "Prompts longer than this (tokens) are an error."})


@dataclass
class GRPOTrainingArguments(TrlMachineDefaults, GRPOConfig):
    """trl's `GRPOConfig` (num_generations, max_completion_length, beta, loss_type, ...) with machine bf16."""


@dataclass
class GRPORecipeConfig:
    """`recipes/grpo.py`: group-relative policy optimisation (trl's GRPOTrainer)."""

    model: ModelArguments
    data: DataArguments
    rewards: RewardSourceArguments
    training: GRPOTrainingArguments
    run: RunArguments


@dataclass
class PPOArguments:
    """Our PPO (finetune_kit/rl/ppo.py): rollouts, advantages, clipping, KL control."""

    rollout_batch_size: int = field(default=8, metadata={"help": "Prompts sampled per PPO step."})
    mini_batch_size: int = field(default=4, metadata={"help": "Rollouts per gradient step inside a PPO epoch."})
    ppo_epochs: int = field(default=2, metadata={"help": "Passes over each rollout batch."})
    max_new_tokens: int = field(default=32, metadata={"help": "Longest sampled answer, in tokens."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of the rollouts."})
    top_k: int = field(default=0, metadata={"help": "0: sample from the whole distribution (on-policy)."})
    gamma: float = field(default=1.0, metadata={"help": "Discount of future rewards."})
    lam: float = field(default=0.95, metadata={"help": "GAE lambda."})
    cliprange: float = field(default=0.2, metadata={"help": "Clip range of the policy ratio."})
    cliprange_value: float = field(default=0.2, metadata={"help": "Clip range of the value update."})
    vf_coef: float = field(default=0.1, metadata={"help": "Weight of the value loss."})
    kl_coef: float = field(default=0.05, metadata={"help": "Per-token KL penalty against the reference (start)."})
    adaptive_kl: bool = field(default=False, metadata={"help": "Adapt kl_coef towards target_kl (Ziegler et al.)."})
    target_kl: float = field(default=6.0, metadata={"help": "Target KL per answer for the adaptive controller."})
    kl_horizon: int = field(default=10000, metadata={"help": "Horizon of the adaptive KL controller."})
    whiten_rewards: bool = field(default=False, metadata={"help": "Normalise scores within each rollout batch."})
    eval_prompts: int = field(default=16, metadata={"help": "Held-out prompts scored before and after training."})


@dataclass
class PPORecipeConfig:
    """`recipes/ppo.py`: PPO with a value head, against a reward model or reward functions."""

    model: ModelArguments
    data: DataArguments
    rewards: RewardSourceArguments
    ppo: PPOArguments
    training: ClassifierTrainingArguments
    run: RunArguments


def has_reward_source(cfg) -> str | None:
    if not cfg.rewards.reward_model and not cfg.rewards.reward_functions:
        return "no reward: set reward_model (a reward-model run folder) and/or reward_functions (module:function)."
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


def ppo_ranges(cfg) -> str | None:
    p = cfg.ppo
    if not (0 < p.gamma <= 1 and 0 <= p.lam <= 1):
        return f"gamma must be in (0, 1] and lam in [0, 1], got gamma={p.gamma}, lam={p.lam}."
    if p.cliprange <= 0 or p.cliprange_value <= 0 or p.kl_coef < 0 or p.ppo_epochs < 1 or p.max_new_tokens < 1:
        return "cliprange and cliprange_value must be > 0, kl_coef >= 0, ppo_epochs and max_new_tokens >= 1."
    return None


def reward_head_with_lora(cfg) -> str | None:
    if cfg.model.use_peft and cfg.model.lora_task_type != "SEQ_CLS":
        return f"lora_task_type must be SEQ_CLS for a reward model (got {cfg.model.lora_task_type})."
    return None


register_checks(PretrainConfig, *COMMON_CHECKS)
register_checks(RewardRecipeConfig, *COMMON_CHECKS, reward_head_with_lora)
register_checks(DPORecipeConfig, *COMMON_CHECKS)
register_checks(KTORecipeConfig, *COMMON_CHECKS)
register_checks(GRPORecipeConfig, *COMMON_CHECKS, has_reward_source)
register_checks(PPORecipeConfig, *COMMON_CHECKS, has_reward_source, ppo_needs_adapter, ppo_batches_divide, ppo_ranges,
                ppo_needs_max_steps)

STAGE_CONFIGS = {"pretrain": PretrainConfig, "reward": RewardRecipeConfig, "dpo": DPORecipeConfig,
                 "kto": KTORecipeConfig, "grpo": GRPORecipeConfig, "ppo": PPORecipeConfig}
