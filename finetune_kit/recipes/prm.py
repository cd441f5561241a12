"""Process reward model (PRM): a 2-way token-classification head that judges each step of a solution.

    finetune-kit train prm --config prm_lora_smollm2
    accelerate launch -m finetune_kit.recipes.prm --config prm_lora_smollm2

trl dropped its PRMTrainer in 1.13; this one is ours, on transformers' Trainer. Rows are trl's stepwise format:
`prompt`, `completions` (the steps) and `labels` (one true / false per step), every row checked before the model
loads (finetune_kit/tasks/steps.py). Prompt and steps are joined by `step_separator`, and only the separator token
after each step is trained (every other position is ignored), as trl's PRMTrainer did: on a causal LM that token
sees the steps so far and none after. Held-out rows are scored before and after training: step accuracy and the
error class's precision / recall / F1, and solution ranking: within each problem (rows sharing a prompt), how often a
fully right solution scores above a wrong one, the score being the min (or product) of its steps' P(right). The run
folder is a reward for grpo / rloo / ppo (`reward_model: <run>`, finetune_kit/rl/prm.py), scored the same way.
"""

from __future__ import annotations

import torch
from datasets import Dataset, Features, Sequence, Value
from transformers import AutoModelForTokenClassification, DataCollatorForTokenClassification, Trainer, set_seed

from finetune_kit.config import parse_config
from finetune_kit.config_decoder import PRMRecipeConfig
from finetune_kit.decisions import Decisions
from finetune_kit.errors import DataError, run_cli
from finetune_kit.guards import NonFiniteGuard
from finetune_kit.memory import activation_checkpointing
from finetune_kit.models import load_model, load_tokenizer, with_task_adapters
from finetune_kit.rl.prm import step_probabilities
from finetune_kit.runs import check_output_dir, finish_run
from finetune_kit.tasks import steps
from finetune_kit.trainer_setup import prepare_trainer

LABELS = {0: "wrong", 1: "right"}


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(PRMRecipeConfig, argv)
    decisions = Decisions(cfg, argv)  # what was chosen for keys left unset: printed, recorded in run_info.json
    args, task, data = cfg.training, cfg.task, cfg.data
    resume = check_output_dir(args.output_dir, cfg.run.overwrite_output_dir, args.resume_from_checkpoint)

    train_rows, eval_rows, test_rows = steps.step_splits(cfg)  # every row checked and split, before the model loads
    train_rows = train_rows[:data.max_train_samples] if data.max_train_samples else train_rows

    tokenizer = load_tokenizer(cfg.model.tokenizer_name_or_path or cfg.model.model_name_or_path,
                               revision=cfg.model.model_revision, trust_remote_code=args.trust_remote_code)
    train = tokenized(train_rows, steps.encoder(tokenizer, task.step_separator, task.max_length,
                                                task.train_on_last_step_only), "training", task)
    # Held-out rows are scored by held_out(); tokenized, they are what eval_strategy evaluates during training.
    evaluation = tokenized(eval_rows, steps.encoder(tokenizer, task.step_separator, task.max_length), "validation",
                           task) if eval_rows else None

    decisions.add(cfg, activation_checkpointing(cfg, decisions.user, max(map(len, train["input_ids"]))))
    set_seed(args.seed)  # the new head and adapters start from the same random init on every run and resume
    model = load_model(AutoModelForTokenClassification, cfg.model, args.trust_remote_code, num_labels=2,
                       id2label=LABELS, label2id={v: k for k, v in LABELS.items()}, pad_token_id=tokenizer.pad_token_id)
    head = "score" if hasattr(model, "score") else "classifier"  # decoders' token head; BERT's
    if cfg.model.load_in_4bit or cfg.model.load_in_8bit:
        full_precision_head(model, head)
    if cfg.model.use_peft:  # adapters on the body; the new head trained whole
        model = with_task_adapters(model, cfg.model, "TOKEN_CLS", head=head)

    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=evaluation,
                      processing_class=tokenizer, data_collator=DataCollatorForTokenClassification(tokenizer),
                      compute_metrics=steps.metrics_fn(), callbacks=[NonFiniteGuard(cfg.run.on_nonfinite)])
    metrics = {}
    if evaluation is not None:  # the untrained head: the baseline to beat
        metrics.update(held_out(trainer, eval_rows, "before", task))
    # Atomic checkpoints, resumable length-grouped order, a replaced run kept until the first step succeeds.
    decisions.add(None, *prepare_trainer(trainer, replace=cfg.run.overwrite_output_dir and resume is None))
    metrics.update(trainer.train(resume_from_checkpoint=resume).metrics)
    if evaluation is not None:
        metrics.update(held_out(trainer, eval_rows, "eval", task))
    if test_rows:
        metrics.update(held_out(trainer, test_rows, "test", task))
    if trainer.is_world_process_zero():
        summary(metrics)
    if cfg.model.load_in_4bit or cfg.model.load_in_8bit:
        # The config.json saved beside the adapter is how the run loads back (as a reward, with predict): left in, its
        # 4-bit settings would quantize the base again around the saved head, which bitsandbytes cannot fill.
        del trainer.model.get_base_model().config.quantization_config
    finish_run(trainer, cfg, "prm", metrics, decisions)
    return metrics


def full_precision_head(model, name: str) -> None:
    """A plain Linear for the new head of a 4/8-bit model. transformers keeps the module of the model's last *weight*
    out of quantization, but this head ends with a bias, so bitsandbytes wraps it and, the head being new (not in
    the checkpoint), leaves it unquantized in a layer that then cannot run."""
    old = getattr(model, name)
    new = torch.nn.Linear(old.in_features, old.out_features, bias=old.bias is not None, device=old.weight.device)
    model._init_weights(new)
    setattr(model, name, new)


def tokenized(rows: list[dict], encode, what: str, task) -> Dataset:
    """Rows -> input_ids and labels; says how many lose steps to max_length, refuses a set with no label left."""
    # Features given: left to infer them, `map` would cast the new integer labels to the old column's bool type.
    features = Features({"input_ids": Sequence(Value("int64")), "labels": Sequence(Value("int64"))})
    dataset = Dataset.from_list(rows).map(encode, batched=True, remove_columns=["prompt", "completions", "labels"],
                                          features=features)
    wanted = [1 if task.train_on_last_step_only and what == "training" else len(r["labels"]) for r in rows]
    kept = [sum(label != steps.IGNORE for label in labels) for labels in dataset["labels"]]
    if not any(kept):
        raise DataError(f"no {what} row keeps a labelled step within max_length {task.max_length}; raise max_length.")
    cut = sum(k < w for k, w in zip(kept, wanted))
    if cut:
        print(f"warning: {cut} of {len(rows)} {what} rows are longer than max_length={task.max_length}: their last "
              "steps are cut off (not trained or scored)")
    return dataset


def held_out(trainer, rows: list[dict], prefix: str, task) -> dict:
    """Loss, step metrics and solution ranking of held-out rows, from one pass of the scoring the reward uses (every
    step labelled, also under train_on_last_step_only); logged like an evaluation."""
    probabilities = step_probabilities(trainer.model, trainer.processing_class, [r["prompt"] for r in rows],
                                       [r["completions"] for r in rows], task.step_separator, task.max_length,
                                       trainer.args.per_device_eval_batch_size)
    cut = sum(len(p) < len(r["labels"]) for p, r in zip(probabilities, rows))
    if cut and prefix == "test":  # validation rows were counted when tokenized
        print(f"warning: {cut} of {len(rows)} {prefix} rows are longer than max_length={task.max_length}: their last "
              "steps are not scored")
    metrics = {f"{prefix}_{k}": v for k, v in steps.held_out_metrics(rows, probabilities, task.solution_score).items()}
    trainer.log(dict(metrics))
    return metrics


def summary(m: dict) -> None:
    def figure(prefix: str, key: str) -> str:  # "before -> after" for the validation rows, else the value
        before = f"{m[f'before_{key}']:.3f} -> " if prefix == "eval" and f"before_{key}" in m else ""
        return f"{before}{m[f'{prefix}_{key}']:.3f}"

    for prefix in ("eval", "test"):
        if f"{prefix}_step_accuracy" not in m:
            continue
        line = (f"{prefix}: step accuracy {figure(prefix, 'step_accuracy')}, error F1 {figure(prefix, 'error_f1')} "
                f"({m[f'{prefix}_labelled_steps']} steps)")
        if f"{prefix}_solution_pairwise_accuracy" in m:
            line += (f"; solutions: pairwise accuracy {figure(prefix, 'solution_pairwise_accuracy')} "
                     f"({m[f'{prefix}_solution_pairs']} pairs), best-of-n {figure(prefix, 'best_of_n_accuracy')} "
                     f"({m[f'{prefix}_ranked_problems']} problems)")
        print(line)


if __name__ == "__main__":
    run_cli(main)
