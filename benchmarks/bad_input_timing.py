"""Time to the error for each case of the bad-input suite (tests/test_bad_input_suite.py): how many fail fast.

Runs the suite with pytest, which records the time from calling the recipe / CLI to its exit (imports already
done: the time a user waits once the interpreter has started), and writes benchmarks/results/bad_input_timing.json.

    python benchmarks/bad_input_timing.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from record_run import RESULTS, machine

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        timings_file = Path(tmp) / "timings.json"
        env = {**os.environ, "FINETUNE_KIT_BAD_INPUT_TIMINGS": str(timings_file)}
        subprocess.run([sys.executable, "-m", "pytest", "-q", "tests/test_bad_input_suite.py"], cwd=ROOT, env=env,
                       check=True)
        timings = json.loads(timings_file.read_text())
    sys.path[:0] = [str(ROOT / "tests")]
    from test_bad_input_suite import CASES

    fast = {name: t for name, t in timings.items() if t < 2.0}
    result = {"name": "bad_input_timing", "cases": len(timings), "fail_fast_under_2s": len(fast),
              "slowest": sorted(((round(t, 2), n) for n, t in timings.items()), reverse=True)[:5],
              "loads_weights_first": [n for n, case in CASES.items() if case[2]], "seconds": {n: round(t, 3) for n, t in timings.items()},
              "command": "python benchmarks/bad_input_timing.py", "machine": machine()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bad_input_timing.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"{len(fast)} of {len(timings)} bad-input cases fail in under 2 s; slowest: {result['slowest']}")


if __name__ == "__main__":
    main()
