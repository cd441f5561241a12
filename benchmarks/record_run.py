"""Record a finished run as a benchmark result: its metrics, timing, machine and versions, and the command.

    python benchmarks/record_run.py runs/text-classification-minilm-sst2 --name sst2_minilm \
        --command "python recipes/text_classification.py --config ..." --wall_seconds 420
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else None
    from finetune_kit.hardware import bf16_is_fast

    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "native_bf16": bf16_is_fast()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--name", required=True)
    parser.add_argument("--command", required=True)
    parser.add_argument("--wall_seconds", type=float)
    parser.add_argument("--note", default="")
    parser.add_argument("--summary", type=Path, help="a JSON file of extra results to include (e.g. a demo summary)")
    args = parser.parse_args()
    info = json.loads((args.run_dir / "run_info.json").read_text())
    metrics = {k: v for k, v in info["metrics"].items() if not isinstance(v, dict)}
    result = {"name": args.name, "command": args.command, "wall_seconds": args.wall_seconds, "note": args.note,
              "metrics": metrics, "peak_memory_mb": info.get("peak_memory_mb"), "machine": machine(), "versions": info["versions"],
              "git_revision": info["git_revision"]}
    if args.summary:
        result["summary"] = json.loads(args.summary.read_text())
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{args.name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
