"""DPO peak memory: LoRA with the adapter-disabled base as reference vs LoRA plus an explicit reference copy.

Both arms run `recipes/dpo.py` in their own process on the same model, data, seed and steps; each process's peak
RSS (and peak CUDA memory on a GPU) comes from its run_info.json.

    python benchmarks/dpo_reference_memory.py --config recipes/configs/dpo_lora_smollm2.yaml --max_steps 4
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml
from record_run import RESULTS, machine

ROOT = Path(__file__).resolve().parent.parent


def run_arm(config: str, out: Path, max_steps: int, extra: list[str]) -> dict:
    command = [sys.executable, str(ROOT / "recipes" / "dpo.py"), "--config", config, "--output_dir", str(out),
               "--overwrite_output_dir", "true", "--max_steps", str(max_steps), "--eval_split_ratio", "0",
               "--disable_tqdm", "true", *extra]
    start = time.time()
    subprocess.run(command, check=True, cwd=ROOT)
    info = json.loads((out / "run_info.json").read_text())
    return {"command": " ".join(command[1:]), "wall_seconds": round(time.time() - start, 1),
            "peak_memory_mb": info["peak_memory_mb"], "train_loss": info["metrics"].get("train_loss")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="recipes/configs/dpo_lora_smollm2.yaml")
    parser.add_argument("--max_steps", type=int, default=4)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-dpo-memory")
    args = parser.parse_args()
    adapter_off = run_arm(args.config, args.out / "adapter-disabled", args.max_steps, [])
    model = yaml.safe_load((ROOT / args.config).read_text())["model_name_or_path"]
    explicit = run_arm(args.config, args.out / "explicit-copy", args.max_steps, ["--ref_model_name_or_path", model])
    key = "cuda_allocated" if "cuda_allocated" in adapter_off["peak_memory_mb"] else "rss"
    result = {"name": "dpo_reference_memory", "config": args.config, "max_steps": args.max_steps,
              "adapter_disabled_reference": adapter_off, "explicit_reference_copy": explicit,
              "memory_kind": key,
              "ratio_explicit_over_adapter_disabled": round(explicit["peak_memory_mb"][key]
                                                            / adapter_off["peak_memory_mb"][key], 3),
              "command": " ".join([sys.executable, *sys.argv]), "machine": machine()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "dpo_reference_memory.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))


if __name__ == "__main__":
    main()
