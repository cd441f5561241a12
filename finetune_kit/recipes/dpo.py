"""Direct preference optimisation (DPO) of a causal LM on chosen / rejected pairs, with trl's DPOTrainer.

    finetune-kit train dpo --config dpo_lora_smollm2 [--key value ...]
    accelerate launch -m finetune_kit.recipes.dpo --config dpo_lora_smollm2

The reference policy costs no second copy with LoRA: it is the base model with the adapters disabled. Without LoRA
trl loads a frozen copy; `ref_model_name_or_path` names an explicit one; `precompute_ref_log_probs: true` scores the
data with the reference once, before training. `loss_type` picks trl's variants (sigmoid, ipo, hinge, robust, ...).
Held-out implicit-reward accuracy and margin are reported when there is validation data.
"""

from __future__ import annotations

from transformers import set_seed
from trl import DPOTrainer, get_peft_config

from finetune_kit import recipes
from finetune_kit.config import parse_config
from finetune_kit.config_decoder import DPORecipeConfig
from finetune_kit.data import load_sft_datasets, normalise_pair
from finetune_kit.decisions import Decisions
from finetune_kit.errors import run_cli
from finetune_kit.guards import NonFiniteGuard
from finetune_kit.memory import activation_checkpointing
from finetune_kit.models import load_causal_lm, load_reference_model, load_tokenizer
from finetune_kit.runs import check_output_dir, finish_run
from finetune_kit.trainer_setup import prepare_trainer


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(DPORecipeConfig, argv)
    decisions = Decisions(cfg, argv)  # what was chosen for keys left unset: printed, recorded in run_info.json
    args = cfg.training
    resume = check_output_dir(args.output_dir, cfg.run.overwrite_output_dir, args.resume_from_checkpoint)
    tokenizer = load_tokenizer(cfg.model.tokenizer_name_or_path or cfg.model.model_name_or_path,
                               trust_remote_code=args.trust_remote_code)
    train_dataset, eval_dataset = load_sft_datasets(cfg.data, seed=args.seed, normaliser=normalise_pair)

    decisions.add(cfg, activation_checkpointing(cfg, decisions.user, args.max_length or 1024,
                                                 recipes.get("dpo").sequences_per_example))
    set_seed(args.seed)  # adapters start from the same random init on every run and resume
    model = load_causal_lm(cfg.model, trust_remote_code=args.trust_remote_code)
    ref_model = load_reference_model(cfg.model, cfg.task.ref_model_name_or_path, args.trust_remote_code)

    trainer = DPOTrainer(
        model=model,
        ref_model=ref_model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=get_peft_config(cfg.model),
        callbacks=[NonFiniteGuard(cfg.run.on_nonfinite)],
    )
    metrics = {}
    if eval_dataset is not None:  # before training the policy is the reference: margins 0, the baseline to beat
        metrics.update({k.replace("eval_", "before_"): v for k, v in trainer.evaluate().items()})
    # Atomic checkpoints, resumable length-grouped order, a replaced run kept until the first step succeeds.
    decisions.add(None, *prepare_trainer(trainer, replace=cfg.run.overwrite_output_dir and resume is None))
    metrics.update(trainer.train(resume_from_checkpoint=resume).metrics)
    if eval_dataset is not None:
        metrics.update(trainer.evaluate())
        if trainer.is_world_process_zero():
            print(f"held-out reward accuracy {metrics['before_rewards/accuracies']:.3f} -> "
                  f"{metrics['eval_rewards/accuracies']:.3f}, margin {metrics['before_rewards/margins']:.3f} -> "
                  f"{metrics['eval_rewards/margins']:.3f} on {len(eval_dataset)} pairs")
    finish_run(trainer, cfg, "dpo", metrics, decisions)
    return metrics


if __name__ == "__main__":
    run_cli(main)
