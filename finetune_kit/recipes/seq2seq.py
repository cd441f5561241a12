"""Seq2seq fine-tuning of an encoder-decoder model (T5, BART, Marian, mT5): translation, summarization, any
text-to-text task; LoRA or full.

    finetune-kit train seq2seq --config seq2seq_t5_dates       # offline: a small T5 from a config learns dates
    finetune-kit train seq2seq --config seq2seq_hub            # google/flan-t5-small (needs the Hub)
    accelerate launch -m finetune_kit.recipes.seq2seq --config ...

Rows hold a source and a target (`source_column` / `target_column`, `column_mapping`), or a `translation` mapping
read with `source_lang` / `target_lang`. T5 checkpoints expect a task prefix (`source_prefix`, e.g. "summarize: ").
Every row is read and every target measured in tokens before the model loads: a target over max_target_length is
refused by name (truncate_targets or skip_invalid_rows accept it). transformers' DataCollatorForSeq2Seq pads labels
with -100, so padding carries no loss; Seq2SeqTrainer evaluates by generating (greedy, or beam search with
generation_num_beams) and the texts are scored with exact match, sacreBLEU, chrF and ROUGE (local evaluate modules).
"""

from __future__ import annotations

from datasets import Dataset
from transformers import AutoModelForSeq2SeqLM, DataCollatorForSeq2Seq, Seq2SeqTrainer, set_seed

from finetune_kit.config import parse_config
from finetune_kit.config_seq2seq import Seq2SeqRecipeConfig
from finetune_kit.data import cap_train
from finetune_kit.decisions import Decision, Decisions
from finetune_kit.errors import UserError, run_cli
from finetune_kit.guards import NonFiniteGuard
from finetune_kit.models import load_tokenizer, resolve_checkpoint, with_task_adapters
from finetune_kit.runs import check_output_dir, finish_run
from finetune_kit.tasks import seq2seq as s2s
from finetune_kit.trainer_setup import prepare_trainer


def generation_length(task, user: set[str]) -> Decision | None:
    """Generation during evaluation stops at the longest target training allows; transformers' fallback (the
    checkpoint's generation config, 20 tokens for a T5 built from a config) would cut longer answers and score them
    wrong. For an encoder-decoder, max_length counts the decoder start token: hence + 1."""
    if "generation_max_length" in user:
        return None
    return Decision("generation_max_length", task.max_target_length + 1, "max_target_length + the decoder start token")


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(Seq2SeqRecipeConfig, argv)
    decisions = Decisions(cfg, argv)  # what was chosen for keys left unset: printed, recorded in run_info.json
    args, task = cfg.training, cfg.task
    resume = check_output_dir(args.output_dir, cfg.run.overwrite_output_dir, args.resume_from_checkpoint)
    decisions.add(cfg, generation_length(task, decisions.user))
    if args.predict_with_generate:
        s2s.require_metric_packages()

    rows = s2s.pair_splits(cfg)  # every row of every file checked, and split, before the tokenizer and the model load
    tokenizer = load_tokenizer(cfg.model.tokenizer_name_or_path or cfg.model.model_name_or_path,
                               trust_remote_code=args.trust_remote_code)
    for name, file in (("train", cfg.data.dataset_name),
                       ("validation", cfg.data.eval_dataset_name or cfg.data.dataset_name),  # or split off train
                       ("test", task.test_dataset_name)):
        if name in rows:  # a target over max_target_length: refused, cut or dropped (counted), as task keys say
            rows[name], _ = s2s.within_target_limit(rows[name], tokenizer, task, cfg.data.skip_invalid_rows, file)
    splits = {name: Dataset.from_list([pair for _, pair in part]) for name, part in rows.items()}
    splits["train"] = cap_train(splits["train"], cfg.data.max_train_samples)
    splits = {name: part.map(s2s.encoder(tokenizer, task), batched=True, remove_columns=part.column_names)
              for name, part in splits.items()}

    set_seed(args.seed)  # adapters start from the same random init on every run and resume
    source = resolve_checkpoint(cfg.model.model_name_or_path, whole=True)
    try:
        model = AutoModelForSeq2SeqLM.from_pretrained(source, trust_remote_code=args.trust_remote_code)
    except ValueError as err:
        if "Unrecognized configuration class" not in str(err):
            raise
        raise UserError(f"{cfg.model.model_name_or_path} is not an encoder-decoder model (T5, BART, Marian, mT5, "
                        "...); the seq2seq recipe needs one (`finetune-kit inspect` names the recipes that fit a "
                        "checkpoint).") from None
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        raise UserError(f"the tokenizer has {len(tokenizer)} tokens, the model's embeddings only "
                        f"{model.get_input_embeddings().num_embeddings}: they were not made for each other.")
    if cfg.model.use_peft:  # adapters on the encoder and decoder; the tied LM head stays frozen
        model = with_task_adapters(model, cfg.model, "SEQ_2_SEQ_LM", head=None)

    trainer = Seq2SeqTrainer(
        model=model, args=args, train_dataset=splits["train"], eval_dataset=splits.get("validation"),
        processing_class=tokenizer,
        # Labels padded with -100 (ignored by the loss); decoder inputs built from the labels by the model.
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100),
        compute_metrics=s2s.metrics_fn(tokenizer) if args.predict_with_generate else None,
        callbacks=[NonFiniteGuard(cfg.run.on_nonfinite)],
    )
    # Atomic checkpoints, resumable length-grouped order, a replaced run kept until the first step succeeds.
    decisions.add(None, *prepare_trainer(trainer, replace=cfg.run.overwrite_output_dir and resume is None))
    metrics = dict(trainer.train(resume_from_checkpoint=resume).metrics)
    final = "test" if "test" in splits else "validation" if "validation" in splits else None
    if final is not None:
        output = trainer.predict(splits[final], metric_key_prefix="test" if final == "test" else "eval")
        metrics.update(output.metrics)
        if args.predict_with_generate and trainer.is_world_process_zero():
            _print_examples(tokenizer, output, rows.get(final))

    finish_run(trainer, cfg, "seq2seq", metrics, decisions)
    return metrics


def _print_examples(tokenizer, output, rows, count: int = 3) -> None:
    """A few generated outputs beside their targets: what the metrics summarise."""
    generated = s2s.decode(tokenizer, output.predictions[:count])
    targets = s2s.decode(tokenizer, output.label_ids[:count])
    for i, (text, target) in enumerate(zip(generated, targets)):
        where = f"{rows[i][0]}: " if rows else ""
        print(f"{where}generated {text!r}, target {target!r}")


if __name__ == "__main__":
    run_cli(main)
