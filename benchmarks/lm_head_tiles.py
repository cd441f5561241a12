"""trl's fused LM head without Triton (the CPU): time and peak memory of one forward + backward by tile width.

    python -m benchmarks.lm_head_tiles [--tokens 926 4096] [--widths 32768 8192 4096 2048]

trl projects hidden states through the LM head in [tokens, width] tiles (width 32768 by default); where its Triton
kernel cannot run, the tile is folded in torch ops, which hold ~8 fp32 copies of a tile in the backward. Each
(tokens, width) runs in its own process on SmolLM2-135M's shapes (hidden 576, vocabulary 49152); the peak is the RSS
high-water mark over 3 steps above the process's resting RSS. Writes benchmarks/results/lm_head_tiles.json; the
width finetune_kit sets (hardware.narrow_lm_head_tiles) is the library default's ratio row.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HIDDEN, VOCAB, TRL_DEFAULT = 576, 49152, 32768


def _rss_mb(field: str) -> int:
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field))
    return int(line.split()[1]) // 1024


def one(tokens: int, width: int) -> dict:
    import torch
    from trl.kernels.chunked_logprob import ChunkedLogProbFunction

    torch.manual_seed(0)
    hidden = torch.randn(tokens, HIDDEN, requires_grad=True)
    weight = (torch.randn(VOCAB, HIDDEN) * 0.02).requires_grad_(True)
    labels = torch.randint(0, VOCAB, (tokens,))

    def step():
        hidden.grad = weight.grad = None
        out = ChunkedLogProbFunction.apply(hidden, weight, None, labels, 1.0, width, None, 1.0,
                                           ("log_probs", "entropy", "is_top1"))
        loss = -out[0].sum()
        loss.backward()
        return loss.item()

    step()  # warm-up: oneDNN primitives, allocator
    Path("/proc/self/clear_refs").write_text("5")
    resting, started = _rss_mb("VmRSS:"), time.perf_counter()
    losses = [step() for _ in range(3)]
    return {"tokens": tokens, "width": width, "seconds_per_step": (time.perf_counter() - started) / 3,
            "peak_above_resting_mb": _rss_mb("VmHWM:") - resting, "loss": losses[-1],
            "hidden_grad_checksum": hidden.grad.double().abs().sum().item()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.lm_head_tiles", description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[926, 4096])
    parser.add_argument("--widths", type=int, nargs="+", default=[TRL_DEFAULT, 8192, 4096, 2048])
    parser.add_argument("--one", type=int, nargs=2, help=argparse.SUPPRESS)  # tokens, width: inside a child process
    parser.add_argument("--results", default=str(Path(__file__).parent / "results"))
    opts = parser.parse_args(argv)
    if opts.one:
        print(json.dumps(one(*opts.one)))
        return {}
    from benchmarks.record_run import machine
    from finetune_kit.runs import package_versions

    rows = []
    for tokens in opts.tokens:
        for width in opts.widths:
            out = subprocess.run([sys.executable, "-m", "benchmarks.lm_head_tiles", "--one", str(tokens), str(width)],
                                 capture_output=True, text=True, check=True, cwd=Path(__file__).parent.parent)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    for row in rows:
        base = next(r for r in rows if r["tokens"] == row["tokens"] and r["width"] == opts.widths[0])
        row["time_ratio"] = row["seconds_per_step"] / base["seconds_per_step"]
        row["peak_ratio"] = row["peak_above_resting_mb"] / base["peak_above_resting_mb"]
        row["loss_rel_diff"] = abs(row["loss"] - base["loss"]) / abs(base["loss"])
    command = "python -m benchmarks.lm_head_tiles " + " ".join(argv or sys.argv[1:])
    result = {"name": "lm_head_tiles", "command": command.strip(),
              "shapes": {"hidden": HIDDEN, "vocab": VOCAB}, "rows": rows, "machine": machine(),
              "versions": package_versions()}
    Path(opts.results).mkdir(parents=True, exist_ok=True)
    (Path(opts.results) / "lm_head_tiles.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
