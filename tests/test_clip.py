"""Image-text contrastive fine-tuning (clip) on a tiny CLIP built from a config: learning, zero-shot scoring, the
same preprocessing at train and eval time, LoRA, inspect / check, and bad input named with exit 2."""

from __future__ import annotations

import csv
import json
import math
import random
from pathlib import Path

import pytest
import torch

from conftest import run_recipe, write_config
from finetune_kit import cli
from finetune_kit import demo_clip as demo
from finetune_kit.tasks import image_text as it

TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    """Captioned training shapes (train.csv), held-out labelled shapes (zero_shot/<label>/) and a tiny random CLIP."""
    root = tmp_path_factory.mktemp("shapes")
    rng = random.Random(0)
    rows = demo.write_images(root / "images", 6, rng, captions=True)
    with (root / "train.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "caption"])
        writer.writeheader()
        writer.writerows(rows)
    demo.write_images(root / "zero_shot", 2, rng, captions=False)
    demo.clip_from_config(root / "clip", seed=0, **TINY)
    return root


def config(tmp_path, shapes, name="run", **extra) -> list[str]:
    cfg = {"model_name_or_path": str(shapes / "clip"), "dataset_name": str(shapes / "train.csv"),
           "zero_shot_dataset_name": str(shapes / "zero_shot"), "output_dir": str(tmp_path / name),
           "max_steps": 30, "per_device_train_batch_size": 24, "per_device_eval_batch_size": 32,
           "learning_rate": 1e-3, "logging_steps": 1, "save_strategy": "no", "report_to": "none",
           "disable_tqdm": True, "seed": 0, "report": False}
    cfg.update(extra)
    return ["--config", write_config(tmp_path / f"{name}.yaml", cfg)]


def losses(out: Path) -> list[float]:
    return [e["loss"] for e in json.loads((out / "log_history.json").read_text()) if "loss" in e]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shapes) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("clip-run")
    return tmp / "run", run_recipe("clip", config(tmp, shapes))


def test_trains_with_falling_loss_changes_both_towers_and_scores_zero_shot(trained, shapes):
    from safetensors.torch import load_file

    out, metrics = trained
    history = losses(out)
    # Below log(24), the loss of features that do not tell the batch's 24 pairs apart: it learned, not collapsed.
    assert sum(history[-3:]) / 3 < min(0.75 * sum(history[:3]) / 3, math.log(24) - 0.3), history
    before, after = load_file(shapes / "clip" / "model.safetensors"), load_file(out / "model.safetensors")
    for name in ("vision_model.encoder.layers.0.self_attn.q_proj.weight",
                 "text_model.encoder.layers.0.self_attn.q_proj.weight", "logit_scale"):
        assert not torch.equal(before[name], after[name]), name
    assert 0 <= metrics["zero_shot_accuracy_before"] <= 1 and 0 <= metrics["zero_shot_accuracy"] <= 1
    per_class = metrics["zero_shot"]["per_class"]
    assert len(per_class) == 12 and sum(c["images"] for c in per_class.values()) == 24
    assert metrics["zero_shot"]["prompts"][0] == "a photo of a blue circle."  # underscores read as spaces
    info = json.loads((out / "run_info.json").read_text())
    assert info["metrics"]["zero_shot_accuracy"] == metrics["zero_shot_accuracy"]
    assert info["decisions"]["max_length"]["value"] == demo.MAX_TEXT_LENGTH
    assert info["decisions"]["text_padding"]["value"] == "longest"


def test_the_run_folder_preprocesses_and_scores_as_training_did(trained, shapes):
    """The processor saved with the run gives the tensors the checkpoint's gave in training, and the zero-shot score of
    the saved run, reloaded, is the one the recipe recorded."""
    from transformers import AutoProcessor

    out, metrics = trained
    images = sorted(str(p) for p in (shapes / "zero_shot").glob("*/*.png"))[:5]
    captions = ["a photo of a red circle.", "a small blue square in the top left."]
    train_time, eval_time = AutoProcessor.from_pretrained(shapes / "clip"), AutoProcessor.from_pretrained(out)
    batch = it.collator(train_time, 32, "longest")([{"image": i, "caption": c} for i, c in zip(images, captions)])
    assert torch.equal(batch["pixel_values"], it.encode_images(eval_time, images[:2])["pixel_values"])
    assert torch.equal(batch["input_ids"], it.encode_texts(eval_time, captions, 32, "longest")["input_ids"])
    assert demo.score(str(out), shapes / "zero_shot")["accuracy"] == metrics["zero_shot_accuracy"]


def test_zero_shot_accuracy_on_a_hand_made_case():
    texts = torch.eye(3)
    assert it.zero_shot_accuracy(texts.clone(), texts, ["a", "b", "c"], ["a", "b", "c"])["accuracy"] == 1.0
    images = torch.tensor([[1.0, 0.1, 0], [0.2, 1.0, 0], [0.9, 0, 0.1], [0, 0, -1.0]])  # the last is nearest to none
    result = it.zero_shot_accuracy(images, texts, ["a", "b", "c", "c"], ["a", "b", "c"])
    assert result["accuracy"] == 0.5
    assert result["per_class"]["c"] == {"images": 2, "correct": 0, "predicted": 0}
    assert result["per_class"]["a"] == {"images": 1, "correct": 1, "predicted": 3}


def test_an_image_folder_is_captioned_by_template_and_its_validation_split_scored_zero_shot(shapes):
    from types import SimpleNamespace

    cfg = SimpleNamespace(
        data=SimpleNamespace(dataset_name=str(shapes / "zero_shot"), eval_dataset_name=None, eval_split_ratio=0.5,
                             max_train_samples=None),
        task=SimpleNamespace(caption_template="a photo of a {label}.", zero_shot_dataset_name=None,
                             image_column="image", caption_column="caption", label_column="label"))
    rows = it.image_text_rows(cfg)
    assert rows["train"][0][1]["caption"] == "a photo of a blue circle." and len(rows["train"]) == 24
    splits = it.splits_of(rows, cfg, seed=0)
    images, labels, source = it.zero_shot_set(rows, splits, cfg)
    assert len(images) == 12 and len(set(labels)) == 12  # stratified: one held-out image of each class
    assert not set(images) & set(splits["train"]["image"]) and source.startswith("the validation split of")


def test_siglip_captions_are_padded_to_max_length_clip_ones_to_the_longest():
    from types import SimpleNamespace

    from finetune_kit.recipes.clip import text_padding

    auto = SimpleNamespace(text_padding="auto")
    assert text_padding(auto, SimpleNamespace(model_type="siglip"), set()).value == "max_length"
    assert text_padding(auto, SimpleNamespace(model_type="clip"), set()).value == "longest"
    assert text_padding(SimpleNamespace(text_padding="longest"), SimpleNamespace(model_type="siglip"), set()) is None


def test_lora_adapts_the_attention_projections_of_both_towers(tmp_path, shapes):
    run_recipe("clip", config(tmp_path, shapes, use_peft=True, lora_r=4, lora_alpha=8, learning_rate=1e-2,
                              max_steps=6))
    out = tmp_path / "run"
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert set(adapter["target_modules"]) == {"q_proj", "k_proj", "v_proj", "out_proj"}
    assert losses(out)[-1] < losses(out)[0]
    from safetensors.torch import load_file

    keys = list(load_file(out / "adapter_model.safetensors"))
    assert any("vision_model" in k for k in keys) and any("text_model" in k for k in keys)
    model, _ = it.load_run(str(out))
    assert type(model).__name__ == "CLIPModel"


def test_inspect_names_clip_and_check_counts_truncated_captions(tmp_path, shapes, capsys):
    from finetune_kit.inspect_model import describe

    summary = describe(str(shapes / "clip"))
    assert summary["family"] == "image-text" and summary["recipes"] == ["clip"]
    long = tmp_path / "long.csv"
    long.write_text("image,caption\n" + "".join(f"{p},a red circle.\n" for p in _images(shapes, 3))
                    + f"{_images(shapes, 1)[0]},{'a very long caption ' * 10}\n")
    with pytest.raises(SystemExit) as done:
        cli.main(["check", "--recipe", "clip", *config(tmp_path, shapes, dataset_name=str(long))])
    assert done.value.code == 1
    assert "1 of 4 train captions are longer than max_length=32 and will be truncated" in capsys.readouterr().out


def _images(shapes: Path, n: int) -> list[str]:
    return sorted(str(p) for p in (shapes / "images").glob("*/*.png"))[:n]


def _fails(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "Traceback" not in err and err.startswith("error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("case", ["not an image", "no caption column", "empty caption", "one class folder",
                                  "one class zero-shot", "template without label"])
def test_bad_input_is_named_before_training(case, tmp_path, shapes, capsys):
    images = _images(shapes, 3)
    data, extra = tmp_path / "d.csv", {}
    rows = [["image", "caption"], *([p, "a red circle."] for p in images)]
    if case == "not an image":
        (tmp_path / "notes.png").write_text("not a picture")
        rows.append([str(tmp_path / "notes.png"), "a note."])
        expected = "d.csv line 5: cannot read image"
    elif case == "no caption column":
        rows = [["image", "text"], *rows[1:]]
        expected = "d.csv line 2: missing field 'caption' (the caption; set caption_column"
    elif case == "empty caption":
        rows.append([images[0], " "])
        expected = "d.csv line 5: field 'caption' (the caption) must be non-empty text"
    elif case == "one class folder":
        (tmp_path / "folder" / "red_circle").mkdir(parents=True)
        for i, p in enumerate(images):
            Path(tmp_path / "folder" / "red_circle" / f"{i}.png").write_bytes(Path(p).read_bytes())
        data = tmp_path / "folder"
        expected = "folder: every image has the label 'red_circle'; zero-shot classification"
    elif case == "one class zero-shot":
        (tmp_path / "zs" / "red_circle").mkdir(parents=True)
        Path(tmp_path / "zs" / "red_circle" / "0.png").write_bytes(Path(images[0]).read_bytes())
        extra = {"zero_shot_dataset_name": str(tmp_path / "zs")}
        expected = "zs: every image has the label 'red_circle'"
    else:
        extra = {"caption_template": "a photo."}
        expected = "caption_template 'a photo.' has no {label}"
    if data.suffix == ".csv":
        with data.open("w", newline="") as handle:
            csv.writer(handle).writerows(rows)
    assert expected in _fails(["train", "clip", *config(tmp_path, shapes, dataset_name=str(data), **extra)], capsys)
    assert not (tmp_path / "run").exists()


def test_a_checkpoint_without_both_towers_is_refused_by_name(tmp_path, shapes, tiny_bert_dir, capsys):
    err = _fails(["train", "clip", *config(tmp_path, shapes, model_name_or_path=str(tiny_bert_dir))], capsys)
    assert "is a BertModel, not an image-text dual encoder" in err


def test_freeze_tower_freezes_one_tower_and_its_projection(shapes):
    model, _ = it.load_dual_encoder(str(shapes / "clip"))
    frozen = it.freeze_tower(model, "vision")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert frozen > 0 and not any(n.startswith(("vision_model.", "visual_projection.")) for n in trainable)
    assert "text_projection.weight" in trainable and "logit_scale" in trainable


def test_a_finished_run_is_not_overwritten(trained, shapes, capsys):
    out, _ = trained
    before = (out / "model.safetensors").read_bytes()
    argv = config(out.parent, shapes, name="again", output_dir=str(out))
    assert "already holds a finished run" in _fails(["train", "clip", *argv], capsys)
    assert (out / "model.safetensors").read_bytes() == before
