"""Image-text contrastive fine-tuning of a dual encoder (CLIP, SigLIP): the model's own in-batch loss, LoRA on the
attention projections of both towers or full; zero-shot classification scored before and after.

    finetune-kit train clip --config clip_tiny_shapes      # offline: a tiny CLIP built from a config learns shapes
    finetune-kit train clip --config clip_hub              # openai/clip-vit-base-patch32 (needs the Hub)
    accelerate launch -m finetune_kit.recipes.clip --config ...

Rows hold an image path and a caption (`image_column` / `caption_column`), or come from an image folder
root/<label>/* with `caption_template` as the caption. Every image is decoded and every caption checked before the
model loads. Each batch goes through the checkpoint's own processor (image processor + tokenizer, saved with the run)
and the model's `return_loss=True` loss: CLIP's symmetric cross-entropy over the batch's image-caption pairs, SigLIP's
pairwise sigmoid. Zero-shot: held-out labelled images, one prompt per class from the template, argmax cosine.
"""

from __future__ import annotations

from transformers import Trainer, set_seed

from finetune_kit.config import parse_config
from finetune_kit.config_clip import CLIPRecipeConfig
from finetune_kit.decisions import Decision, Decisions
from finetune_kit.errors import run_cli
from finetune_kit.guards import NonFiniteGuard
from finetune_kit.models import with_task_adapters
from finetune_kit.runs import check_output_dir, finish_run
from finetune_kit.tasks import image_text as it
from finetune_kit.trainer_setup import prepare_trainer


def caption_length(config, user: set[str]) -> Decision | None:
    """Captions are cut where the text tower's position embeddings end; past them the model cannot read."""
    if "max_length" in user:
        return None
    return Decision("max_length", it.text_limit(config), "the text tower's max_position_embeddings")


def text_padding(task, config, user: set[str]) -> Decision | None:
    """SigLIP pools its text tower's last position and was trained on captions padded to a fixed length: pad so, or
    its features differ from the pretrained ones. CLIP pools the end-of-text token: the longest caption suffices."""
    if task.text_padding != "auto":
        return None
    siglip = config.model_type.startswith("siglip")
    return Decision("text_padding", "max_length" if siglip else "longest",
                    "SigLIP pools the last text position (trained padded to max_length)" if siglip
                    else "the text tower pools its end-of-text token; padding carries nothing")


def lora_targets(model_args, user: set[str]) -> Decision | None:
    """LoRA on the attention projections of both towers, as CLIP LoRA papers do; all-linear would also adapt the
    MLPs and the projection heads, which the contrastive alignment lives in."""
    if not model_args.use_peft or "lora_target_modules" in user:
        return None
    return Decision("lora_target_modules", it.ATTENTION_PROJECTIONS, "the attention projections of both towers")


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(CLIPRecipeConfig, argv)
    decisions = Decisions(cfg, argv)  # what was chosen for keys left unset: printed, recorded in run_info.json
    args, task = cfg.training, cfg.task
    resume = check_output_dir(args.output_dir, cfg.run.overwrite_output_dir, args.resume_from_checkpoint)

    rows, splits = it.image_text_splits(cfg)  # every image decoded, every caption checked, before the model loads
    set_seed(args.seed)  # adapters start from the same random init on every run and resume
    model, processor = it.load_dual_encoder(cfg.model.model_name_or_path, args.trust_remote_code)
    decisions.add(cfg, caption_length(model.config, decisions.user),
                  text_padding(task, model.config, decisions.user), lora_targets(cfg.model, decisions.user))
    _, cut = it.over_limit(processor.tokenizer, list(splits["train"]["caption"]), task.max_length)
    if cut:
        print(f"{cfg.data.dataset_name}: {cut} of {len(splits['train'])} captions are longer than max_length="
              f"{task.max_length} tokens and are truncated")
    if cfg.model.use_peft:  # adapters in both towers; logit_scale and the projections stay as they are
        model = with_task_adapters(model, cfg.model, None, head=None)
    if task.freeze_tower != "none":
        print(f"freeze_tower: {it.freeze_tower(model, task.freeze_tower):,} parameters of the {task.freeze_tower} "
              "tower frozen")

    args.remove_unused_columns = False  # the collator reads 'image' and 'caption' itself
    trainer = Trainer(model=model, args=args, train_dataset=splits["train"], eval_dataset=splits.get("validation"),
                      processing_class=processor,  # saved with the run: the same preprocessing at prediction time
                      data_collator=it.collator(processor, task.max_length, task.text_padding),
                      callbacks=[NonFiniteGuard(cfg.run.on_nonfinite)])
    # Atomic checkpoints, a replaced run kept until the first step succeeds.
    decisions.add(None, *prepare_trainer(trainer, replace=cfg.run.overwrite_output_dir and resume is None))
    held_out = it.zero_shot_set(rows, splits, cfg)
    before = _zero_shot(trainer, processor, held_out, task, "before training") if held_out else None
    metrics = dict(trainer.train(resume_from_checkpoint=resume).metrics)
    if "validation" in splits:
        metrics.update(trainer.evaluate())
    if held_out:
        after = _zero_shot(trainer, processor, held_out, task, "after training")
        metrics.update(zero_shot_accuracy_before=before["accuracy"], zero_shot_accuracy=after["accuracy"],
                       zero_shot={"source": held_out[2], "images": after["images"], "prompts": after["prompts"],
                                  "per_class": {name: {"images": counts["images"],
                                                       "correct_before": before["per_class"][name]["correct"],
                                                       "correct": counts["correct"]}
                                                for name, counts in after["per_class"].items()}})
    else:
        print("zero-shot: no labelled held-out images (set zero_shot_dataset_name, or train on an image folder with "
              "eval_split_ratio)")

    finish_run(trainer, cfg, "clip", metrics, decisions)
    return metrics


def _zero_shot(trainer, processor, held_out, task, when: str) -> dict:
    images, labels, source = held_out
    result = it.zero_shot(trainer.model, processor, images, labels, task.caption_template, task.max_length,
                          task.text_padding, trainer.args.per_device_eval_batch_size)
    if trainer.is_world_process_zero():
        print(f"zero-shot accuracy {when}: {result['accuracy']:.3f} on {result['images']} images of "
              f"{result['classes']} classes ({source}; chance {1 / result['classes']:.3f})", flush=True)
    return result


if __name__ == "__main__":
    run_cli(main)
