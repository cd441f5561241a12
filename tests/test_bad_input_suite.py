"""The bad-input suite: data rows, configs, checkpoints and CLI arguments, across the recipes.

Every case asserts: exit code 2; one `error:` line naming the file / row / field or the key; no traceback; nothing
in a pre-existing output folder changed; and, where the mistake is visible without the model, that no weights were
loaded (model loading is made to fail loudly for those cases). Time to the error is recorded per case; run
`python benchmarks/bad_input_timing.py` for the table (timing is a measurement, not a test).
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

from conftest import chat_rows, write_config, write_jsonl
from finetune_kit import recipes
from finetune_kit.cli import main as cli_main
from finetune_kit.errors import run_cli

TIMINGS: dict[str, float] = {}
# Set by benchmarks/bad_input_timing.py: each no-weights case also runs as a user runs it, `finetune-kit ...` in a
# process of its own (interpreter start and imports included), timed, and checked like the in-process run.
PROCESS_TIMINGS = os.environ.get("FINETUNE_KIT_BAD_INPUT_PROCESS_TIMINGS")
PROCESS_SECONDS: dict[str, float] = {}
WORDS = ["apple", "river", "stone", "cloud"]


class WeightsLoaded(Exception):
    """Raised if a case that should fail before any weights load gets as far as loading them."""


@pytest.fixture(scope="module", autouse=True)
def _write_timings():
    yield
    target = os.environ.get("FINETUNE_KIT_BAD_INPUT_TIMINGS")
    if target:
        Path(target).write_text(json.dumps(TIMINGS, indent=1))
    if PROCESS_TIMINGS:
        Path(PROCESS_TIMINGS).write_text(json.dumps(PROCESS_SECONDS, indent=1))


@pytest.fixture
def env(tmp_path, tiny_model_dir, tiny_bert_dir):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    (out / "checkpoint-3").mkdir()
    (out / "checkpoint-3" / "trainer_state.json").write_text('{"global_st')  # a save cut short

    def f(name: str, rows) -> str:
        return str(write_jsonl(tmp_path / name, rows))

    return {"tmp": tmp_path, "out": out, "llama": str(tiny_model_dir), "bert": str(tiny_bert_dir), "file": f,
            "fresh": str(tmp_path / "fresh")}


def sft(e, **cfg):
    base = {"model_name_or_path": e["llama"], "dataset_name": e["file"]("chat.jsonl", chat_rows(4)),
            "use_peft": True, "output_dir": e["fresh"], "max_steps": 1, "report_to": "none"}
    return "sft", {**base, **cfg}


def mixture(e, *sources, **cfg):
    """sft on `datasets`: each source (file name, rows, its own keys)."""
    items = [{"dataset_name": e["file"](name, rows), **keys} for name, rows, keys in sources]
    return sft(e, dataset_name=None, datasets=items, **cfg)


def pairs(e, recipe="dpo", rows=None, **cfg):
    rows = rows or [{"prompt": f"Say {w}", "chosen": f"Sure! {w}", "rejected": f"No. {w}"} for w in WORDS]
    base = {"model_name_or_path": e["llama"], "dataset_name": e["file"]("pairs.jsonl", rows), "use_peft": True,
            "output_dir": e["fresh"], "max_steps": 1, "report_to": "none"}
    return recipe, {**base, **cfg}


def text_cls(e, rows=None, **cfg):
    rows = rows or [{"text": f"{w} is fine", "label": "pos"} for w in WORDS] + [{"text": "bad", "label": "neg"}]
    base = {"model_name_or_path": e["bert"], "dataset_name": e["file"]("cls.jsonl", rows), "output_dir": e["fresh"],
            "max_steps": 1, "report_to": "none"}
    return "text_classification", {**base, **cfg}


def tune_config(e) -> str:
    _, cfg = text_cls(e, eval_split_ratio=0.4, eval_strategy="epoch")
    cfg["tune"] = {"metric": "accuracy", "direction": "maximize", "trials": 1,
                   "space": {"learning_rate": {"low": 1e-5, "high": 1e-3, "log": True}}}
    return write_config(e["tmp"] / "tune.yaml", cfg)


def ppo(e, rows=None, **cfg):
    rows = rows or [{"prompt": f"Say {w}"} for w in WORDS]
    base = {"model_name_or_path": e["llama"], "dataset_name": e["file"]("prompts.jsonl", rows), "use_peft": True,
            "output_dir": e["fresh"], "max_steps": 1, "rollout_batch_size": 2, "mini_batch_size": 2,
            "reward_functions": [f"{e['tmp'] / 'r.py'}:score"]}
    (e["tmp"] / "r.py").write_text("def score(prompts, answers):\n    return [1.0] * len(answers)\n"
                                   "def raises(prompts, answers):\n    raise ValueError('no score')\n")
    return "ppo", {**base, **cfg}


def grpo(e, **cfg):
    _, base = ppo(e)
    return "grpo", {**{k: v for k, v in base.items() if k not in ("rollout_batch_size", "mini_batch_size")}, **cfg}


def self_based_adapter(e) -> str:
    """An adapter folder naming itself as its base: what training into the folder a run started from once left."""
    import torch
    from safetensors.torch import save_file

    folder = e["tmp"] / "self-based"
    folder.mkdir(exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(folder),
                                                            "peft_type": "LORA"}))
    save_file({"x": torch.zeros(1)}, str(folder / "adapter_model.safetensors"))
    return str(folder)


def write(e, name: str, text: str) -> str:
    path = e["tmp"] / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def model_without_template(e) -> str:
    from transformers import AutoTokenizer

    folder = e["tmp"] / "no-template"
    tokenizer = AutoTokenizer.from_pretrained(e["llama"])
    tokenizer.chat_template = None
    tokenizer.save_pretrained(folder)
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    return str(folder)


def llama_copy(e, name: str, damage) -> str:
    """A copy of the tiny Llama with `damage(folder)` done to it."""
    import shutil

    folder = e["tmp"] / name
    shutil.copytree(e["llama"], folder)
    damage(folder)
    return str(folder)


def truncate_weights(folder) -> None:
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def drop_tokenizer(folder) -> None:
    for path in folder.iterdir():
        if path.name.startswith(("tokenizer", "special_tokens", "vocab", "merges", "chat_template")):
            path.unlink()


def lora_run_folder(e, peft_type: str = "LORA") -> str:
    """What an SFT run leaves: the tokenizer and an adapter (config and weights), no full weights."""
    import shutil

    folder = e["tmp"] / "sft-run"
    folder.mkdir()
    for path in Path(e["llama"]).iterdir():
        if path.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(path, folder / path.name)
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": e["llama"],
                                                            "peft_type": peft_type}))
    (folder / "adapter_model.safetensors").write_bytes(b"")
    return str(folder)


def bert_with_three_labels(e) -> str:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = e["tmp"] / "bert3"
    AutoModelForSequenceClassification.from_pretrained(e["bert"], num_labels=3).save_pretrained(folder)
    AutoTokenizer.from_pretrained(e["bert"]).save_pretrained(folder)
    return str(folder)


# name -> (build(env) -> (recipe or "cli", config dict or argv list), expected message regex, loads weights first)
CASES = {
    # --- dataset mixtures and streams ---
    "mixture weight of 0": (lambda e: mixture(e, ("a.jsonl", chat_rows(4), {"weight": 0}),
                                              ("b.jsonl", chat_rows(4), {"weight": 1}), mix_strategy="interleave_under"),
                            r"datasets\[0\]\.weight must be a number > 0, got 0", False),
    "mixture negative weight": (lambda e: mixture(e, ("a.jsonl", chat_rows(4), {"weight": 2}),
                                                  ("b.jsonl", chat_rows(4), {"weight": -1}),
                                                  mix_strategy="interleave_over"),
                                r"datasets\[1\]\.weight must be a number > 0, got -1", False),
    "mixture ratios that do not sum to 1": (lambda e: mixture(e, ("a.jsonl", chat_rows(4), {"ratio": 0.5}),
                                                              ("b.jsonl", chat_rows(4), {"ratio": 0.3}),
                                                              mix_strategy="interleave_under"),
                                            r"the ratios sum to 0\.8, not 1", False),
    "mixture weights with concat": (lambda e: mixture(e, ("a.jsonl", chat_rows(4), {"weight": 1}),
                                                      ("b.jsonl", chat_rows(4), {"weight": 1})),
                                    r"concat does not .* set mix_strategy: interleave_under", False),
    "mixture source with an unknown key": (lambda e: mixture(e, ("a.jsonl", chat_rows(4), {"wieght": 1})),
                                           r"datasets\[0\]: unknown key 'wieght'", False),
    "mixture bad row in its second source": (lambda e: mixture(e, ("a.jsonl", chat_rows(4), {}), (
        "b.jsonl", [{"instruction": "x", "output": "y"}, {"instruction": "z"}], {"dataset_format": "alpaca"})),
                                             r"b\.jsonl line 2: missing field 'output'", False),
    "mixture of two shapes": (lambda e: mixture(e, ("a.jsonl", chat_rows(4), {}),
                                                ("b.jsonl", [{"prompt": "p", "completion": "c"}], {})),
                              r"datasets\[1\] \(.*b\.jsonl\) reads as completion, prompt but datasets\[0\]", False),
    "streaming without max_steps": (lambda e: sft(e, streaming=True, max_steps=-1),
                                    r"streaming: true .* set max_steps", False),
    "streaming in a recipe that reads its data whole": (lambda e: pairs(e, streaming=True),
                                                        r"key 'streaming' does nothing in the dpo recipe", False),
    "a bad row met while streaming": (lambda e: sft(e, streaming=True, max_steps=3, per_device_train_batch_size=1,
                                                    dataset_name=e["file"]("s.jsonl", chat_rows(2) + [
                                                        {"messages": [{"role": "user", "content": "hi"}]}])),
                                      r"s\.jsonl row 3: field 'messages': the conversation ends with a 'user' turn",
                                      True),
    # --- data rows ---
    "missing data file": (lambda e: sft(e, dataset_name=str(e["tmp"] / "nope.jsonl")),
                          r"dataset file not found: .*nope\.jsonl", False),
    "empty data file": (lambda e: sft(e, dataset_name=write(e, "empty.jsonl", "")),
                        r"empty\.jsonl: the dataset is empty", False),
    "malformed json line": (lambda e: sft(e, dataset_name=write(e, "bad.jsonl", json.dumps(chat_rows(1)[0]) + "\n{x\n")),
                            r"bad\.jsonl line 2: not valid JSON", False),
    "unknown data format": (lambda e: sft(e, dataset_name=e["file"]("q.jsonl", [{"q": "a"}])),
                            r"q\.jsonl line 1: unknown data format", False),
    "missing column": (lambda e: sft(e, dataset_name=e["file"]("m.jsonl", [{"instruction": "a", "output": "b"},
                                                                           {"instruction": "c"}])),
                       r"m\.jsonl line 2: missing field 'output'", False),
    "wrong type in a turn": (lambda e: sft(e, dataset_name=e["file"]("t.jsonl", [
                                 {"messages": [{"role": "user", "content": 7}, {"role": "assistant", "content": "x"}]}])),
                             r"t\.jsonl line 1: messages\[0\]: field 'content' must be a string, got int", False),
    "empty answer text": (lambda e: sft(e, dataset_name=e["file"]("e.jsonl", [{"instruction": "a", "output": " "}])),
                          r"e\.jsonl line 1: field 'output' is empty", False),
    "conversation without an answer": (lambda e: sft(e, dataset_name=e["file"]("u.jsonl", [
                                           {"messages": [{"role": "user", "content": "hi"}]}])),
                                       r"u\.jsonl line 1: field 'messages': the conversation ends with a 'user' turn",
                                       False),
    "unknown role": (lambda e: sft(e, dataset_name=e["file"]("r.jsonl", [
                         {"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}])),
                     r"r\.jsonl line 1: messages\[0\]\.role is 'robot'", False),
    "label not in the label set": (lambda e: text_cls(e, labels=["pos", "neg"], rows=[
                                       {"text": "a", "label": "pos"}, {"text": "b", "label": "meh"}]),
                                   r"cls\.jsonl line 2: field 'label': label 'meh' is not in the label set", False),
    "missing text column": (lambda e: text_cls(e, rows=[{"text": "a", "label": "x"}, {"body": "b", "label": "y"}]),
                            r"cls\.jsonl line 2: missing field 'text'", False),
    "tokens and tags differ in length": (lambda e: ("token_classification", {
                                             "model_name_or_path": e["bert"], "output_dir": e["fresh"],
                                             "dataset_name": e["file"]("ner.jsonl", [
                                                 {"tokens": ["a", "b"], "tags": ["O", "O"]},
                                                 {"tokens": ["a", "b"], "tags": ["O"]}])}),
                                         r"ner\.jsonl line 2: 2 tokens but 1 tags", False),
    "step labels that do not match the steps": (lambda e: ("prm", {
                                                    "model_name_or_path": e["llama"], "output_dir": e["fresh"],
                                                    "dataset_name": e["file"]("steps.jsonl", [
                                                        {"prompt": "p", "completions": ["a", "b"], "labels": [True]}])}),
                                                r"steps\.jsonl line 1: field 'labels' has 1 labels for 2 steps", False),
    "unreadable image": (lambda e: ("image_classification", {
                             "model_name_or_path": "vit-tiny-from-config", "output_dir": e["fresh"],
                             "dataset_name": write(e, "imgs.csv", f"image,label\n{write(e, 'x.png', 'not a png')},a\n"
                                                                  f"{e['tmp'] / 'x.png'},b\n")}),
                         r"imgs\.csv line \d+: cannot read image .*x\.png", False),
    "identical chosen and rejected": (lambda e: pairs(e, rows=[{"prompt": "a", "chosen": "x", "rejected": "y"},
                                                               {"prompt": "b", "chosen": "z", "rejected": "z"}]),
                                      r"pairs\.jsonl line 2: 'chosen' and 'rejected' are identical", False),
    "empty side of a pair": (lambda e: pairs(e, "reward", rows=[{"prompt": "a", "chosen": "", "rejected": "y"}]),
                             r"pairs\.jsonl line 1: field 'chosen' is empty", False),
    "pair without a prompt": (lambda e: pairs(e, rows=[{"chosen": "Yes.", "rejected": "No."}]),
                              r"pairs\.jsonl line 1: field 'chosen' is a string without a shared prompt", False),
    "unpaired label not boolean": (lambda e: pairs(e, "kto", rows=[{"prompt": "a", "completion": "b", "label": 1}]),
                                   r"pairs\.jsonl line 1: field 'label' must be true or false", False),
    "prompt over max_prompt_length": (lambda e: ppo(e, max_prompt_length=8),
                                      r"training prompt 1: the prompt is \d+ tokens, over max_prompt_length \(8\)",
                                      False),
    "chat data, tokenizer without a chat template": (lambda e: sft(e, tokenizer_name_or_path=model_without_template(e)),
                                                     r"the tokenizer has no chat template", False),
    # --- configs ---
    "unknown config key": (lambda e: sft(e, lora_rnk=4), r"unknown config key 'lora_rnk' .*Did you mean 'lora_r'",
                           False),
    "negative learning rate": (lambda e: sft(e, learning_rate=-1e-3), r"learning_rate must be positive", False),
    "4-bit and 8-bit together": (lambda e: sft(e, load_in_4bit=True, load_in_8bit=True), r"8 bit and 4 bit|load_in_4bit and load_in_8bit are both true", False),
    "value of the wrong type": (lambda e: sft(e, lora_r="eight"), r"lora_r.*eight", False),
    "value not among the choices": (lambda e: sft(e, lr_scheduler_type="sideways"), r"lr_scheduler_type.*sideways",
                                    False),
    "evaluation without validation data": (lambda e: sft(e, eval_strategy="epoch"), r"no validation data", False),
    "quantized full fine-tuning": (lambda e: sft(e, load_in_4bit=True, use_peft=False), r"set use_peft: true", False),
    "PPO batch not a multiple": (lambda e: ppo(e, rollout_batch_size=3), r"multiple of mini_batch_size", False),
    "PPO without a reward": (lambda e: ppo(e, reward_functions=None), r"no reward: set reward_model", False),
    "keep the best policy with no held-out prompts": (lambda e: ppo(e, keep_policy="best"),
                                                      r"keep_policy: best scores held-out prompts", False),
    "GRPO guard with a negative KL ceiling": (lambda e: grpo(e, kl_ceiling=-1),
                                              r"kl_ceiling and guard_eval_steps must be >= 0", False),
    "config file not found": (lambda e: ("cli", ["train", "sft", "--config", str(e["tmp"] / "missing.yaml")]),
                              r"missing\.yaml", False),
    "key=value on the command line": (lambda e: ("cli", ["train", "sft", "--config",
                                                         write_config(e["tmp"] / "c.yaml", sft(e)[1]), "lora_r=4"]),
                                      r"lora_r=4", False),
    # --- checkpoints and output folders ---
    "output dir holds a finished run": (lambda e: (e["out"].joinpath("run_info.json").write_text("{}"),
                                                   sft(e, output_dir=str(e["out"])))[1],
                                        r"output_dir .*out already holds a finished run", False),
    "output dir holds other files": (lambda e: sft(e, output_dir=str(e["out"])),
                                     r"output_dir .*out already holds files from an earlier run", False),
    "resume with no complete checkpoint": (lambda e: sft(e, output_dir=str(e["out"]), resume_from_checkpoint="latest"),
                                           r"no complete checkpoint-\* folder in .*out", False),
    "resume from a cut-short checkpoint": (lambda e: sft(e, output_dir=str(e["out"]),
                                                         resume_from_checkpoint=str(e["out"] / "checkpoint-3")),
                                           r"checkpoint-3 cannot be resumed from: trainer_state\.json is cut short",
                                           False),
    "resume from a checkpoint whose optimizer.pt is damaged": (
        lambda e: (write(e, "out/checkpoint-5/trainer_state.json", '{"global_step": 5}'),
                   write(e, "out/checkpoint-5/model.safetensors.index.json", "{}"),
                   write(e, "out/checkpoint-5/optimizer.pt", "junk"),
                   sft(e, output_dir=str(e["out"]), resume_from_checkpoint=str(e["out"] / "checkpoint-5")))[-1],
        r"checkpoint-5 cannot be resumed from: optimizer\.pt is damaged or cut short", False),
    "missing model path": (lambda e: sft(e, model_name_or_path=str(e["tmp"] / "no-model")),
                           r"model path not found: .*no-model", False),
    "model folder without config.json": (lambda e: ((e["tmp"] / "empty-model").mkdir(),
                                                    sft(e, model_name_or_path=str(e["tmp"] / "empty-model")))[1],
                                         r"empty-model has no config\.json", False),
    "head of another size": (lambda e: text_cls(e, model_name_or_path=bert_with_three_labels(e)),
                             r"classification head of another size than the 2 labels.*ignore_mismatched_sizes", True),
    "reward model that is not a scorer": (lambda e: ppo(e, reward_functions=None, reward_model=e["llama"]),
                                          r"reward_model .* is a LlamaForCausalLM, not a sequence classifier", True),
    # --- command-line tools ---
    "unknown recipe": (lambda e: ("cli", ["train", "sfft", "--config", "x.yaml"]), r"unknown recipe 'sfft'", False),
    "generate: prompt of the wrong type": (lambda e: ("cli", ["generate", "--model", e["llama"], "--input",
                                                              e["file"]("p.jsonl", [{"prompt": 3}]), "--output",
                                                              str(e["tmp"] / "o.jsonl")]),
                                           r"p\.jsonl line 1: field 'prompt' must be a non-empty string", False),
    "chat: corrupt adapter config": (lambda e: ("cli", ["chat", "--model", write(e, "adapter/adapter_config.json", "{")
                                                        .rsplit("/", 1)[0]]),
                                     r"adapter_config\.json: corrupt adapter config", False),
    "reward function that raises": (lambda e: ppo(e, reward_functions=[f"{e['tmp'] / 'r.py'}:raises"]),
                                    r"reward .*r\.py:raises raised ValueError: no score", True),
    "reward function file not found": (lambda e: grpo(e, reward_functions=[f"{e['tmp'] / 'nope.py'}:score"]),
                                       r"reward function '.*nope\.py:score': file not found", False),
    "reward function missing from its file": (lambda e: grpo(e, reward_functions=[f"{e['tmp'] / 'r.py'}:absent"]),
                                              r"reward function '.*r\.py:absent': .*r\.py has no function 'absent'",
                                              False),
    "reward weights of another count": (lambda e: grpo(e, reward_weights=[1.0, 2.0]),
                                        r"reward_weights has 2 values for 1 reward source", False),
    "reward model path not found": (lambda e: grpo(e, reward_model=str(e["tmp"] / "no-rm")),
                                    r"reward_model: model path not found: .*no-rm", False),
    "SQuAD article that is not an object": (
        lambda e: ("question_answering", {"model_name_or_path": e["bert"], "output_dir": e["fresh"], "max_steps": 1,
                                          "dataset_name": write(e, "sq.json", '{"data": [1]}')}),
        r"sq\.json data\[0\]: an article must be an object", False),
    "a list label among single labels": (
        lambda e: text_cls(e, rows=[{"text": "a", "label": "pos"}, {"text": "b", "label": ["pos", "neg"]},
                                    {"text": "c", "label": "neg"}]),
        r"cls\.jsonl line 2: field 'label' is a list, but other rows hold one label", False),
    "attention transformers does not know": (lambda e: sft(e, attn_implementation="nosuch"),
                                             r"attn_implementation 'nosuch' is not an attention", False),
    "broken YAML": (lambda e: ("cli", ["train", "sft", "--config", write(e, "b.yaml", "lora_r: [8\n")]),
                    r"b\.yaml: not valid YAML: line \d+, column \d+: ", False),
    "column_mapping naming no column of the data": (
        lambda e: sft(e, column_mapping={"instruction": "nosuch"}),
        r"chat\.jsonl: column_mapping maps instruction to column 'nosuch', which no row has", False),
    "column_mapping naming no column of a stream's first row": (
        lambda e: sft(e, streaming=True, max_steps=3, column_mapping={"instruction": "nosuch"}),
        r"chat\.jsonl: column_mapping maps instruction to column 'nosuch', which no row has", False),
    "a source's column_mapping that is not a mapping": (
        lambda e: mixture(e, ("a.jsonl", chat_rows(4), {}), ("b.jsonl", chat_rows(4), {"column_mapping": 7})),
        r"datasets\[1\]\.column_mapping must be a mapping such as \{instruction: question\}, got 7", False),
    "max_train_samples -3": (lambda e: sft(e, max_train_samples=-3),
                             r"max_train_samples must be a whole number >= 1 \(or unset for every row\), got -3",
                             False),
    # --- values check and train must both refuse (one validation path), before anything loads ---
    "batch size -8": (lambda e: sft(e, per_device_train_batch_size=-8),
                      r"per_device_train_batch_size must be a positive integer, got -8", False),
    "gradient accumulation 0": (lambda e: sft(e, gradient_accumulation_steps=0),
                                r"gradient_accumulation_steps must be a positive integer, got 0", False),
    "lora dropout 1.5": (lambda e: sft(e, lora_dropout=1.5), r"lora_dropout must be in \[0, 1\), got 1\.5", False),
    "lora alpha -16": (lambda e: sft(e, lora_alpha=-16), r"lora_alpha must be positive, got -16", False),
    "zero epochs": (lambda e: sft(e, max_steps=-1, num_train_epochs=0), r"num_train_epochs is 0.* train nothing", False),
    "max_length 0": (lambda e: sft(e, max_length=0), r"max_length must be a positive number of tokens, got 0", False),
    "seed outside numpy's range": (lambda e: sft(e, seed=-1), r"seed must be between 0 and 2\*\*32 - 1", False),
    "endless epochs": (lambda e: sft(e, max_steps=-1, num_train_epochs=float("inf")),
                       r"num_train_epochs must be a finite number", False),
    "negative weight decay": (lambda e: sft(e, weight_decay=-1), r"weight_decay must be a number at least 0", False),
    "negative NEFTune alpha": (lambda e: sft(e, neftune_noise_alpha=-5), r"neftune_noise_alpha must be .* above 0",
                               False),
    "train into the run it starts from": (
        lambda e: sft(e, model_name_or_path=str(e["out"]), output_dir=str(e["out"]), overwrite_output_dir=True),
        r"output_dir .*out is model_name_or_path .*out: the run would replace what it reads", False),
    "overwrite the folder that holds the data": (
        lambda e: sft(e, dataset_name=write(e, "out/d.jsonl", json.dumps({"text": "a b"}) + "\n"),
                      output_dir=str(e["out"]), overwrite_output_dir=True),
        r"output_dir .*out holds dataset_name .*out/d\.jsonl: the run would replace what it reads", False),
    "train from an adapter that names itself as its base": (
        lambda e: sft(e, model_name_or_path=self_based_adapter(e), tokenizer_name_or_path=e["llama"]),
        r"self-based: the adapter's base model .* is itself or an adapter based on it", False),
    "learning rate null": (lambda e: sft(e, learning_rate=None),
                           r"config key 'learning_rate' \(config file .*\) is null, but it takes a value", False),
    "lora rank null": (lambda e: sft(e, lora_r=None), r"config key 'lora_r' \(config file .*\) is null", False),
    "a held-out ratio that leaves no training row": (
        lambda e: text_cls(e, eval_split_ratio=0.9),
        r"cls\.jsonl: eval_split_ratio 0\.9 cannot split its 5 rows .*lower the ratio or add rows", False),
    "dpo beta -1": (lambda e: pairs(e, beta=-1), r"beta must be positive, got -1", False),
    "kto beta 0": (lambda e: pairs(e, "kto", rows=[{"prompt": "p", "completion": "c", "label": True}], beta=0),
                   r"beta must be positive, got 0", False),
    "one class": (lambda e: text_cls(e, rows=[{"text": f"{w} ok", "label": "pos"} for w in WORDS]),
                  r"cls\.jsonl: every row has the label 'pos'; a classifier needs at least two classes", False),
    "key given twice": (lambda e: ("cli", ["train", "sft", "--config", write(e, "dup.yaml", "dataset_name: x\n"
                                                                               "lora_r: 8\nlora_r: 16\n")]),
                        r"dup\.yaml: key 'lora_r' is given twice \(line 3\)", False),
    "a key the recipe ignores": (lambda e: text_cls(e, dtype="bfloat16"),
                                 r"key 'dtype' does nothing in the text_classification recipe", False),
    "a scheduler key for ppo": (lambda e: ppo(e, lr_scheduler_type="cosine"),
                                r"key 'lr_scheduler_type' does nothing in the ppo recipe", False),
    "config of another recipe": (lambda e: ("cli", ["train", "sft", "--config", write(e, "p.yaml", "recipe: dpo\n")]),
                                 r"p\.yaml is for recipe 'dpo' \(key 'recipe'\), not 'sft'", False),
    "config named by neither key nor name": (lambda e: ("cli", ["train", "--config", write(e, "mine.yaml", "lr: 1\n")]),
                                             r"which recipe\? Name it", False),
    # --- a finished run is never lost to a run that fails (the suite checks the output folder byte for byte) ---
    "overwrite, then target modules matching nothing": (
        lambda e: sft(e, output_dir=str(e["out"]), overwrite_output_dir=True, lora_target_modules=["nonexistent_proj"]),
        r"lora_target_modules \['nonexistent_proj'\] match no module of .*\(its linear layers: .*q_proj", False),
    "check: the output folder holds an earlier run": (
        lambda e: ("cli", ["check", "--recipe", "sft", "--config", write_config(
            e["tmp"] / "exists.yaml", sft(e, output_dir=str(e["out"]))[1])]),
        r"output_dir .*out already holds files from an earlier run; nothing was changed", False),
    "check: target modules matching nothing": (
        lambda e: ("cli", ["check", "--recipe", "sft", "--config", write_config(
            e["tmp"] / "targets.yaml", sft(e, lora_target_modules=["q_proj", "nonexistent_proj"])[1])]),
        r"lora_target_modules \['nonexistent_proj'\] match no module", False),
    "output folder under a file": (  # root may write anywhere: a path through a file is unwritable for everyone
        lambda e: sft(e, output_dir=str(e["out"] / "notes.txt" / "run"), overwrite_output_dir=True),
        r"output_dir .*notes\.txt/run: .*notes\.txt is not a writable folder", False),
    # --- damaged checkpoints and misnamed files ---
    "truncated safetensors": (lambda e: sft(e, model_name_or_path=llama_copy(e, "cut", truncate_weights)),
                              r"model .*cut: model\.safetensors is cut short \(\d+ bytes of \d+\)", False),
    "model folder without a tokenizer": (lambda e: sft(e, model_name_or_path=llama_copy(e, "notok", drop_tokenizer)),
                                         r"notok has no tokenizer files .*tokenizer_name_or_path", False),
    "jsonl named .parquet": (lambda e: sft(e, dataset_name=write(e, "rows.parquet", '{"text": "hi"}\n')),
                             r"rows\.parquet: not a parquet file \(it does not start with PAR1\)", False),
    "chat with a truncated model": (lambda e: ("cli", ["chat", "--model", llama_copy(e, "cut2", truncate_weights)]),
                                    r"model\.safetensors is cut short", False),
    # --- commands that write files ---
    "generate with an encoder onto an existing file, --overwrite given": (
        lambda e: ("cli", ["generate", "--model", e["bert"], "--input", e["file"]("p.jsonl", [{"prompt": "hi"}]),
                           "--output", str(e["out"] / "notes.txt"), "--overwrite"]),
        r"is not a generative \(causal LM\) model", False),
    "generate onto an existing file": (
        lambda e: ("cli", ["generate", "--model", e["llama"], "--input", e["file"]("p.jsonl", [{"prompt": "hi"}]),
                           "--output", str(e["out"] / "notes.txt")]),
        r"--output .*notes\.txt exists; give another path, or --overwrite to replace it", False),
    "predict onto an existing file": (
        lambda e: ("cli", ["predict", "--model", e["bert"], "--input", e["file"]("t.jsonl", [{"text": "hi"}]),
                           "--output", str(e["out"] / "notes.txt")]),
        r"--output .*notes\.txt exists; give another path, or --overwrite", False),
    "generate from an empty input file": (
        lambda e: ("cli", ["generate", "--model", e["llama"], "--input", e["file"]("p.jsonl", []),
                           "--output", str(e["tmp"] / "answers.jsonl")]),
        r"p\.jsonl: no rows; give a file with one \{\"prompt\": \.\.\.\} per line", False),
    "predict from an empty input file": (
        lambda e: ("cli", ["predict", "--model", e["bert"], "--input", e["file"]("t.jsonl", []),
                           "--output", str(e["tmp"] / "labels.jsonl")]),
        r"t\.jsonl: no rows; give a file with one \{\"text\": \.\.\.\} per line", False),
    "chat with an encoder": (lambda e: ("cli", ["chat", "--model", e["bert"]]), r"is not a generative", False),
    "generate into a folder": (
        lambda e: ("cli", ["generate", "--model", e["llama"], "--input", e["file"]("p.jsonl", [{"prompt": "hi"}]),
                           "--output", str(e["out"])]), r"--output .*out is a folder; give a file path", False),
    "generate onto its own input file": (
        lambda e: ("cli", ["generate", "--model", e["llama"], "--input", write(e, "out/p.jsonl", '{"prompt": "hi"}\n'),
                           "--output", str(e["out"] / "p.jsonl")]),
        r"--output .*p\.jsonl is the input file; writing the results there would replace it", False),
    "predict onto its own input file": (
        lambda e: ("cli", ["predict", "--model", e["bert"], "--input", write(e, "out/t.jsonl", '{"text": "hi"}\n'),
                           "--output", str(e["out"] / "t.jsonl")]),
        r"--output .*t\.jsonl is the input file", False),
    "generate batch size 0": (
        lambda e: ("cli", ["generate", "--model", e["llama"], "--input", e["file"]("p.jsonl", [{"prompt": "hi"}]),
                           "--output", str(e["tmp"] / "a.jsonl"), "--batch_size", "0"]),
        r"--batch_size must be a positive integer, got 0", False),
    "serve on port 70000": (lambda e: ("cli", ["serve", "--model", e["llama"], "--port", "70000"]),
                            r"--port must be in 1-65535 \(got 70000\)", False),
    "text classification from a LoRA run folder": (
        lambda e: text_cls(e, model_name_or_path=lora_run_folder(e)),
        r"sft-run is a LoRA adapter run .*finetune-kit export", False),
    "report: a log history that is not a list of steps": (
        lambda e: ("cli", ["report", write(e, "r/log_history.json", '{"loss": 1}').rsplit("/", 1)[0]]),
        r"r/log_history\.json is not a list of logged steps", False),
    "report: run_info.json that is not an object": (
        lambda e: (write(e, "r/run_info.json", "[]"),
                   ("cli", ["report", write(e, "r/log_history.json", "[]").rsplit("/", 1)[0]]))[1],
        r"r/run_info\.json is not a JSON object", False),
    "chat with a file that is not GGUF": (lambda e: ("cli", ["chat", "--model", write(e, "m.gguf", "hello")]),
                                          r"m\.gguf: not a GGUF file", False),
    "inspect a cut-short GGUF": (lambda e: ("cli", ["inspect", write(e, "short.gguf", "GGUF\x03\x00\x00\x00")]),
                                 r"short\.gguf: gguf cannot read this file .*damaged or cut short", False),
    "generate from a checkpoint whose config.json is damaged": (
        lambda e: ("cli", ["generate", "--model", llama_copy(e, "badcfg", lambda f: (f / "config.json").write_text("{")),
                           "--input", e["file"]("p.jsonl", [{"prompt": "hi"}]), "--output", str(e["tmp"] / "a.jsonl")]),
        r"badcfg/config\.json: not valid JSON", False),
    "train from a checkpoint whose config.json is damaged": (
        lambda e: sft(e, model_name_or_path=llama_copy(e, "badcfg2", lambda f: (f / "config.json").write_text("{"))),
        r"could not load the local .*badcfg2 \(OSError: .*config\.json", False),
    "chat with an adapter of a peft_type peft does not know": (
        lambda e: ("cli", ["chat", "--model", lora_run_folder(e, peft_type="NOSUCH")]),
        r"sft-run/adapter_config\.json: peft_type 'NOSUCH' is not one peft", False),
    "export onto its source": (lambda e: ("cli", ["export", str(e["out"]), "--out", str(e["out"]), "--overwrite"]),
                               r"--out .*out is the source run", False),
    "export over the folder that holds its source": (
        lambda e: ("cli", ["export", llama_copy(e, "out/model", lambda folder: None), "--out", str(e["out"]),
                           "--overwrite"]), r"--out .*out holds the source .*model; export to another folder", False),
    "tune over a damaged study database": (lambda e: ("cli", ["tune", "--config", tune_config(e), "--study_dir",
                                                              write(e, "out/study.db", "SQLite format 3\x00 cut")[:-9]]),
                                           r"out/study\.db: not a readable study database .*move it away", False),
    "export over a finished training run": (
        lambda e: (e["out"].joinpath("run_info.json").write_text("{}"),
                   ("cli", ["export", e["llama"], "--out", str(e["out"]), "--overwrite"]))[1],
        r"--out .*out holds a finished training run \(run_info\.json\)", False),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(env, name, capsys, monkeypatch):
    import transformers

    build, message, loads_weights = CASES[name]
    recipe, cfg = build(env)
    if not loads_weights:
        def refuse(*args, **kwargs):
            raise WeightsLoaded(name)
        monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained", classmethod(refuse))
    before = {p.relative_to(env["out"]): p.read_bytes() if p.is_file() else None for p in env["out"].rglob("*")}
    if PROCESS_TIMINGS and not loads_weights:
        import subprocess
        import sys

        argv = cfg if recipe == "cli" else ["train", recipe, "--config", write_config(env["tmp"] / "cfg.yaml", cfg)]
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "finetune_kit.cli", *argv], capture_output=True, text=True,
                              timeout=300)
        PROCESS_SECONDS[name] = time.perf_counter() - start
        assert done.returncode == 2 and "Traceback" not in done.stderr and re.search(message, done.stderr), done.stderr

    start = time.perf_counter()
    with pytest.raises(SystemExit) as exit_info:
        if recipe == "cli":
            cli_main(cfg)
        else:
            run_cli(recipes.get(recipe).load().main, ["--config", write_config(env["tmp"] / "cfg.yaml", cfg)])
    TIMINGS[name] = time.perf_counter() - start
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err and "WeightsLoaded" not in err, err
    error_lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1 and re.search(message, error_lines[0]), err
    after = {p.relative_to(env["out"]): p.read_bytes() if p.is_file() else None for p in env["out"].rglob("*")}
    assert after == before
    # Met once training runs: the trainer has made its (empty) output folder by then.
    assert not Path(env["fresh"]).exists() or name in ("reward function that raises", "a bad row met while streaming")


def test_the_suite_is_large_and_mostly_fails_before_weights_load():
    assert len(CASES) >= 30
    assert sum(not loads for _, _, loads in CASES.values()) >= 30
