"""Probe for #23 (make sft's control correctness): the shipped make sft config trained with an extra KL term that
holds the tuned model to the base model on the ordinary rows, then scored as make sft scores it.

    python -m finetune_kit.demo data --out DATA
    python -m finetune_kit.demo score --model smollm2-135m-instruct --heldout DATA/heldout.jsonl --save BEFORE.json
    python benchmarks/sft_anchor_probe.py --anchor 1 --data DATA --before BEFORE.json --out RUN [--seed 43]

Loss = the SFT loss + anchor * KL(base || tuned) of the next-token distributions, averaged over every position
(prompt and reply) of the rows whose text does not name the identity (`--exclude`); the base is the LoRA model with
its adapter disabled, so no second model is loaded. A measurement, not a recipe option: it did not lift control
correctness to the base's (results/make_sft_demo.json, variants_session21)."""
import argparse
import subprocess
import sys

import torch
from trl import SFTTrainer

import finetune_kit.recipes.sft as sft_recipe


def anchored_trainer(anchor: float, exclude: str):
    class AnchoredSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if not model.training:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            forward = {k: v for k, v in inputs.items() if k != "labels"} | {"use_cache": False}
            with torch.no_grad(), model.disable_adapter():
                base = model(**forward).logits[:, :-1].float().log_softmax(-1)
            logits = model(**forward).logits[:, :-1].float()
            target = inputs["labels"][:, 1:]
            tokens = (target != -100).sum() if num_items_in_batch is None else num_items_in_batch
            sft = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, ignore_index=-100,
                                                    reduction="sum") / tokens
            kl = (base.exp() * (base - logits.log_softmax(-1))).sum(-1)
            ordinary = torch.tensor([exclude not in self.processing_class.decode(row) for row in inputs["input_ids"]])
            where = inputs["attention_mask"][:, 1:].bool() & ordinary[:, None]
            kl = (kl * where).sum() / where.sum().clamp(min=1)
            self._metrics["train"]["anchor_kl"].append(kl.item())
            return sft + anchor * kl
    return AnchoredSFTTrainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--anchor", type=float, default=1.0)
    parser.add_argument("--exclude", default="Quokka", help="rows whose text holds this get no KL term")
    parser.add_argument("--data", required=True, help="folder of `python -m finetune_kit.demo data`")
    parser.add_argument("--before", required=True, help="the base model's saved score")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", default="42")
    args = parser.parse_args()
    sft_recipe.SFTTrainer = anchored_trainer(args.anchor, args.exclude)
    sft_recipe.main(["--config", "sft_lora_smollm2", "--dataset_name", f"{args.data}/train.jsonl",
                     "--output_dir", args.out, "--overwrite_output_dir", "true", "--seed", args.seed])
    subprocess.run([sys.executable, "-m", "finetune_kit.demo", "score", "--model", args.out, "--heldout",
                    f"{args.data}/heldout.jsonl", "--before", args.before, "--save", f"{args.out}/demo_score.json"],
                   check=True)


if __name__ == "__main__":
    main()
