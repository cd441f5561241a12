"""The web board's start-up and idle memory: time from `finetune-kit ui` to a served page, and its resident memory
when the page is first served and after the first form has been built (the typed configs import transformers / trl).

    python -m benchmarks.ui_board [--port 7870] [--settle 30]

Starts the board on a fresh temporary workspace, polls http://127.0.0.1:PORT/ until it answers 200, reads VmRSS of
the board's process then, waits `--settle` seconds with no page open (the board imports the typed configs in the
background meanwhile, as the first form needs them), reads VmRSS again, stops the board. Writes benchmarks/results/ui_board.json with
the machine's load average, since this machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def _rss_mib(pid: int) -> float:
    line = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("VmRSS"))
    return round(int(line.split()[1]) / 1024, 1)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=7870)
    parser.add_argument("--settle", type=float, default=30.0)
    args = parser.parse_args(argv)
    workspace = tempfile.mkdtemp(prefix="board-bench-")
    kit = Path(sys.executable).parent / "finetune-kit"
    started = time.monotonic()
    board = subprocess.Popen([str(kit), "ui", "--workspace", workspace, "--port", str(args.port)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{args.port}/"
    try:
        while True:
            try:
                if urllib.request.urlopen(url, timeout=2).status == 200:
                    break
            except OSError:
                if board.poll() is not None:
                    raise SystemExit(f"the board exited with {board.returncode}") from None
                time.sleep(0.05)
        served_s = time.monotonic() - started
        rss_served = _rss_mib(board.pid)
        time.sleep(args.settle)
        rss_idle = _rss_mib(board.pid)
    finally:
        board.terminate()
        board.wait(timeout=30)
    result = {"command": f"python -m benchmarks.ui_board --port {args.port} --settle {args.settle:g}",
              "page_served_s": round(served_s, 2), "rss_when_served_mib": rss_served,
              f"rss_idle_after_{args.settle:g}s_mib": rss_idle, "load_average_1m": os.getloadavg()[0],
              "cpus": os.cpu_count()}
    out = Path(__file__).resolve().parent / "results" / "ui_board.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
