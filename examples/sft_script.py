"""Build the SFT pipeline yourself from finetune_kit's helpers (what the sft recipe does, minus run-folder care).

    python examples/sft_script.py --config sft_lora_smollm2 --max_steps 10
"""

from __future__ import annotations

from trl import SFTTrainer, get_peft_config

from finetune_kit import (SFTRecipeConfig, load_causal_lm, load_sft_datasets, load_tokenizer, parse_config,
                          tokenize_sft_dataset)


def main(argv: list[str] | None = None) -> SFTTrainer:
    cfg = parse_config(SFTRecipeConfig, argv)
    tokenizer = load_tokenizer(cfg.model.model_name_or_path)
    train, _ = load_sft_datasets(cfg.data, seed=cfg.training.seed)
    trainer = SFTTrainer(
        model=load_causal_lm(cfg.model),
        args=cfg.training,
        train_dataset=tokenize_sft_dataset(train, tokenizer),
        processing_class=tokenizer,
        peft_config=get_peft_config(cfg.model),
    )
    trainer.train()
    trainer.save_model(cfg.training.output_dir)
    return trainer


if __name__ == "__main__":
    main()
