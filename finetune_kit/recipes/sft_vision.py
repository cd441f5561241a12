"""Supervised fine-tuning of a vision-language model (SmolVLM / Idefics3, LLaVA, Qwen2-VL, ...) on image + chat rows:
LoRA on the language model, or full.

    finetune-kit train sft_vision --config sft_vision_tiny_shapes   # offline: a tiny SmolVLM-shaped model, shapes
    finetune-kit train sft_vision --config sft_vision_hub           # HuggingFaceTB/SmolVLM-256M-Instruct (the Hub)
    accelerate launch -m finetune_kit.recipes.sft_vision --config ...

Rows are trl's vision format (`messages` with image parts + `images`, paths relative to the data file) or LLaVA /
ShareGPT (`conversations` with `<image>` in the text); every row is read and every image decoded before anything
loads. trl's SFTTrainer trains with the checkpoint's AutoProcessor: its vision collator renders each batch with the
chat template, expands every image into its image tokens and cuts at max_length. A cut inside the image tokens stops
training at that batch (transformers: image features and image tokens do not match), so every row is encoded here
first, exactly as the collator will, and such a row is refused by name before the model loads (`check` says the same).
With a chat template trl can mask, the loss covers the answers only; the prompt and its image tokens carry none.
"""

from __future__ import annotations

from transformers import set_seed
from trl import SFTTrainer, get_peft_config

from finetune_kit.config import parse_config
from finetune_kit.config_vision_chat import VisionSFTRecipeConfig
from finetune_kit.data import cap_train
from finetune_kit.decisions import Decision, Decisions
from finetune_kit.errors import run_cli
from finetune_kit.guards import NonFiniteGuard
from finetune_kit.runs import check_output_dir, finish_run
from finetune_kit.tasks import vision_chat as vc
from finetune_kit.trainer_setup import prepare_trainer


def activation_checkpointing(user: set[str]) -> Decision | None:
    """Off where unset (transformers' default; trl's is on): the memory estimate that decides it for the text recipes
    has no model of a vision tower yet. Long rows or big images on a small GPU: set activation_checkpointing: true."""
    if user & {"activation_checkpointing", "gradient_checkpointing"}:
        return None
    return Decision("activation_checkpointing", False, "no memory estimate for vision-language models yet; set it "
                    "true to trade ~25% speed for activation memory")


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(VisionSFTRecipeConfig, argv)
    decisions = Decisions(cfg, argv)  # what was chosen for keys left unset: printed now, recorded in run_info.json
    args = cfg.training
    # Everything checkable happens before weights load: output folder, every row and image, every row's tokens.
    resume = check_output_dir(args.output_dir, cfg.run.overwrite_output_dir, args.resume_from_checkpoint)
    rows = vc.chat_splits(cfg)  # every row read, every image decoded, validation split off, before weights load
    processor = vc.load_processor(cfg.model, args)
    decisions.add(cfg, vc.answers_only(args, processor), activation_checkpointing(decisions.user))

    splits = {}
    for name, part in rows.items():  # a row whose image tokens max_length would cut: refused (or dropped), named
        label = vc.LABELS[name]
        splits[name], _, cut, no_answer = vc.within_max_length(vc.to_dataset(part), [w for w, _ in part], processor,
                                                               args, cfg.data.skip_invalid_rows, label)
        for warning in vc.cut_warnings(label, len(splits[name]), cut, no_answer, args.max_length):
            print(warning)
    splits["train"] = cap_train(splits["train"], cfg.data.max_train_samples)

    set_seed(args.seed)  # adapters start from the same random init on every run and resume
    model = vc.load_model(cfg.model, args)
    decisions.add(cfg, vc.lora_targets(model, cfg.model, decisions.user))
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=splits["train"],
        eval_dataset=splits.get("validation"),
        processing_class=processor,  # a ProcessorMixin: trl picks its vision collator for the image rows
        peft_config=get_peft_config(cfg.model),
        callbacks=[NonFiniteGuard(cfg.run.on_nonfinite)],
    )
    # Atomic checkpoints, a replaced run kept until the first step succeeds.
    decisions.add(None, *prepare_trainer(trainer, replace=cfg.run.overwrite_output_dir and resume is None))
    metrics = dict(trainer.train(resume_from_checkpoint=resume).metrics)
    if "validation" in splits:
        metrics.update(trainer.evaluate())
    finish_run(trainer, cfg, "sft_vision", metrics, decisions)
    return metrics


if __name__ == "__main__":
    run_cli(main)
