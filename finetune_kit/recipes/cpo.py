"""CPO and SimPO: reference-free preference optimisation of a causal LM on chosen / rejected pairs, with trl's
CPOTrainer.

    finetune-kit train cpo --config cpo_lora_smollm2 [--key value ...]
    accelerate launch -m finetune_kit.recipes.cpo --config cpo_lora_smollm2

`loss_type` picks the loss: sigmoid (CPO, Xu et al. 2024: DPO's loss on the policy's own summed log-probabilities,
plus `cpo_alpha` times the NLL of the chosen answer), hinge, ipo, or simpo (Meng et al. 2024: length-averaged
log-probabilities, a target margin `simpo_gamma`; with `cpo_alpha: 0` it is pure SimPO, with cpo_alpha > 0 CPO-SimPO).
There is no reference model: no second forward pass, no frozen copy. SimPO's `beta` is large (about 2) because its
reward is a per-token average, not DPO's summed log ratio.
Held-out reward accuracy and margin (beta times the policy's log-probability, chosen minus rejected) are reported
before and after training when there is validation data; unlike DPO's, they are not zero before training.
"""

from __future__ import annotations

import warnings

from transformers import set_seed
from trl import get_peft_config
from trl.import_utils import TRLExperimentalWarning

with warnings.catch_warnings():  # trl.experimental's import notice, for every run: see finetune_kit/config_decoder.py
    warnings.simplefilter("ignore", TRLExperimentalWarning)
    from trl.experimental.cpo import CPOTrainer

from finetune_kit import recipes
from finetune_kit.config import parse_config
from finetune_kit.config_decoder import CPORecipeConfig
from finetune_kit.data import load_sft_datasets, normalise_pair, pairs_with_answer_room
from finetune_kit.decisions import Decisions
from finetune_kit.errors import run_cli
from finetune_kit.guards import NonFiniteGuard
from finetune_kit.memory import activation_checkpointing
from finetune_kit.models import load_causal_lm, load_tokenizer
from finetune_kit.runs import check_output_dir, finish_run
from finetune_kit.trainer_setup import prepare_trainer


def main(argv: list[str] | None = None) -> dict:
    return train_reference_free("cpo", CPORecipeConfig, CPOTrainer, argv)


def train_reference_free(name: str, config_type: type, trainer_type: type, argv: list[str] | None) -> dict:
    """The whole recipe for trl's reference-free pair trainers, which take the same arguments (CPO here, ORPO in
    finetune_kit/recipes/orpo.py): they differ only in their loss."""
    cfg = parse_config(config_type, argv)
    decisions = Decisions(cfg, argv)  # what was chosen for keys left unset: printed, recorded in run_info.json
    args = cfg.training
    resume = check_output_dir(args.output_dir, cfg.run.overwrite_output_dir, args.resume_from_checkpoint)
    tokenizer = load_tokenizer(cfg.model.tokenizer_name_or_path or cfg.model.model_name_or_path,
                               trust_remote_code=args.trust_remote_code)
    train_dataset, eval_dataset = load_sft_datasets(cfg.data, seed=args.seed, normaliser=normalise_pair)
    # trl keeps prompts whole and cuts answers: a prompt filling max_length (512: trl's value when unset) would leave
    # an empty answer: NaN under the averaged losses (simpo, ipo), nothing learnt under the others. Refused, or
    # dropped with skip_invalid_rows.
    room = {"tokenizer": tokenizer, "max_length": args.max_length or 512, "skip": cfg.data.skip_invalid_rows}
    train_dataset = pairs_with_answer_room(train_dataset, where=cfg.data.source_label(), **room)
    if eval_dataset is not None:
        eval_dataset = pairs_with_answer_room(eval_dataset, where="validation pairs", **room)

    decisions.add(cfg, activation_checkpointing(cfg, decisions.user, args.max_length or 1024,
                                                 recipes.get(name).sequences_per_example))
    set_seed(args.seed)  # adapters start from the same random init on every run and resume
    model = load_causal_lm(cfg.model, trust_remote_code=args.trust_remote_code)

    trainer = trainer_type(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=get_peft_config(cfg.model),
        callbacks=[NonFiniteGuard(cfg.run.on_nonfinite)],
    )
    metrics = {}
    if eval_dataset is not None:  # the starting policy's margins: the baseline to beat
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
    finish_run(trainer, cfg, name, metrics, decisions)
    return metrics


if __name__ == "__main__":
    run_cli(main)
