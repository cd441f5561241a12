"""Vision-language SFT on a tiny SmolVLM-shaped model built from a config (the embedded SmolLM2 tokenizer with SmolVLM's
image tokens, SmolVLM's chat template): LoRA on the language model learns, the labels trl's collator builds, the
max_length check on image tokens (check and train refuse the same row, train before the model loads), bad input."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from conftest import run_recipe, write_config, write_jsonl

from finetune_kit import cli
from finetune_kit import demo_vision_chat as demo
from finetune_kit.errors import DataError
from finetune_kit.tasks import vision_chat as vc

TINY = {"vision_hidden": 32, "vision_layers": 1, "text_hidden": 32, "text_layers": 2}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    """24 training rows of the shapes demo (pictures under images/train/) and a tiny random SmolVLM."""
    root = tmp_path_factory.mktemp("shapes")
    write_jsonl(root / "train.jsonl", demo.rows_for("train", 24, root, random.Random(1)))
    demo.tiny_smolvlm(root / "vlm", seed=0, initializer_range=0.2, **TINY)  # wide init: LoRA learns in a few steps
    return root


def config(tmp_path, shapes, name="run", **extra) -> list[str]:
    cfg = {"model_name_or_path": str(shapes / "vlm"), "dataset_name": str(shapes / "train.jsonl"),
           "output_dir": str(tmp_path / name), "max_length": 64, "max_steps": 12, "per_device_train_batch_size": 8,
           "learning_rate": 1e-2, "logging_steps": 2, "save_strategy": "no", "report_to": "none",
           "disable_tqdm": True, "seed": 0, "report": False}
    cfg.update(extra)
    return ["--config", write_config(tmp_path / f"{name}.yaml", cfg)]


def losses(out: Path) -> list[float]:
    return [e["loss"] for e in json.loads((out / "log_history.json").read_text()) if "loss" in e]


def rows_with(shapes: Path, tmp_path: Path, extra: list[dict], name: str = "data.jsonl") -> Path:
    """Four good rows of the shapes data (absolute picture paths) followed by `extra` rows."""
    good = [json.loads(line) for line in (shapes / "train.jsonl").read_text().splitlines()[:4]]
    for row in good:
        row["images"] = [str(shapes / p) for p in row["images"]]
    return write_jsonl(tmp_path / name, [*good, *extra])


def picture_row(shapes: Path, before: str = "", answer: str = "red") -> dict:
    return {"messages": [{"role": "user", "content": [{"type": "text", "text": before}, {"type": "image"},
                                                      {"type": "text", "text": "What colour is the shape?"}]},
                         {"role": "assistant", "content": [{"type": "text", "text": answer}]}],
            "images": [str(shapes / "images/train/00000.png")]}


def _fails(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "Traceback" not in err and err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_lora_on_the_language_model_learns_and_only_its_adapters_change(tmp_path, shapes):
    from safetensors.torch import load_file

    metrics = run_recipe("sft_vision", config(tmp_path, shapes, use_peft=True, lora_r=8, lora_alpha=16))
    out = tmp_path / "run"
    assert losses(out)[-1] < 0.7 * losses(out)[0] and metrics["train_loss"] > 0
    weights = load_file(out / "adapter_model.safetensors")
    lora_b = [t for k, t in weights.items() if "lora_B" in k]
    assert lora_b and all(t.abs().sum() > 0 for t in lora_b)  # peft starts B at zero: every adapter was trained
    assert all(".text_model." in k for k in weights)  # the vision tower and connector have none
    info = json.loads((out / "run_info.json").read_text())
    assert info["decisions"]["assistant_only_loss"]["value"] is True
    assert info["decisions"]["lora_target_modules"]["value"].startswith(r"model\.text_model\.")
    from finetune_kit.inspect_model import describe

    assert describe(str(shapes / "vlm"))["family"] == "vision-language"
    assert describe(str(shapes / "vlm"))["recipes"] == ["sft_vision"]
    assert describe(str(out))["training"]["recipe"] == "sft_vision"
    # the run answers: loaded back (adapter merged into its base) and asked greedily
    model, processor = demo.load_for_answers(str(out))
    row = json.loads((shapes / "train.jsonl").read_text().splitlines()[0])
    assert len(demo.answer(model, processor, [row], shapes)) == 1


def _trainer(shapes, assistant_only_loss: bool):
    """trl's SFTTrainer as the recipe builds it (the tiny model, its processor), for its data collator."""
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import SFTConfig, SFTTrainer

    part = [(f"row {i}", vc.normalise_row(picture_row(shapes, answer=a), f"row {i}")) for i, a in
            enumerate(("red", "blue"))]
    args = SFTConfig(output_dir=str(shapes / "collator"), max_length=64, assistant_only_loss=assistant_only_loss,
                     report_to="none", use_cpu=True, bf16=False)
    trainer = SFTTrainer(model=AutoModelForImageTextToText.from_pretrained(shapes / "vlm"), args=args,
                         train_dataset=vc.to_dataset(part), processing_class=AutoProcessor.from_pretrained(shapes / "vlm"))
    return trainer, [dict(trainer.train_dataset[i]) for i in range(2)]


def test_labels_carry_the_answer_only_and_never_an_image_token(shapes):
    trainer, examples = _trainer(shapes, assistant_only_loss=True)
    processor = trainer.processing_class
    batch = trainer.data_collator(examples)
    image = processor.image_token_id
    assert (batch["input_ids"] == image).sum() == 2 * processor.image_seq_len  # one picture a row, expanded
    assert (batch["labels"][batch["input_ids"] == image] == -100).all()
    trained = [processor.tokenizer.decode([t for t in row if t != -100]) for row in batch["labels"].tolist()]
    assert trained == [" red<end_of_utterance>\n", " blue<end_of_utterance>\n"]  # the turn's end is learned too
    # trl's collator masks nothing but padding without assistant_only_loss: the image tokens would carry loss, which
    # is why the recipe turns assistant_only_loss on where the chat template allows it
    trainer, examples = _trainer(shapes, assistant_only_loss=False)
    batch = trainer.data_collator(examples)
    assert (batch["labels"][batch["input_ids"] == image] == image).all()


def test_a_row_whose_image_tokens_max_length_cuts_is_refused_by_check_and_train(tmp_path, shapes, capsys,
                                                                                  monkeypatch):
    long_prompt = picture_row(shapes, before="Look closely at this small picture of a shape, please. " * 3)
    data = rows_with(shapes, tmp_path, [long_prompt])
    argv = config(tmp_path, shapes, dataset_name=str(data), max_length=40)
    err = _fails(["check", "--recipe", "sft_vision", *argv], capsys)
    assert "data.jsonl line 5:" in err and "max_length=40 would cut inside them" in err
    assert "Raise max_length to" in err and "skip_invalid_rows" in err

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(vc, "load_model", never)
    assert "data.jsonl line 5:" in _fails(["train", "sft_vision", *argv], capsys)
    assert not (tmp_path / "run").exists()

    # what the check spares the user: trl's collator, at that max_length, stops on the row
    from transformers import AutoProcessor
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    row = dict(vc.to_dataset([("row", vc.normalise_row(long_prompt, "row"))])[0])
    with pytest.raises((ValueError, TypeError)):
        DataCollatorForVisionLanguageModeling(AutoProcessor.from_pretrained(shapes / "vlm"), max_length=40)([row])

    with pytest.raises(SystemExit) as fits:  # the same rows fit a longer max_length
        cli.main(["check", "--recipe", "sft_vision", *argv, "--max_length", "128"])
    assert fits.value.code == 0 and "data.jsonl" not in capsys.readouterr().err
    with pytest.raises(SystemExit) as skipped:
        cli.main(["check", "--recipe", "sft_vision", *argv, "--skip_invalid_rows", "true"])
    assert skipped.value.code == 0 and "training: dropped 1 of 5 rows whose image tokens" in capsys.readouterr().out


def test_a_row_cut_after_its_image_tokens_is_counted_not_refused(tmp_path, shapes, capsys):
    long_answer = picture_row(shapes, answer="red, a deep and bright red, the red of ripe tomatoes " * 3)
    argv = config(tmp_path, shapes, dataset_name=str(rows_with(shapes, tmp_path, [long_answer])), max_length=40)
    with pytest.raises(SystemExit) as warned:
        cli.main(["check", "--recipe", "sft_vision", *argv])
    assert warned.value.code == 1
    assert "1 of 5 training rows are longer than max_length=40 and will be truncated" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["not an image", "missing image", "placeholders and images differ",
                                  "column_mapping naming no column"])
def test_bad_input_is_named_before_anything_loads(case, tmp_path, shapes, capsys):
    row, extra = picture_row(shapes), {}
    if case == "not an image":
        (tmp_path / "notes.png").write_text("not a picture")
        row["images"] = ["notes.png"]  # relative to the data file's folder
        expected = "data.jsonl line 5: images[0]: cannot read image"
    elif case == "missing image":
        row["images"] = ["gone.png"]
        expected = "data.jsonl line 5: images[0]: file not found:"
    elif case == "placeholders and images differ":
        row["images"] = row["images"] * 2
        expected = "data.jsonl line 5: 1 image placeholder(s) in the conversation but 2 image(s) in 'images'"
    else:  # the rows hold their pictures under 'pictures'; the mapping misspells it
        extra["column_mapping"] = {"images": "picture"}
        expected = "data.jsonl: column_mapping maps images to column 'picture', which no row has (columns of row 1: "
    data = rows_with(shapes, tmp_path, [row])
    if extra:
        data.write_text(data.read_text().replace('"images":', '"pictures":'))
    argv = config(tmp_path, shapes, dataset_name=str(data), **extra)
    assert expected in _fails(["train", "sft_vision", *argv], capsys)
    assert expected in _fails(["check", "--recipe", "sft_vision", *argv], capsys)
    assert not (tmp_path / "run").exists()


def test_llava_sharegpt_and_placeholder_free_rows_are_read(tmp_path):
    llava = {"conversations": [{"from": "human", "value": "<image>\nWhat colour is it?"},
                               {"from": "gpt", "value": "red"}], "image": "pics/a.png"}
    row = vc.normalise_row(llava, "l line 1", tmp_path)
    assert row["messages"][0] == {"role": "user", "content": [{"type": "image"},
                                                              {"type": "text", "text": "\nWhat colour is it?"}]}
    assert row["images"] == [str(tmp_path / "pics/a.png")]
    # trl's documented string form: no placeholder, the images go before the first user text
    plain = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Colour?"},
                          {"role": "assistant", "content": "red"}], "images": ["a.png", "b.png"]}
    user = vc.normalise_row(plain, "p line 1")["messages"][1]["content"]
    assert [p["type"] for p in user] == ["image", "image", "text"]
    with pytest.raises(DataError, match=r"x line 1: .*ends with a 'user' turn"):
        vc.normalise_row({"messages": [{"role": "user", "content": "<image> hi"}], "images": ["a.png"]}, "x line 1")
    with pytest.raises(DataError, match=r"x line 2: messages\[0\].content\[0\]: put image paths in the row's"):
        vc.normalise_row({"messages": [{"role": "user", "content": [{"type": "image", "image": "a.png"}]},
                                       {"role": "assistant", "content": "red"}]}, "x line 2")


def test_keys_that_do_nothing_for_image_rows_are_refused(tmp_path, shapes, capsys):
    assert "key 'packing' does nothing in the sft_vision recipe" in _fails(
        ["train", "sft_vision", *config(tmp_path, shapes, packing=True)], capsys)
    assert "train_sampling_strategy group_by_length needs token lengths" in _fails(
        ["train", "sft_vision", *config(tmp_path, shapes, train_sampling_strategy="group_by_length")], capsys)


def test_a_finished_run_is_not_overwritten(tmp_path, shapes, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run_info.json").write_text("{}")
    assert "already holds a finished run" in _fails(["train", "sft_vision", *config(tmp_path, shapes)], capsys)
    assert (out / "run_info.json").read_text() == "{}"
