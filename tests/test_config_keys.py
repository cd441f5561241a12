"""Every key a recipe accepts does something, or is refused by name: each recipe runs one step on a tiny model with
its config parts (model, data, task, rewards, run) recording which keys the recipe and the libraries it calls read;
a key never read must be one the recipe table refuses (`unread`). The training part goes whole to the library's
trainer (trl / transformers read their own arguments), except in our PPO loop, whose reads are listed in the table
and checked the same way."""

from __future__ import annotations

import dataclasses
import json
import sys

import pytest

from conftest import chat_rows, write_config, write_jsonl
from finetune_kit import recipes
from finetune_kit.config import config_parts

WORDS = ["apple", "river", "stone", "cloud"]
# Ours: every key of these parts must be read or refused. (`training` is trl's / transformers' own.)
OWN_PARTS = ("model", "data", "task", "rewards", "ppo", "preset", "run")
# Read only on a path a one-step run does not take, each named with the test that covers it.
CONDITIONAL = {
    "split_seed": "read by finetune_kit.data.split_seed when a split is made (tests/test_tune_report.py)",
    **{key: "read by trl's get_quantization_config with load_in_4bit (tests/test_launch.py, 4-bit runs)"
       for key in ("bnb_4bit_quant_type", "use_bnb_nested_quant", "bnb_4bit_quant_storage")},
    "target_kl": "read with adaptive_kl: true (tests/test_ppo.py, the adaptive KL controller)",
    "tag_column_index": "read for CoNLL files (tests/test_token_classification.py, the CoNLL reader)",
    "ignore_mismatched_sizes": "read when a pretrained head is loaded (tests/test_bad_input_suite.py, 'head of "
                               "another size')",
}


def _recording(part, seen: set[str]):
    """The same part, as a subclass whose attribute reads are recorded (not those of dataclasses' own helpers,
    which config_to_dict uses to record every key in config.yaml)."""
    def __getattribute__(self, name):
        caller = sys._getframe(1).f_code
        if not name.startswith("_") and not caller.co_filename.endswith("dataclasses.py") and \
                caller.co_name not in ("config_to_dict", "to_dict"):
            seen.add(name)
        return object.__getattribute__(self, name)

    recorded = type(f"Recorded{type(part).__name__}", (type(part),), {"__getattribute__": __getattribute__})
    part.__class__ = recorded
    return part


def run_recording(name: str, cfg: dict, tmp_path, monkeypatch) -> tuple[set[str], object]:
    from finetune_kit import config as config_module

    row = recipes.get(name)
    module = row.load()
    seen: set[str] = set()
    holder = {}

    def parse(config_type, argv=None):
        parsed = config_module.parse_config(config_type, argv)
        for part_name in OWN_PARTS:
            if hasattr(parsed, part_name):
                setattr(parsed, part_name, _recording(getattr(parsed, part_name), seen))
        holder["cfg"] = parsed
        return parsed

    # A recipe may hand its config type to another recipe's module (orpo -> cpo's train_reference_free): patch the
    # name wherever a recipe module holds it.
    for loaded in [m for n, m in list(sys.modules.items()) if n.startswith("finetune_kit.recipes.")]:
        if hasattr(loaded, "parse_config"):
            monkeypatch.setattr(loaded, "parse_config", parse)
    module.main(["--config", write_config(tmp_path / f"{name}.yaml", {"output_dir": str(tmp_path / name),
                                                                       "report": False, **cfg})])
    return seen, holder["cfg"]


def squad_articles(tmp_path) -> str:
    """Two SQuAD v2 articles (validation is split off by article), one question unanswerable."""
    articles = [{"title": city, "paragraphs": [{"context": f"{city} is the capital of {land}.", "qas": [
        {"id": f"{city}-1", "question": f"What is the capital of {land}?", "is_impossible": False,
         "answers": [{"text": city, "answer_start": 0}]},
        {"id": f"{city}-2", "question": "Who won the match?", "is_impossible": True, "answers": []}]}]}
        for city, land in (("Paris", "France"), ("Lima", "Peru"))]
    path = tmp_path / "squad.json"
    path.write_text(json.dumps({"version": "v2.0", "data": articles}))
    return str(path)


def _configs(tmp_path, llama, bert) -> dict[str, dict]:
    from test_image_classification import write_images
    from test_token_classification import ner_rows

    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": f"Say {w}", "chosen": f"Sure! {w}",
                                                    "rejected": f"No. {w}"} for w in WORDS])
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Say {w}"} for w in WORDS])
    (tmp_path / "r.py").write_text("def score(prompts, answers):\n    return [1.0] * len(answers)\n")
    reward = [f"{tmp_path / 'r.py'}:score"]
    step = {"max_steps": 1, "report_to": "none", "save_strategy": "no"}
    lm = {"model_name_or_path": llama, "use_peft": True, "lora_r": 4, "per_device_train_batch_size": 4, **step}
    text = tmp_path / "text.txt"
    text.write_text("\n".join(" ".join(["the cat sat on the mat ."] * 8) for _ in range(40)) + "\n")
    peft = {"use_peft": True, "lora_r": 4}  # the encoders read their LoRA keys only with adapters on
    return {
        "sft": {**lm, "dataset_name": str(write_jsonl(tmp_path / "chat.jsonl", chat_rows(8))), "max_length": 64},
        "pretrain": {**lm, "dataset_name": str(write_jsonl(tmp_path / "docs.jsonl", [{"text": f"{w} " * 20}
                                                                                     for w in WORDS])),
                     "max_length": 16},
        "reward": {**lm, "dataset_name": str(pairs)},
        "prm": {**lm, "max_length": 64, "eval_split_ratio": 0.5, "dataset_name": str(write_jsonl(
            tmp_path / "steps.jsonl", [{"prompt": f"Say {w}", "completions": [w, f"{w}!"], "labels": [True, i % 2 == 0]}
                                       for i, w in enumerate(WORDS)]))},
        "dpo": {**lm, "dataset_name": str(pairs), "max_length": 64},
        "orpo": {**lm, "dataset_name": str(pairs), "max_length": 64},
        "cpo": {**lm, "dataset_name": str(pairs), "max_length": 64},
        "kto": {**lm, "dataset_name": str(write_jsonl(tmp_path / "kto.jsonl", [
            {"prompt": f"Say {w}", "completion": f"{w}!", "label": i % 2 == 0} for i, w in enumerate(WORDS * 2)])),
            "max_length": 64},
        "grpo": {**lm, "dataset_name": str(prompts), "num_generations": 4, "max_completion_length": 4,
                 "reward_functions": reward},
        "rloo": {**lm, "dataset_name": str(prompts), "num_generations": 4, "max_completion_length": 4,
                 "reward_functions": reward},
        "online_dpo": {**lm, "dataset_name": str(prompts), "max_new_tokens": 4, "reward_functions": reward},
        "distill": {**lm, "teacher_model_name_or_path": llama, "lmbda": 0.0, "max_length": 64,
                    "dataset_name": str(write_jsonl(tmp_path / "chat.jsonl", chat_rows(8)))},
        "ppo": {"model_name_or_path": llama, "use_peft": True, "lora_r": 4, "max_steps": 1, "report_to": "none",
                "dataset_name": str(prompts), "rollout_batch_size": 2, "mini_batch_size": 2, "max_new_tokens": 4,
                "reward_functions": reward, "eval_split_ratio": 0.5},
        "text_classification": {"model_name_or_path": bert, **step, **peft, "dataset_name": str(write_jsonl(
            tmp_path / "cls.jsonl", [{"text": f"{w} is fine", "label": "pos" if i % 2 else "neg"}
                                     for i, w in enumerate(WORDS * 2)])), "max_length": 16},
        "token_classification": {"model_name_or_path": bert, **step, **peft, "max_length": 16,
                                 "dataset_name": str(write_jsonl(tmp_path / "ner.jsonl", ner_rows(8)))},
        "question_answering": {"model_name_or_path": bert, **step, **peft, "dataset_name": squad_articles(tmp_path),
                               "eval_split_ratio": 0.5, "max_length": 64, "doc_stride": 16},
        "masked_lm": {"model_name_or_path": bert, **step, **peft, "dataset_name": str(text), "max_length": 16},
        "seq2seq": {"model_name_or_path": str(_tiny_t5(tmp_path)), **step, **peft, "max_source_length": 16,
                    "max_target_length": 8, "dataset_name": str(write_jsonl(tmp_path / "s2s.jsonl", [
                        {"source": f"Say {w}", "target": w} for w in WORDS]))},
        "image_classification": {"model_name_or_path": "vit-tiny-from-config", "image_size": 16, **step, **peft,
                                 "dataset_name": str(write_images(tmp_path / "images", 4))},
        "sft_vision": {"model_name_or_path": str(_tiny_vlm(tmp_path)), **step, **peft, "max_length": 32,
                       "dataset_name": str(tmp_path / "vlm-data" / "train.jsonl")},
        "clip": {"model_name_or_path": str(_tiny_clip(tmp_path)), **step, **peft, "max_length": 16,
                 "dataset_name": _captions(write_images(tmp_path / "clip-images", 4)), "eval_split_ratio": 0.5,
                 "zero_shot_dataset_name": str(write_images(tmp_path / "zero_shot", 2)), "freeze_tower": "vision"},
    }


def _tiny_vlm(tmp_path):
    """A tiny SmolVLM-shaped model built from a config, and two rows of the shapes demo (vlm-data/train.jsonl)."""
    import random

    from finetune_kit import demo_vision_chat

    data = tmp_path / "vlm-data"
    write_jsonl(data / "train.jsonl", demo_vision_chat.rows_for("train", 2, data, random.Random(0)))
    return demo_vision_chat.tiny_smolvlm(tmp_path / "tiny-vlm", vision_hidden=16, vision_layers=1, text_hidden=16,
                                         text_layers=1)


def _tiny_t5(tmp_path):
    from finetune_kit import demo_seq2seq

    tokenizer = demo_seq2seq.train_tokenizer([f"Say {w}" for w in WORDS], vocab_size=280)
    return demo_seq2seq.t5_from_config(tokenizer, tmp_path / "t5", d_model=16, d_ff=32, d_kv=8, num_heads=2,
                                       num_layers=1, num_decoder_layers=1)


def _tiny_clip(tmp_path):
    from finetune_kit import demo_clip

    return demo_clip.clip_from_config(tmp_path / "tiny-clip", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2)


def _captions(folder) -> str:
    """A CSV of image paths and captions (caption_column is read from files; folders are captioned by template)."""
    path = folder / "captions.csv"
    path.write_text("image,caption\n" + "".join(f"{p},a {p.parent.name} square\n" for p in sorted(folder.glob("*/*"))))
    return str(path)


@pytest.mark.parametrize("name", recipes.names())
def test_every_key_is_read_or_refused(name, tmp_path, tiny_model_dir, tiny_bert_dir, monkeypatch):
    row = recipes.get(name)
    seen, cfg = run_recording(name, _configs(tmp_path, str(tiny_model_dir), str(tiny_bert_dir))[name], tmp_path,
                              monkeypatch)
    ignored = {}
    for part_name, part_type in config_parts(row.config_type()).items():
        if part_name in OWN_PARTS:
            keys = {f.name for f in dataclasses.fields(part_type)}
            ignored[part_name] = sorted(keys - seen - set(row.unread) - set(CONDITIONAL))
    assert not any(ignored.values()), f"{name} accepts and ignores: {json.dumps(ignored)}"
    # A refused key the run reads anyway is one the recipe sets itself (the LoRA task type of a classifier head).
    assert not set(row.unread) - {"lora_task_type"} & seen, f"{name} refuses keys it reads: {set(row.unread) & seen}"
