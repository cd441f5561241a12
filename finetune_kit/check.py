"""`finetune-kit check`: what would go wrong with a run, found before any weights load.

Validates the config, lints every data row, verifies the end-of-turn token of assistant turns carries loss (SFT),
reports sequence lengths and how many rows `max_length` would truncate, and estimates peak memory from the model's
config (see `finetune_kit.memory`) against the memory available. Exit 0: clean; 1: warnings; 2: errors (raised as
`UserError`, which the CLI turns into exit code 2).

The recipe is named by `--recipe`, else by the config (its `recipe:` key, then its file name), else sft. What is
checked follows the recipe table (finetune_kit.recipes): recipes with a `rows` kind (the decoder stages) get every
check; the others the config check.
"""

from __future__ import annotations

import statistics

from finetune_kit import recipes
from finetune_kit.data import (
    ROW_NORMALISERS,
    encode_prompt,
    end_of_turn_is_trained,
    load_sft_datasets,
    margins_on_every_row_or_none,
    pairs_with_answer_room,
    require_both_labels,
    tokenize_sft_dataset,
)
from finetune_kit.data.chat import read_chat_template
from finetune_kit.preflight import preflight
from finetune_kit.runs import check_output_dir

STREAM_CHECK_ROWS = 10_000


def sequence_lengths(dataset, tokenizer, rows: str) -> list[int]:
    """Token count of each row as the trainer will see it (chat template applied for conversations)."""
    if rows == "prompt":
        return [len(encode_prompt(tokenizer, p, 10**9, "")) for p in dataset["prompt"]]
    if rows in ("pair", "scored_pair"):
        return [max(_render_len(tokenizer, row["prompt"], row["chosen"]), _render_len(tokenizer, row["prompt"],
                                                                                       row["rejected"]))
                for row in dataset]
    if rows == "unpaired":
        return [_render_len(tokenizer, row["prompt"], row["completion"]) for row in dataset]
    if "messages" in dataset.column_names:
        return [len(ids) for ids in tokenize_sft_dataset(dataset, tokenizer)["input_ids"]]
    if "text" in dataset.column_names:
        return [len(tokenizer(t)["input_ids"]) for t in dataset["text"]]
    return [len(tokenizer(p + c)["input_ids"]) for p, c in zip(dataset["prompt"], dataset["completion"])]


def _render_len(tokenizer, prompt, answer) -> int:
    if isinstance(prompt, list) and tokenizer.chat_template:
        return len(tokenizer.apply_chat_template(prompt + answer, tokenize=True, return_dict=True)["input_ids"])
    text = prompt if isinstance(prompt, str) else "\n".join(t["content"] for t in prompt)
    answer = answer if isinstance(answer, str) else "\n".join(t["content"] for t in answer)
    return len(tokenizer(text + answer)["input_ids"])


def check(argv: list[str] | None) -> int:
    argv = list(argv or [])
    recipe = None
    if "--recipe" in argv:
        at = argv.index("--recipe")
        recipe = argv[at + 1] if at + 1 < len(argv) else ""
        del argv[at:at + 2]
    row = recipes.choose(recipe, argv, default="sft")
    preflight(row, argv)  # the same checks train runs first, before the libraries load
    from finetune_kit.config import parse_config
    from finetune_kit.decisions import Decisions
    from finetune_kit.models import load_tokenizer

    name = row.name
    cfg = parse_config(row.config_type(), argv)
    # The output folder as train will see it: a finished run without --overwrite_output_dir, a file, no write access
    if hasattr(cfg, "training") and hasattr(cfg, "run"):
        check_output_dir(cfg.training.output_dir, cfg.run.overwrite_output_dir, cfg.training.resume_from_checkpoint)
    print(f"config ({name}): ok")
    if hasattr(cfg, "rewards"):  # the functions train would call, loaded now (the preflight found their files)
        from finetune_kit.rl.reward_functions import load_reward_function

        for spec in cfg.rewards.reward_functions or []:
            load_reward_function(spec)
    decisions = Decisions(cfg, argv)  # the same decisions train would print
    if row.rows is None and row.length_check:  # every row was read by the preflight; now measured in tokens
        tokenizer = load_tokenizer(cfg.model.tokenizer_name_or_path or cfg.model.model_name_or_path,
                                   trust_remote_code=cfg.training.trust_remote_code)
        warnings = row.measure_rows(cfg, tokenizer)
        for warning in warnings:
            print(f"warning: {warning}")
        print("result: " + ("warnings" if warnings else "clean (memory is estimated for the decoder recipes)"))
        return 1 if warnings else 0
    if row.rows is None:
        print("result: clean (config only: data and memory checks cover the decoder recipes)")
        return 0
    warnings = []
    args = cfg.training
    tokenizer = load_tokenizer(cfg.model.tokenizer_name_or_path or cfg.model.model_name_or_path,
                               revision=cfg.model.model_revision, trust_remote_code=args.trust_remote_code)
    if getattr(args, "chat_template_path", None):  # measured as train renders the rows: with the given template
        tokenizer.chat_template = read_chat_template(args.chat_template_path)
    streaming = "streaming" not in row.unread and cfg.data.streaming
    train, evaluation = load_sft_datasets(cfg.data, seed=args.seed, normaliser=ROW_NORMALISERS[row.rows],
                                          streaming=streaming)
    if streaming:  # a stream may not fit in memory: its first rows are checked, as training will read them
        from datasets import Dataset

        train = Dataset.from_list(list(train.take(STREAM_CHECK_ROWS)))
        print(f"streaming: the first {len(train)} training rows are checked (train validates every row as it reads it)")
    if row.rows == "unpaired":  # KTO's own refusal, made before its model loads
        require_both_labels(train, cfg.data.source_label())
    if row.rows == "scored_pair":  # the reward recipe's own refusal, likewise
        train = margins_on_every_row_or_none(train, cfg.data.source_label())
    if row.keeps_prompt_whole:  # the recipe's own filter: what train refuses, check refuses; what it drops, it counts
        train = pairs_with_answer_room(train, tokenizer, args.max_length or 512, cfg.data.skip_invalid_rows,
                                       cfg.data.source_label())
    print(f"data: {len(train)} training rows" + (f", {len(evaluation)} validation rows" if evaluation else "")
          + ", every row valid")

    if row.rows == "sft" and "messages" in train.column_names:
        if end_of_turn_is_trained(tokenizer):
            print("chat template: the end-of-turn token of assistant turns is inside the loss mask")
        else:
            warnings.append("the chat template leaves the assistant's end-of-turn token outside the loss mask: the "
                            "model will not learn to stop. Fix the template (chat_template_path).")

    lengths = sequence_lengths(train, tokenizer, row.rows)
    print(f"tokens per row: min {min(lengths)}, median {int(statistics.median(lengths))}, "
          f"p95 {sorted(lengths)[int(0.95 * (len(lengths) - 1))]}, max {max(lengths)}")
    # PPO refuses prompts over max_prompt_length; GRPO (trl 1.16) keeps prompts whole; the others cut at max_length.
    # Online DPO cuts prompt + answer to max_length from the left: a prompt over max_length - max_new_tokens loses
    # its start.
    limit = (cfg.rewards.max_prompt_length if hasattr(cfg, "ppo") else args.max_length - args.max_new_tokens
             if name == "online_dpo" else None if row.rows == "prompt" else args.max_length)
    if limit is not None and not getattr(args, "packing", False):
        over = sum(n > limit for n in lengths)
        if over:
            # trl's reward trainer drops over-long pairs; the others truncate them.
            what = "dropped" if name == "reward" else "truncated"
            warnings.append(f"{over} of {len(lengths)} training rows are longer than max_length={limit} and will be "
                            f"{what}.")
    warnings += memory_warnings(cfg, row, lengths, decisions)
    for warning in warnings:
        print(f"warning: {warning}")
    print("result: " + ("warnings" if warnings else "clean"))
    return 1 if warnings else 0


def memory_warnings(cfg, row: recipes.Recipe, lengths: list[int], decisions) -> list[str]:
    from transformers import AutoConfig

    from finetune_kit.errors import ConfigError
    from finetune_kit.memory import (
        GIB,
        activation_checkpointing,
        available_memory,
        estimate,
        lora_targets_problem,
    )
    from finetune_kit.models import require_weights, resolve_checkpoint

    args = cfg.training
    longest = max(lengths)
    if hasattr(cfg, "ppo"):
        batch, seq = cfg.ppo.mini_batch_size, longest + cfg.ppo.max_new_tokens
    elif row.rows == "prompt":
        answer = getattr(args, "max_completion_length", None) or getattr(args, "max_new_tokens", None)  # online DPO's
        batch, seq = args.per_device_train_batch_size, longest + (answer or 256)
    else:
        batch, seq = args.per_device_train_batch_size, min(longest, args.max_length or longest)
        if getattr(args, "packing", False):
            seq = args.max_length or longest
    resolved = resolve_checkpoint(cfg.model.model_name_or_path)
    model_config = AutoConfig.from_pretrained(resolved, trust_remote_code=args.trust_remote_code)
    require_weights(cfg.model.model_name_or_path, resolved)
    problem = cfg.model.use_peft and lora_targets_problem(model_config, cfg.model.lora_target_modules,
                                                          cfg.model.model_name_or_path)
    if problem:  # the same error train gives, before its weights load
        raise ConfigError(problem)
    if row.rows != "prompt":  # the recipe's own choice, printed, so the estimate below matches the run
        decisions.add(cfg, activation_checkpointing(cfg, decisions.user, seq, row.sequences_per_example))
    result = estimate(model_config, cfg.model, batch, seq, bool(args.bf16),
                      bool(getattr(args, "gradient_checkpointing", False)),
                      sequences_per_example=row.sequences_per_example)
    free, where = available_memory()
    print(f"memory: {result.describe()}; batch {batch} x {seq} tokens; {free / GIB:.1f} GiB {where}")
    if result.total > free:
        return [(f"the run may not fit: about {result.total / GIB:.1f} GiB needed, {free / GIB:.1f} GiB {where}. "
                 "Lower per_device_train_batch_size (raise gradient_accumulation_steps), max_length, or use LoRA / "
                 "4-bit (load_in_4bit) / activation checkpointing.")]
    return []
