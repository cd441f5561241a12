"""The benchmark harness itself (not a benchmark): both arms run on a tiny model and the JSON holds every field."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_both_arms_run_and_the_json_is_complete(tmp_path, tiny_model_dir):
    rows = [{"instruction": f"Say the number {i}.", "input": "" if i % 2 else "digits please",
             "output": f"The number is {i}. " * (1 + i % 4)} for i in range(24)]
    data = tmp_path / "alpaca.json"
    data.write_text(json.dumps(rows))
    out = subprocess.run([sys.executable, "-m", "benchmarks", "sft", "--model", str(tiny_model_dir), "--data",
                          str(data), "--steps", "3", "--batch", "2", "--accumulation", "2", "--max_length", "64",
                          "--results", str(tmp_path / "results")], cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((tmp_path / "results" / "bench_sft.json").read_text())
    assert set(result["arms"]) == {"trl-default", "ours"}
    for arm in result["arms"].values():
        assert len(arm["losses"]) == 3 and arm["trained_tokens"] > 0 and arm["tokens_per_second"] > 0
        assert arm["peak_memory_mb"]["rss"] > 100
    assert set(result["ratios_ours_over_baseline"]) >= {"tokens_per_second", "peak_rss", "final_loss"}
    assert result["command"].startswith("python -m benchmarks sft") and result["versions"]["trl"]
