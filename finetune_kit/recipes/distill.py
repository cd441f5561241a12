"""Knowledge distillation: a student learns a teacher's next-token distributions (trl's GKDTrainer, Agarwal et al.
2024), on the SFT formats.

    finetune-kit train distill --config distill_smollm2 [--key value ...]
    accelerate launch -m finetune_kit.recipes.distill --config distill_smollm2

The teacher (`teacher_model_name_or_path`) is any checkpoint the other recipes load: a hub id, a folder, an embedded
short name, or a run folder (a LoRA run is merged into its base). The student is `model_name_or_path`, or, with
`student_config`, a new model of that checkpoint's architecture, tokenizer and vocabulary with the sizes given
(random weights, all trained). The loss is the generalized Jensen-Shannon divergence between the two (`beta`: 0
forward KL, 1 reverse KL) over the answer tokens; `lmbda` is the share of steps trained on the student's own sampled
answers (on-policy), the rest on the data's answers; `seq_kd: true` trains those on the teacher's answers instead.

Why GKD and not trl's stable DistillationTrainer: in trl 1.16 that one trains on the student's own samples only (it
reads the prompt column and generates every step); it would drop the data's answers, and a student built from a
config samples noise at first. GKD covers that case too (`lmbda: 1`).

With held-out rows (`eval_split_ratio` / `eval_dataset_name`) the student is scored against the teacher before and
after training, teacher-forced on the held-out answers: the share of answer positions where both put the same next
token first, and the KL(teacher || student) per token (finetune_kit/distillation.py; `metrics.before` / `after`).
"""

from __future__ import annotations

import warnings

from transformers import AutoModelForCausalLM, set_seed
from trl import get_peft_config
from trl.import_utils import TRLExperimentalWarning

from finetune_kit.config import parse_config
from finetune_kit.config_distill import DistillRecipeConfig
from finetune_kit.data import load_sft_datasets, tokenize_sft_dataset
from finetune_kit.decisions import Decisions
from finetune_kit.distillation import agreement, as_conversations, require_shared_vocabulary, student_config
from finetune_kit.errors import run_cli
from finetune_kit.guards import NonFiniteGuard
from finetune_kit.memory import activation_checkpointing, longest_sequence
from finetune_kit.models import load_causal_lm, load_reference_model, load_tokenizer
from finetune_kit.runs import check_output_dir, finish_run
from finetune_kit.trainer_setup import prepare_trainer

with warnings.catch_warnings():
    warnings.simplefilter("ignore", TRLExperimentalWarning)
    from trl.experimental.gkd import GKDTrainer


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(DistillRecipeConfig, argv)
    decisions = Decisions(cfg, argv)  # what was chosen for keys left unset: printed, recorded in run_info.json
    args, student_args = cfg.training, cfg.model
    resume = check_output_dir(args.output_dir, cfg.run.overwrite_output_dir, args.resume_from_checkpoint)
    new_student = student_config(student_args.model_name_or_path, student_args.student_config,
                                 args.trust_remote_code) if student_args.student_config else None
    tokenizer = load_tokenizer(student_args.tokenizer_name_or_path or student_args.model_name_or_path,
                               revision=student_args.model_revision, trust_remote_code=args.trust_remote_code)
    train_rows, eval_rows = load_sft_datasets(cfg.data, seed=args.seed)
    train_rows = as_conversations(train_rows, cfg.data.source_label())
    eval_rows = as_conversations(eval_rows, cfg.data.eval_dataset_name or "held-out rows") if eval_rows is not None else None
    # As `check` decides it: from the longest conversation and model_name_or_path's config (the template, under
    # student_config: an over-estimate of a smaller student; set activation_checkpointing to choose).
    longest = longest_sequence(tokenize_sft_dataset(train_rows, tokenizer), args.max_length)
    decisions.add(cfg, activation_checkpointing(cfg, decisions.user, longest))

    set_seed(args.seed)  # the student's random weights (student_config) and its adapters are the same every run
    if new_student is not None:
        student = AutoModelForCausalLM.from_config(new_student, trust_remote_code=args.trust_remote_code)
    else:
        student = load_causal_lm(student_args, trust_remote_code=args.trust_remote_code)
    teacher = load_reference_model(student_args, args.teacher_model_name_or_path, args.trust_remote_code)
    require_shared_vocabulary(student, teacher, student_args.model_name_or_path, args.teacher_model_name_or_path)
    print(f"student: {_size(student)} ({'new, from student_config' if new_student is not None else 'loaded'}); "
          f"teacher: {_size(teacher)} ({args.teacher_model_name_or_path})", flush=True)

    trainer = GKDTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=train_rows,
        eval_dataset=eval_rows,
        processing_class=tokenizer,
        peft_config=get_peft_config(student_args),
        callbacks=[NonFiniteGuard(cfg.run.on_nonfinite)],
    )
    # Atomic checkpoints, a replaced run kept until the first step succeeds.
    decisions.add(None, *prepare_trainer(trainer, replace=cfg.run.overwrite_output_dir and resume is None))
    metrics = {}
    if eval_rows is not None and resume is None:
        metrics["before"] = _scored(trainer, eval_rows, "before")
    metrics.update(trainer.train(resume_from_checkpoint=resume).metrics)
    if eval_rows is not None:
        metrics["after"] = _scored(trainer, eval_rows, "after")
    finish_run(trainer, cfg, "distill", metrics, decisions)
    return metrics


def _scored(trainer, rows, when: str) -> dict:
    result = agreement(trainer.model, trainer.teacher_model, trainer.data_collator, rows,
                       trainer.args.per_device_eval_batch_size)
    if trainer.is_world_process_zero():
        print(f"held-out ({when}): top-1 agreement with the teacher {result['top1_agreement']:.3f}, KL(teacher || "
              f"student) {result['kl_teacher_student']:.3f} nats per token, {result['answer_tokens']} answer tokens",
              flush=True)
    return result


def _size(model) -> str:
    config = model.config.get_text_config()
    params = sum(p.numel() for p in model.parameters())
    return f"{params / 1e6:.1f}M parameters, {config.num_hidden_layers} layers x {config.hidden_size}"


if __name__ == "__main__":
    run_cli(main)
