"""Configs of the decoder stages: SFT, continued pretraining, reward model, DPO, KTO, ORPO, CPO / SimPO, GRPO, RLOO,
online DPO, our PPO and a process reward model (PRM) (distillation: config_distill.py).

Each trl trainer's own config is used as it is (keys named as trl names them), with the machine defaults of
`TrlMachineDefaults`; what trl has no key for lives in a small task part. Checks are named functions.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from trl import DPOConfig, GRPOConfig, KTOConfig, RewardConfig, RLOOConfig, SFTConfig
from trl.import_utils import TRLExperimentalWarning

from finetune_kit.config import (
    DataArguments,
    ModelArguments,
    RunArguments,
    TrainerArguments,
    length_grouped_sampling,
    machine_defaults,
)
from finetune_kit.rl.presets import GRPO_PRESETS

# trl 1.16 keeps ORPO and CPO in trl.experimental, whose import warns that its API may change; every decoder recipe
# imports this module, so the notice would print for SFT or GRPO runs too. pyproject keeps trl below 2 and
# tests/test_orpo_cpo.py trains both recipes, so an API change there is caught by the tests, not the user.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", TRLExperimentalWarning)
    from trl.experimental.cpo import CPOConfig
    from trl.experimental.online_dpo import OnlineDPOConfig  # the online_dpo recipe's, as experimental
    from trl.experimental.orpo import ORPOConfig


@dataclass
class TrlMachineDefaults:
    """Mixed into trl's configs (SFT, reward, DPO, KTO, GRPO): defaults that suit the machine, not a recent GPU."""

    # trl turns bf16 on unconditionally; on a CPU without native bf16 that is several times slower than fp32.
    bf16: bool | None = field(
        default=None, metadata={"help": "bf16 mixed precision; default: on where the hardware runs it natively."}
    )
    # trl defaults this (deprecated alias) to True; checkpointing costs ~20-30% speed, so ours turns it on when the
    # memory estimate says it pays (memory.activation_checkpointing, a recorded decision), unless either name is set.
    gradient_checkpointing: bool | None = field(
        default=None, metadata={"help": "Deprecated alias of activation_checkpointing.", "nargs": "?", "const": True}
    )

    def __post_init__(self):
        machine_defaults(self)
        super().__post_init__()


@dataclass
class SFTTrainingArguments(TrlMachineDefaults, SFTConfig):
    """trl's `SFTConfig` with machine-chosen bf16, activation checkpointing when memory says so, length-grouped batches."""

    # Chat / instruction rows vary a lot in length; batching similar lengths together cuts the padding that a random
    # sampler computes on (benchmarks/results/bench_sft.json). `random` restores trl's order.
    train_sampling_strategy: str = length_grouped_sampling()
    # Unset: chosen by hardware.fast_path_decisions once the attention implementation is known (a recorded decision).
    packing: bool | None = field(default=None, metadata={
        "help": "Pack examples into rows of max_length tokens (packing_strategy bfd: best-fit, padding-free, "
                "position_ids mark the examples); default: on with flash attention."})
    use_liger_kernel: bool | None = field(default=None, metadata={
        "help": "Liger's fused kernels; default: on a CUDA GPU where liger-kernel is installed."})

    def __post_init__(self):
        self.packing, self.use_liger_kernel = bool(self.packing), bool(self.use_liger_kernel)
        super().__post_init__()


@dataclass
class SFTRecipeConfig:
    """The sft recipe: supervised fine-tuning of a causal LM on instruction / chat data."""

    model: ModelArguments
    data: DataArguments
    training: SFTTrainingArguments
    run: RunArguments


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
    """The pretrain recipe: continued causal-LM pretraining on plain text."""

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
    """The reward recipe: a one-score sequence-classification head on a causal LM, trained on preference pairs."""

    model: RewardModelArguments
    data: DataArguments
    training: RewardTrainingArguments
    run: RunArguments


@dataclass
class PRMArguments:
    """The prm recipe's own keys (trl's old PRMConfig named the first three so): how steps are joined and labelled,
    and how a solution's steps make its score."""

    step_separator: str = field(default="\n", metadata={
        "help": "Text put after the prompt and after each step; its last token after a step carries that step's "
                "label. No step may contain it; an answer is split at it to be scored as a reward."})
    max_length: int = field(default=512, metadata={
        "help": "Longest tokenized prompt + steps; steps past it are cut off (unlabelled, unscored)."})
    train_on_last_step_only: bool = field(default=False, metadata={
        "help": "Train on the last step's label only (an outcome label); held-out rows are scored on every step."})
    solution_score: str = field(default="min", metadata={
        "help": "A solution's score from its steps' P(right): min (its weakest step, as Math-Shepherd) or prod "
                "(every step right, as Lightman et al.); used for the held-out ranking and as a reward.",
        "choices": ("min", "prod")})
    test_dataset_name: str | None = field(default=None, metadata={
        "help": "A separate step-labelled test file (or hub dataset, split 'test'), scored once at the end."})


@dataclass
class PRMTrainingArguments(TrainerArguments):
    """transformers' `TrainingArguments` with the machine defaults and length-grouped batches (solutions vary in
    length: similar lengths together pad less)."""

    train_sampling_strategy: str = length_grouped_sampling()


@dataclass
class PRMRecipeConfig:
    """The prm recipe: a process reward model, a 2-way token-classification head read at each step's separator."""

    model: ModelArguments
    data: DataArguments
    task: PRMArguments
    training: PRMTrainingArguments
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
    """The dpo recipe: direct preference optimisation on chosen / rejected pairs."""

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
    """The kto recipe: KTO on unpaired desirable / undesirable answers."""

    model: ModelArguments
    data: DataArguments
    task: ReferenceArguments
    training: KTOTrainingArguments
    run: RunArguments


@dataclass
class ORPOTrainingArguments(TrlMachineDefaults, ORPOConfig):
    """trl's `ORPOConfig` (beta: the weight λ of the odds-ratio term beside the NLL of the chosen answer) with machine
    bf16."""

    # trl's pair collator needs every column: left true, the trainer turns it off itself, with a warning every run.
    remove_unused_columns: bool = field(default=False, metadata={
        "help": "Keep false: trl's pair collator reads every column (true is turned off, with a warning)."})


@dataclass
class ORPORecipeConfig:
    """The orpo recipe: odds-ratio preference optimisation, reference-free, SFT and preference in one loss."""

    model: ModelArguments
    data: DataArguments
    training: ORPOTrainingArguments
    run: RunArguments


@dataclass
class CPOTrainingArguments(TrlMachineDefaults, CPOConfig):
    """trl's `CPOConfig` (loss_type sigmoid / hinge / ipo / simpo / alphapo, beta, cpo_alpha, simpo_gamma) with machine
    bf16. SimPO: loss_type simpo with cpo_alpha 0."""

    # trl's pair collator needs every column: left true, the trainer turns it off itself, with a warning every run.
    remove_unused_columns: bool = field(default=False, metadata={
        "help": "Keep false: trl's pair collator reads every column (true is turned off, with a warning)."})


@dataclass
class CPORecipeConfig:
    """The cpo recipe: contrastive preference optimisation and SimPO, reference-free."""

    model: ModelArguments
    data: DataArguments
    training: CPOTrainingArguments
    run: RunArguments


@dataclass
class RewardSourceArguments:
    """Where rewards come from in online RL: a trained reward model, Python functions, or both (summed)."""

    reward_model: str | None = field(default=None, metadata={
        "help": "A reward-model run folder or checkpoint (one-score sequence classifier), or a prm run (scored as "
                "its solution score of the answer's steps, in [0, 1])."})
    reward_functions: list[str] | None = field(default=None, metadata={
        "help": "Python reward functions as module:function or path/to/file.py:function; each gets prompts and "
                "completions (text) and returns one number per completion."})
    max_prompt_length: int = field(default=256, metadata={"help": "Prompts longer than this (tokens) are an error."})


@dataclass
class GuardArguments:
    """The run-level guard of online RL (ppo, grpo, rloo; finetune_kit/rl/guard.py): keep the best policy by held-out
    reward, stop a run whose held-out reward has clearly fallen or whose KL passes a ceiling."""

    # None: best where held-out prompts exist (eval_split_ratio / eval_dataset_name), else last: a recorded decision.
    keep_policy: str | None = field(default=None, metadata={
        "help": "best: save the policy of the step with the highest held-out reward (scored every guard_eval_steps, "
                "step 0 included; needs held-out prompts); last: the final one. Default: best when there are "
                "held-out prompts, else last.", "choices": ("best", "last")})
    guard_eval_steps: int = field(default=4, metadata={
        "help": "Score the held-out prompts every N steps for keep_policy: best and the collapse guard; 0: only "
                "before and after."})
    kl_ceiling: float = field(default=20.0, metadata={
        "help": "Stop the run when a step's KL to the reference (nats per answer) passes this; 0: no ceiling. "
                "grpo / rloo: needs beta > 0 (trl computes no KL at beta 0)."})


@dataclass
class GRPOTrainingArguments(TrlMachineDefaults, GRPOConfig):
    """trl's `GRPOConfig` (num_generations, max_completion_length, beta, loss_type, ...) with machine bf16."""


@dataclass
class GRPOPresetArguments:
    """A published GRPO variant's trl options, set together (finetune_kit/rl/presets.py; README table)."""

    grpo_preset: str | None = field(default=None, metadata={
        "help": "Set the trl options a method uses, each a recorded decision; a key you set yourself wins. "
                "dapo, dr_grpo, gspo, cispo, grpo (DeepSeekMath's original). Default: none (trl's defaults).",
        "choices": tuple(GRPO_PRESETS)})


@dataclass
class GRPORecipeConfig:
    """The grpo recipe: group-relative policy optimisation (trl's GRPOTrainer)."""

    model: ModelArguments
    data: DataArguments
    rewards: RewardSourceArguments
    guard: GuardArguments
    preset: GRPOPresetArguments
    training: GRPOTrainingArguments
    run: RunArguments


@dataclass
class RLOOTrainingArguments(TrlMachineDefaults, RLOOConfig):
    """trl's `RLOOConfig` (num_generations, max_completion_length, beta, normalize_advantages, ...) with machine bf16."""


@dataclass
class RLOORecipeConfig:
    """The rloo recipe: REINFORCE leave-one-out (trl's RLOOTrainer)."""

    model: ModelArguments
    data: DataArguments
    rewards: RewardSourceArguments
    guard: GuardArguments
    training: RLOOTrainingArguments
    run: RunArguments


@dataclass
class OnlineDPOTrainingArguments(TrlMachineDefaults, OnlineDPOConfig):
    """trl's `OnlineDPOConfig` (beta, loss_type sigmoid / ipo, max_new_tokens, temperature, missing_eos_penalty) with
    machine bf16."""


@dataclass
class OnlineDPORecipeConfig:
    """The online_dpo recipe: two sampled answers per prompt, the reward picks the chosen one, DPO loss on the pair."""

    model: ModelArguments
    data: DataArguments
    rewards: RewardSourceArguments
    guard: GuardArguments
    training: OnlineDPOTrainingArguments
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
    # Ziegler et al.'s 10000 suits batches of hundreds of answers over thousands of steps; at 8 answers a step it
    # moved kl_coef by 0.02% a step (issue #25: the coefficient never reacted). 64: up to 2.5% a step at 8 answers.
    kl_horizon: int = field(default=64, metadata={
        "help": "Horizon of the adaptive KL controller, in answers: each step moves kl_coef by at most "
                "0.2 x answers / kl_horizon."})
    whiten_rewards: bool = field(default=False, metadata={"help": "Normalise scores within each rollout batch."})
    early_stop_kl: float = field(default=0.02, metadata={
        "help": "Stop a step's remaining updates once the policy's KL from its own rollouts (per answer token, k3 "
                "estimate) passes this; 0: always run every epoch (the PPO papers' implementations stop early)."})


@dataclass
class PPORecipeConfig:
    """The ppo recipe: PPO with a value head, against a reward model or reward functions."""

    model: ModelArguments
    data: DataArguments
    rewards: RewardSourceArguments
    ppo: PPOArguments
    guard: GuardArguments
    training: TrainerArguments
    run: RunArguments
