"""Image classification: sources (digits, folder, CSV), unreadable files, shared preprocessing, learning."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import check_and_train_refuse, run_recipe, write_config
from finetune_kit.errors import DataError
from finetune_kit.tasks import images as img

# Trains with the recipes' default precision: `make test` runs this file under both bf16 decisions.
pytestmark = pytest.mark.precision


def write_images(root, count_per_label=12):
    from PIL import Image

    rng = np.random.default_rng(0)
    for label, value in (("dark", 40), ("light", 215)):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(count_per_label):
            pixels = np.clip(rng.normal(value, 20, (8, 8, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / label / f"{i}.png")
    return root


def config(tmp_path, dataset, **extra):
    cfg = {"model_name_or_path": img.FROM_CONFIG, "image_size": 16, "dataset_name": str(dataset),
           "output_dir": str(tmp_path / "run"), "num_train_epochs": 4, "per_device_train_batch_size": 8,
           "learning_rate": 1e-3, "logging_steps": 1, "save_strategy": "no", "report_to": "none",
           "disable_tqdm": True, "seed": 0}
    cfg.update(extra)
    return ["--config", write_config(tmp_path / "c.yaml", cfg)]


def test_digits_source():
    rows = img.image_rows("sklearn:digits")
    assert len(rows) == 1797 and rows[0][1]["image"].size == (8, 8) and rows[0][1]["label"] == "0"


def test_folder_run_learns_and_predicts_with_the_same_preprocessing(tmp_path, capsys):
    from transformers import AutoImageProcessor

    from finetune_kit.cli import main
    from finetune_kit.models import load_for_inference

    root = write_images(tmp_path / "images")
    metrics = run_recipe("image_classification", config(tmp_path, root, test_split_ratio=0.25, augment="flip_crop"))
    history = [e["loss"] for e in json.loads((tmp_path / "run" / "log_history.json").read_text()) if "loss" in e]
    assert history[-1] < history[0] and metrics["test_accuracy"] >= 0.8
    assert json.loads((tmp_path / "run" / "config.json").read_text())["id2label"] == {"0": "dark", "1": "light"}

    # Train-time preprocessing (the processor the recipe built) and predict-time (the one saved with the run)
    # give identical tensors.
    model, saved = load_for_inference(str(tmp_path / "run"))
    _, built = img.tiny_vit(["dark", "light"], 16)
    image = root / "light" / "0.png"
    assert torch.equal(img.pixel_values(built, [str(image)]), img.pixel_values(saved, [str(image)]))
    assert isinstance(saved, type(AutoImageProcessor.from_pretrained(tmp_path / "run")))
    capsys.readouterr()
    main(["predict", "--model", str(tmp_path / "run"), "--image", str(image)])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["label"] == "light"


def test_csv_source_and_unreadable_image(tmp_path):
    root = write_images(tmp_path / "images", count_per_label=2)
    (tmp_path / "list.csv").write_text("image,label\nimages/dark/0.png,dark\nimages/light/0.png,light\n")
    rows = img.image_rows(str(tmp_path / "list.csv"))
    assert rows[1][1] == {"image": str(tmp_path / "images" / "light" / "0.png"), "label": "light"}
    (root / "dark" / "broken.png").write_text("not an image")
    with pytest.raises(DataError, match=r"broken\.png: cannot read image .*broken\.png"):
        run_recipe("image_classification", config(tmp_path, root))
    assert not (tmp_path / "run").exists()


def test_augment_keeps_the_shape():
    x = torch.arange(3 * 16 * 16, dtype=torch.float).view(3, 16, 16)
    out = img.augment(x, "flip_crop", torch.Generator().manual_seed(0))
    assert out.shape == x.shape


def test_check_refuses_a_split_the_images_cannot_meet_as_train_does(tmp_path, capsys):
    # One image a class cannot be stratified into two sides: `check` once said "clean" here, `train` then stopped.
    argv = config(tmp_path, write_images(tmp_path / "few", count_per_label=1), eval_split_ratio=0.5,
                  recipe="image_classification")
    check_and_train_refuse("image_classification", argv, r"few: eval_split_ratio 0\.5 cannot split its 2 rows", capsys)
    assert not (tmp_path / "run").exists()
