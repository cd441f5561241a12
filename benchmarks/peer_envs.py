"""Virtual environments for the peer tools of `python -m benchmarks sft` (LLaMA-Factory, ms-swift, axolotl, unsloth).

Each peer pins transformers / trl ranges that are not ours, so each gets its own environment, built on first use into
~/.cache/finetune_kit/bench-envs/<peer> (never into the project's .venv) and reused after. torch is pinned to the
release this project trains with, so that an unpinned resolve never pulls a multi-GB CUDA build and every arm runs
the same kernels. A build that fails is recorded (its last lines of pip output) and not retried until its folder is
removed: the arm then reports that error instead of a figure.

    python -m benchmarks.peer_envs llamafactory ms-swift     # build (or check) environments ahead of a bench run
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

TORCH = "torch==2.13.0"  # the CPU wheel on this machine's disk; the same release as the project's own env
# peer -> (pip requirements, the console script the arm drives)
PEERS = {
    "llamafactory": (["llamafactory==0.9.5"], "llamafactory-cli"),
    "ms-swift": (["ms-swift==4.6.0"], "swift"),
    "axolotl": (["axolotl==0.19.0"], "axolotl"),  # 0.19.0: the newest on PyPI here (issue #18 named 0.21)
    "unsloth": (["unsloth==2026.10.9"], None),
}


# Modules a peer imports at module level but uses only for inputs this benchmark has none of, and whose PyPI wheels
# cannot load here (CUDA builds beside the CPU torch): LLaMA-Factory 0.9.5's data/mm_plugin.py does
# `import torchaudio` for audio inputs, and without a placeholder fails with "Could not load this library:
# .../torchaudio/lib/_torchaudio.so" (libc10_cuda.so not found). The placeholder raises on any use.
PLACEHOLDERS = {"llamafactory": ("torchaudio",)}
PLACEHOLDER_TEXT = ('"""Placeholder from finetune_kit\'s benchmark harness (benchmarks/peer_envs.py): PyPI\'s {name} wheels are\n'
                    'CUDA builds that do not load beside the CPU torch here. Any use fails."""\n\n\n'
                    'def __getattr__(attribute):\n'
                    '    raise AttributeError(f"{name} placeholder (no audio / vision support in this environment): {{attribute}}")\n')


def write_placeholder(folder: Path, module: str) -> str:
    site = next((folder / "lib").glob("python3*/site-packages"))
    (site / module).mkdir(exist_ok=True)
    (site / module / "__init__.py").write_text(PLACEHOLDER_TEXT.format(name=module))
    return module


def envs_root() -> Path:
    return Path(os.environ.get("FINETUNE_KIT_CACHE", Path.home() / ".cache" / "finetune_kit")) / "bench-envs"


def env_python(peer: str) -> Path:
    return envs_root() / peer / "bin" / "python"


def env_state(peer: str) -> dict | None:
    """The recorded outcome of this peer's build ({"ok": bool, ...}), None when never built."""
    state = envs_root() / peer / "build.json"
    return json.loads(state.read_text()) if state.is_file() else None


def ensure_env(peer: str, log=print) -> dict:
    """Build the peer's environment once (pinned, nice'd pip); return its build record. Never raises for a failed
    install: the record holds the error."""
    state = env_state(peer)
    if state is not None:
        return state
    requirements, _ = PEERS[peer]
    folder = envs_root() / peer
    folder.parent.mkdir(parents=True, exist_ok=True)
    constraints = folder.parent / f"{peer}-constraints.txt"
    constraints.write_text(TORCH + "\n")
    python = getattr(sys, "_base_executable", sys.executable)
    steps = [[python, "-m", "venv", str(folder)],
             ["nice", "-n", "19", str(folder / "bin" / "python"), "-m", "pip", "install", "--quiet", "-c",
              str(constraints), TORCH, *requirements],
             # PyPI's torchvision / torchaudio wheels are CUDA builds: beside the CPU torch their ops do not load, and
             # transformers, which imports torchvision whenever it is installed, then fails to import at all
             ["nice", "-n", "19", str(folder / "bin" / "python"), "-m", "pip", "uninstall", "--quiet", "-y",
              "torchvision", "torchaudio"]]
    record = {"ok": True, "requirements": [TORCH, *requirements]}
    for step in steps:
        log(f"[peer env {peer}] {' '.join(step)}")
        done = subprocess.run(step, capture_output=True, text=True, check=False)
        if done.returncode:
            record = {**record, "ok": False, "command": " ".join(step), "exit": done.returncode,
                      "error": (done.stdout + done.stderr)[-3000:]}
            break
    if record["ok"]:
        record["placeholders"] = [write_placeholder(folder, module) for module in PLACEHOLDERS.get(peer, ())]
        record["versions"] = env_versions(peer)
    (folder / "build.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def env_versions(peer: str) -> dict:
    """Versions of the libraries that matter inside a peer's environment."""
    names = ["torch", "transformers", "trl", "peft", "accelerate", "datasets", *[r.split("==")[0] for r in
                                                                                 PEERS[peer][0]]]
    code = ("import json, sys, importlib.metadata as m\nout = {}\nfor n in sys.argv[1:]:\n"
            "    try: out[n] = m.version(n)\n    except m.PackageNotFoundError: out[n] = None\nprint(json.dumps(out))")
    done = subprocess.run([str(env_python(peer)), "-c", code, *names], capture_output=True, text=True, check=False)
    return json.loads(done.stdout) if done.returncode == 0 else {"error": done.stderr[-500:]}


if __name__ == "__main__":
    for name in sys.argv[1:] or list(PEERS):
        print(name, json.dumps(ensure_env(name), indent=2)[:2000])
