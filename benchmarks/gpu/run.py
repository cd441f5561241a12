"""The device entry point: installs the carried wheels into a temporary site folder, then runs the matrix.

Each step is time-boxed, and $OUT/gpu_kit.json is written after every step (so a cut-short call still brings back
what finished).

    python3 -m benchmarks.gpu run --out $OUT [--part all|1|2] [--budget 360] [--steps NAME,...]
    python -m benchmarks.gpu run --dry-run --out DIR      # on a CPU, tiny sizes, nothing installed

Install: `pip install --no-index --no-deps --target /tmp/gpukit-site .gpukit/*/*.whl` (the device reaches no
registry; prepare.py fetched each dependency by name), then this process re-executes itself with that folder on
PYTHONPATH, in front of the image's own packages (torch, CUDA and the rest stay the image's). Each step runs in
this process under an alarm at its timeout or at the budget's end, whichever is sooner; a step that would start with
less than MIN_START seconds left is recorded as skipped. Part 1 skips the steps that need bitsandbytes, part 2 runs
only those (prepare.py splits the call when bitsandbytes does not fit beside the rest).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tarfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SITE, ASSETS = Path("/tmp/gpukit-site"), Path("/tmp/gpukit-assets")
STARTED = "GPUKIT_STARTED"  # set before the re-exec: the budget counts the install too
MIN_START = 20


class StepTimeout(Exception):
    pass


def options(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu run", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="where gpu_kit.json goes ($OUT on the device)")
    parser.add_argument("--part", choices=["all", "1", "2"], default="all")
    parser.add_argument("--budget", type=float, default=360, help="seconds for the whole run, install included")
    parser.add_argument("--steps", help="comma-separated step names (default: the whole matrix)")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on a CPU; nothing is installed")
    parser.add_argument("--work", type=Path, help="scratch folder (default: /tmp/gpukit-work, or OUT/work dry)")
    return parser.parse_args(argv)


def install() -> dict:
    """The carried wheels into SITE and the assets into ASSETS; what was installed and how long it took."""
    began = time.time()
    wheels = sorted(str(w) for w in (ROOT / ".gpukit").glob("*/*.whl"))
    if not wheels:
        raise SystemExit("no wheels under .gpukit/: run `python -m benchmarks.gpu prepare` here and carry its folders")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile",
                    "--no-cache-dir", "--disable-pip-version-check", "--upgrade", "--target", str(SITE), *wheels],
                   check=True)
    with tarfile.open(ROOT / ".gpukit" / "core" / "assets.tar.gz") as tar:
        tar.extractall(ASSETS, filter="data")
    return {"wheels": [Path(w).name for w in wheels], "install_seconds": round(time.time() - began, 1)}


def environment(dry: bool) -> dict:
    import importlib.util
    from importlib import metadata

    import torch

    from finetune_kit.runs import package_versions

    def version(name: str) -> str | None:
        return metadata.version(name) if importlib.util.find_spec(name.replace("-", "_")) else None

    # the image's own packages that carried ones require at versions KINDS.md does not record (prepare.py:
    # unverified_requirements), next to what the matrix switches on
    versions = {**package_versions(), **{n: version(n) for n in (
        "liger-kernel", "flash-attn", "triton", "huggingface-hub", "tokenizers", "pyarrow", "pandas", "numpy",
        "fsspec", "regex", "psutil", "jinja2")}}
    cuda = torch.cuda.is_available()
    return {"dry_run": dry, "python": platform.python_version(), "versions": versions,
            "finetune_kit_from": str(Path(importlib.util.find_spec("finetune_kit").origin).parent),
            "gpu": torch.cuda.get_device_name(0) if cuda else None, "cuda": torch.version.cuda,
            "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if cuda else None}


def in_part(step, part: str) -> bool:
    """Part 1: all but the steps that need bitsandbytes; part 2: those, the matmul peak (their MFU) and bf16 LoRA at
    1B (QLoRA's peak memory is compared with it in the same run)."""
    if part == "all":
        return True
    quantized = "bitsandbytes" in step.needs
    return quantized == (part == "2") or (part == "2" and step.name in ("matmul_peak", "sft/llama-1b/lora/ours"))


def run_step(step, ctx, deadline: float) -> dict:
    """One step under an alarm; its result, or why it has none."""
    import importlib.util

    missing = [n for n in step.needs if importlib.util.find_spec(n) is None]
    left = deadline - time.time()
    why = (f"{', '.join(missing)} not installed" if missing else f"budget: {left:.0f} s left" if left < MIN_START
           else "dry run: the same code as llama-1b's arm, at other sizes" if ctx.dry and not step.dry else None)
    if why:
        return {"status": "skipped", "why": why, "seconds": 0.0}
    limit = int(min(step.timeout, left))

    def stop(signum, frame):
        raise StepTimeout(f"stopped after {limit} s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(limit)
    began = time.time()
    try:
        result = {"status": "ok", "result": step.run(ctx)}
    except StepTimeout as error:
        result = {"status": "timeout", "why": str(error)}
    except Exception as error:  # a failed step is a result too; the next step still runs
        result = {"status": "error", "why": f"{type(error).__name__}: {error}"[:2000],
                  "traceback": traceback.format_exc()[-4000:]}
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        from benchmarks.gpu.arms import freed

        freed()
    result["seconds"] = round(time.time() - began, 1)
    return result


def main(argv: list[str] | None = None) -> dict:
    opts = options(list(sys.argv[1:] if argv is None else argv))
    if not opts.dry_run and os.environ.get(STARTED) is None:
        installed = install()
        env = dict(os.environ, **{STARTED: str(time.time() - installed["install_seconds"]),
                                  "GPUKIT_INSTALL": json.dumps(installed)})
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SITE), str(ROOT), env.get("PYTHONPATH")]))
        os.execve(sys.executable, [sys.executable, "-m", "benchmarks.gpu", "run", *sys.argv[1:]], env)
    began = float(os.environ.get(STARTED, time.time()))
    deadline = began + opts.budget
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from benchmarks.gpu import matrix

    assets = ASSETS / "smollm2" if not opts.dry_run else Path(_local_assets())
    work = opts.work or (opts.out / "work" if opts.dry_run else Path("/tmp/gpukit-work"))
    ctx = matrix.Context(work=work, assets=assets, dry=opts.dry_run)
    unknown = set(opts.steps.split(",") if opts.steps else []) - {s.name for s in matrix.steps()}
    if unknown:  # a typo must not cost a device call
        raise SystemExit(f"unknown steps {sorted(unknown)}; the matrix: {[s.name for s in matrix.steps()]}")
    chosen = [s for s in matrix.steps() if (not opts.steps or s.name in opts.steps.split(","))
              and in_part(s, opts.part)]
    report = {"command": "python3 -m benchmarks.gpu run " + " ".join(sys.argv[1:]), "started": time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.gmtime(began)), "budget_seconds": opts.budget,
        "install": json.loads(os.environ.get("GPUKIT_INSTALL", "null")), "environment": environment(opts.dry_run),
        "steps": {}}
    opts.out.mkdir(parents=True, exist_ok=True)
    for step in chosen:
        report["steps"][step.name] = run_step(step, ctx, deadline)
        report["summary"] = matrix.summary(report["steps"])
        report["elapsed_seconds"] = round(time.time() - began, 1)
        _write(opts.out / "gpu_kit.json", report)
        print(_line(step.name, report["steps"][step.name]), flush=True)
    if not opts.dry_run:  # what pip makes of the image plus the carried wheels (conflicts show here)
        check = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
        report["pip_check"] = (check.stdout + check.stderr)[-3000:]
    _write(opts.out / "gpu_kit.json", report)
    print(json.dumps(report["summary"], indent=1))
    return report


def _local_assets() -> str:
    from finetune_kit.models import resolve_checkpoint

    return resolve_checkpoint("smollm2-135m-instruct")


def _write(path: Path, report: dict) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(report, indent=1, default=str) + "\n")
    partial.replace(path)


def _line(name: str, step: dict) -> str:
    result = step.get("result") or {}
    figures = {k: result[k] for k in ("tokens_per_second", "mfu", "peak_allocated_gib", "tflops", "ok") if k in result}
    return f"{name:55s} {step['status']:8s} {step['seconds']:6.1f}s {figures or step.get('why', '')}"
