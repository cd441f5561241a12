"""The `trl-tuned` arm's settings: a small grid of trl's documented SFTConfig speed options, swept once on this machine.

    python -m benchmarks trl_sweep [--examples 32 --eval_examples 8 ...]     # -> benchmarks/results/trl_sweep*.json
    python -m benchmarks trl_sweep --only defaults,NAME,... --results DIR   # some points, paired in one run

Each point is trl's SFTTrainer on the same subset, model, LoRA, batch, learning rate and seed as `python -m
benchmarks sft`, in its own process, one after the other. The grid: activation (gradient) checkpointing on / off,
length-grouped batches, `padding_free`, packing (bfd), bf16 autocast (the hardware guess says no here; measured once
to check), the base loaded in bf16 (model_init_kwargs' dtype), one row per micro-batch (the effective batch
kept), eager attention and batch lengths rounded to 64. The fastest point whose held-out reply loss is within 2% of
the defaults' is recorded as "best", which the trl-tuned arm reads (arms.trl_tuned_settings; arms.TRL_TUNED where no
sweep was recorded). One sweep per kind of machine: trl_sweep.json where bf16 is not native (e.g. AVX512-BF16 without
AMX), trl_sweep_native_bf16.json where it is (AMX); the arm reads its machine's. `--only` runs some points (include
`defaults`: the loss rule's reference), as a paired check.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GRID = {
    "defaults": {},
    "no-checkpointing": {"gradient_checkpointing": False},
    "no-checkpointing+group_by_length": {"gradient_checkpointing": False, "train_sampling_strategy": "group_by_length"},
    "checkpointing+group_by_length": {"train_sampling_strategy": "group_by_length"},
    "no-checkpointing+padding_free": {"gradient_checkpointing": False, "padding_free": True},
    "no-checkpointing+packing": {"gradient_checkpointing": False, "packing": True},
    "no-checkpointing+group_by_length+bf16": {"gradient_checkpointing": False,
                                              "train_sampling_strategy": "group_by_length", "bf16": True},
    # the base loaded in bf16, no autocast (adapters fp32: peft's default): what our recipe does for LoRA on a CPU
    # with bf16 dot products; a careful trl user there can do the same with model_init_kwargs={"dtype": "bfloat16"}
    "no-checkpointing+group_by_length+bf16-weights": {"gradient_checkpointing": False,
                                                      "train_sampling_strategy": "group_by_length",
                                                      "dtype": "bfloat16"},
    "no-checkpointing+packing+bf16-weights": {"gradient_checkpointing": False, "packing": True, "dtype": "bfloat16"},
    "no-checkpointing+padding_free+bf16-weights": {"gradient_checkpointing": False, "padding_free": True,
                                                   "dtype": "bfloat16"},
    # one row per micro-batch, the same effective batch (arms.micro_batched): no padding, half the activations; our
    # arm runs so (arms.OURS_MICRO_BATCH), and a trl user may pick it as well
    "no-checkpointing+micro-batch-1+bf16-weights": {"gradient_checkpointing": False, "micro_batch": 1,
                                                    "dtype": "bfloat16"},
    "no-checkpointing+micro-batch-1": {"gradient_checkpointing": False, "micro_batch": 1},
    # transformers' eager attention (model_init_kwargs={"attn_implementation": "eager"}): with bf16 matmuls on a CPU
    # it beat sdpa for our arm (results/sft_fast_path_probe.json), so a trl user may try it too
    "no-checkpointing+padding_free+bf16-weights+eager": {"gradient_checkpointing": False, "padding_free": True,
                                                         "dtype": "bfloat16", "attn_implementation": "eager"},
    # the same with bf16 autocast on top (the adapters' matmuls in bf16 too): where bf16 is native (AMX) it may pay
    "no-checkpointing+padding_free+bf16-weights+eager+bf16": {"gradient_checkpointing": False, "padding_free": True,
                                                              "dtype": "bfloat16", "attn_implementation": "eager",
                                                              "bf16": True},
    "no-checkpointing+micro-batch-1+bf16-weights+eager+bf16": {"gradient_checkpointing": False, "micro_batch": 1,
                                                               "dtype": "bfloat16", "attn_implementation": "eager",
                                                               "bf16": True},
    "no-checkpointing+micro-batch-1+bf16-weights+eager": {"gradient_checkpointing": False, "micro_batch": 1,
                                                          "dtype": "bfloat16", "attn_implementation": "eager"},
    # batch lengths rounded up to 64 (SFTConfig.pad_to_multiple_of), as our arm does where a CPU multiplies in bf16:
    # oneDNN builds a kernel per shape (hardware.fast_path_decisions); a trl user can set it too
    "no-checkpointing+micro-batch-1+bf16-weights+eager+pad64": {"gradient_checkpointing": False, "micro_batch": 1,
                                                                "dtype": "bfloat16", "attn_implementation": "eager",
                                                                "pad_to_multiple_of": 64},
    "no-checkpointing+group_by_length+bf16-weights+eager+pad64": {"gradient_checkpointing": False,
                                                                  "train_sampling_strategy": "group_by_length",
                                                                  "dtype": "bfloat16", "attn_implementation": "eager",
                                                                  "pad_to_multiple_of": 64},
}


def main(argv: list[str]) -> dict:
    from benchmarks.harness import options

    if "--point" in argv:  # one point, in this process
        i = argv.index("--point")
        name, rest = argv[i + 1], argv[:i] + argv[i + 2:]
        opts = options(["sft", *rest])
        opts.train_file, opts.eval_file = Path(opts.train_file), Path(opts.eval_file)
        from benchmarks.arms import _sft_trl

        settings = {"bf16": False, **GRID[name]}  # fp32 unless the point says bf16 (trl's own default is bf16)
        Path(opts.result).write_text(json.dumps(_sft_trl(opts, **settings)))
        return {}
    return sweep(argv)


def sweep(argv: list[str]) -> dict:
    from benchmarks.arms import training_lengths, trl_sweep_file, write_subsets
    from benchmarks.harness import options
    from benchmarks.record_run import machine
    from finetune_kit.hardware import bf16_is_fast
    from finetune_kit.runs import package_versions

    defaults = ["--examples", "32", "--eval_examples", "8"]
    invocation = "python -m benchmarks trl_sweep " + " ".join(argv)
    only = None
    if "--only" in argv:  # a subset of GRID, paired in one run (its "best" is the subset's)
        i = argv.index("--only")
        if i + 1 == len(argv):
            raise SystemExit(f"--only needs comma-separated sweep points: {', '.join(GRID)}")
        only, argv = argv[i + 1].split(","), argv[:i] + argv[i + 2:]
        if unknown := set(only) - set(GRID):
            raise SystemExit(f"--only: no sweep point named {', '.join(sorted(unknown))}; "
                             f"the points: {', '.join(GRID)}")
    opts = options(["sft", *defaults, *argv])
    points = {}
    with tempfile.TemporaryDirectory() as tmp:
        files = write_subsets(Path(opts.data), opts.examples, opts.eval_examples, opts.seed, Path(tmp))
        tokens = sum(training_lengths(opts.model, files[0], opts.max_length))
        for name, settings in GRID.items():
            if only is not None and name not in only:
                continue
            result = Path(tmp) / f"{name}.json"
            command = [sys.executable, "-m", "benchmarks.trl_sweep", *defaults, *argv, "--point", name, "--result",
                       str(result), "--out", str(Path(tmp) / "run"), "--train_file", str(files[0]), "--eval_file",
                       str(files[1])]
            load, started = os.getloadavg(), time.time()
            done = subprocess.run(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stderr=subprocess.PIPE,
                                  text=True, check=False)
            if done.returncode:
                sys.stderr.write(done.stderr[-5000:])
                last = [line for line in done.stderr.splitlines() if line.strip()][-1:]
                points[name] = {"settings": settings, "error": f"exit {done.returncode}: {''.join(last)}"}
                continue
            summary = json.loads(result.read_text())
            points[name] = {"settings": settings, "tokens_per_second": tokens / summary["train_runtime"],
                            "train_runtime": summary["train_runtime"], "steps": len(summary["losses"]),
                            "mean_train_loss": summary["mean_train_loss"], "heldout_loss": summary["heldout_loss"],
                            "peak_rss_training_mb": summary["peak_memory_mb"]["rss_training"],
                            "loadavg_start": load, "loadavg_end": os.getloadavg(),
                            "wall_seconds": round(time.time() - started, 1)}
    base = points.get("defaults", {}).get("heldout_loss")
    ok = {n: p for n, p in points.items() if "error" not in p and base and p["heldout_loss"] <= base * 1.02}
    best = max(ok, key=lambda n: ok[n]["tokens_per_second"]) if ok else None
    result = {"name": "trl_sweep", "command": invocation,
              "settings": {k: v for k, v in vars(opts).items() if k in ("model", "data", "examples", "eval_examples",
                                                                       "batch", "accumulation", "max_length",
                                                                       "learning_rate", "seed")},
              "trained_tokens": tokens, "points": points, "best": best,
              "rule": "fastest point with held-out reply loss within 2% of the defaults' (fp32 unless named bf16)",
              "machine": machine(), "versions": package_versions()}
    out = Path(opts.results)
    out.mkdir(parents=True, exist_ok=True)
    target = out / trl_sweep_file(bf16_is_fast()).name  # one sweep per kind of machine: what pays differs
    target.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"wrote {target}")
    print(json.dumps({n: {k: p.get(k) for k in ("tokens_per_second", "heldout_loss", "steps", "error")}
                      for n, p in points.items()}, indent=2), "\nbest:", best)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
