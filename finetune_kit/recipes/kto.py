"""KTO: preference tuning from unpaired answers marked desirable or not, with trl's KTOTrainer.

    finetune-kit train kto --config kto_lora_smollm2 [--key value ...]
    accelerate launch -m finetune_kit.recipes.kto --config kto_lora_smollm2

Rows are prompt / completion / label, or a conversation (`messages` or sharegpt `conversations`) whose last
assistant turn is judged by a boolean `label` (LLaMA-Factory's kto format). As in DPO, the reference is the base
model with LoRA adapters disabled unless `ref_model_name_or_path` names one. `desirable_weight` /
`undesirable_weight` rebalance data with more of one kind (KTO paper: keep weight x count within 1:1 to 4:3).
"""

from __future__ import annotations

from transformers import set_seed
from trl import KTOTrainer, get_peft_config

from finetune_kit import recipes
from finetune_kit.config import parse_config
from finetune_kit.config_decoder import KTORecipeConfig
from finetune_kit.data import load_sft_datasets, normalise_unpaired, require_both_labels
from finetune_kit.decisions import Decisions
from finetune_kit.errors import run_cli
from finetune_kit.guards import NonFiniteGuard
from finetune_kit.memory import activation_checkpointing
from finetune_kit.models import load_causal_lm, load_reference_model, load_tokenizer
from finetune_kit.runs import check_output_dir, finish_run
from finetune_kit.trainer_setup import prepare_trainer


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(KTORecipeConfig, argv)
    decisions = Decisions(cfg, argv)  # what was chosen for keys left unset: printed, recorded in run_info.json
    args = cfg.training
    resume = check_output_dir(args.output_dir, cfg.run.overwrite_output_dir, args.resume_from_checkpoint)
    tokenizer = load_tokenizer(cfg.model.tokenizer_name_or_path or cfg.model.model_name_or_path,
                               trust_remote_code=args.trust_remote_code)
    train_dataset, eval_dataset = load_sft_datasets(cfg.data, seed=args.seed, normaliser=normalise_unpaired)
    good = require_both_labels(train_dataset, cfg.data.source_label())
    print(f"KTO data: {good} desirable, {len(train_dataset) - good} undesirable training rows")

    decisions.add(cfg, activation_checkpointing(cfg, decisions.user, args.max_length or 1024,
                                                 recipes.get("kto").sequences_per_example))
    set_seed(args.seed)  # adapters start from the same random init on every run and resume
    model = load_causal_lm(cfg.model, trust_remote_code=args.trust_remote_code)
    ref_model = load_reference_model(cfg.model, cfg.task.ref_model_name_or_path, args.trust_remote_code)

    trainer = KTOTrainer(
        model=model,
        ref_model=ref_model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=get_peft_config(cfg.model),
        callbacks=[NonFiniteGuard(cfg.run.on_nonfinite)],
    )
    # Atomic checkpoints, resumable length-grouped order, a replaced run kept until the first step succeeds.
    decisions.add(None, *prepare_trainer(trainer, replace=cfg.run.overwrite_output_dir and resume is None))
    metrics = dict(trainer.train(resume_from_checkpoint=resume).metrics)
    if eval_dataset is not None:
        metrics.update(trainer.evaluate())
    finish_run(trainer, cfg, "kto", metrics, decisions)
    return metrics


if __name__ == "__main__":
    run_cli(main)
