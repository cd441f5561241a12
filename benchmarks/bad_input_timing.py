"""Time to the error for each case of the bad-input suite (tests/test_bad_input_suite.py): how many fail fast.

Runs the suite with pytest, which records, per case, the time from calling the recipe / CLI to its exit in-process
(imports already done) and, for every case that needs no weights, the wall time of `finetune-kit ...` in a process of
its own, as a user runs it (interpreter start and imports included; the exit code, message and no-traceback are
checked there too). Writes benchmarks/results/bad_input_timing.json.

    python benchmarks/bad_input_timing.py
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from record_run import RESULTS, machine

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        timings_file, process_file = Path(tmp) / "timings.json", Path(tmp) / "process.json"
        env = {**os.environ, "FINETUNE_KIT_BAD_INPUT_TIMINGS": str(timings_file),
               "FINETUNE_KIT_BAD_INPUT_PROCESS_TIMINGS": str(process_file)}
        subprocess.run([sys.executable, "-m", "pytest", "-q", "tests/test_bad_input_suite.py"], cwd=ROOT, env=env,
                       check=True)
        timings, process = json.loads(timings_file.read_text()), json.loads(process_file.read_text())
    sys.path[:0] = [str(ROOT / "tests")]
    from test_bad_input_suite import CASES

    fast = {name: t for name, t in timings.items() if t < 2.0}
    walls = sorted(process.values())
    result = {"name": "bad_input_timing", "cases": len(timings), "fail_fast_under_2s": len(fast),
              "no_weights_cases_as_processes": {
                  "count": len(walls), "median_s": round(statistics.median(walls), 2), "slowest_s": round(walls[-1], 2),
                  "under_2s": sum(w < 2.0 for w in walls),
                  "slowest": sorted(((round(t, 2), n) for n, t in process.items()), reverse=True)[:5],
                  "seconds": {n: round(t, 3) for n, t in process.items()}},
              "slowest": sorted(((round(t, 2), n) for n, t in timings.items()), reverse=True)[:5],
              "loads_weights_first": [n for n, case in CASES.items() if case[2]], "seconds": {n: round(t, 3) for n, t in timings.items()},
              "command": "python benchmarks/bad_input_timing.py", "machine": machine()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bad_input_timing.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"{len(fast)} of {len(timings)} bad-input cases fail in under 2 s in-process; slowest: {result['slowest']}")
    print(f"as processes ({len(walls)} no-weights cases): median {statistics.median(walls):.2f} s, slowest "
          f"{walls[-1]:.2f} s, {result['no_weights_cases_as_processes']['under_2s']} under 2 s")


if __name__ == "__main__":
    main()
