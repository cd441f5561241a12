"""The preparation step, run here: what the device image lacks travels as wheels, with the tokenizer the matrix uses.

    python -m benchmarks.gpu prepare          # downloads into .gpukit/ (ignored), prints the `run` call(s) to make

The device (KINDS.md, nvidia-h200) runs Python 3.12 on x86-64 Linux, has torch 2.11, transformers 5.17, peft,
accelerate 1.15, huggingface-hub 1.33, tokenizers 0.23.2, triton, pyarrow, pandas, xxhash, and no trl, datasets,
bitsandbytes, liger-kernel or gguf; nothing can be fetched there. So this step downloads, for that Python and
platform, the versions installed in this project's venv (what the suite passes with) of what is missing or older than
our floor, builds this project as a wheel, packs the SmolLM2 tokenizer and model config (no weights travel: the
matrix's models are random, built from configs), and checks that the working tree plus what is carried stays under
the 64 MiB a call may send. bitsandbytes alone is ~43 MB: when it does not fit beside the rest, the matrix is split
into two calls (part 1 without the quantized steps, part 2 with bitsandbytes and only those; part 2 leaves our
transformers wheel behind, 13 MB, and runs on the image's 5.17, when both do not fit).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KIT = ROOT / ".gpukit"  # ignored (.gitignore); what travels is named in the call's `carry`
CORE, TF, EXTRA, BNB = KIT / "core", KIT / "transformers", KIT / "extra", KIT / "bnb"
LIMIT = 64 * 2**20  # the working tree plus carried paths, per call (device README, Limits)
HEADROOM = 2**20  # the tree may grow between this step and the call (others' files travel too: run this just before)
PYTHON, ABI = "3.12", "cp"
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64"]

# name -> (folder, why it travels). Versions: this venv's, except liger-kernel (not installable here: no CUDA).
# Not named here: huggingface-hub, tokenizers, accelerate: the image's 1.33 / 0.23.2 / 1.15 satisfy transformers 5.24,
# datasets and trl. What a carried wheel needs beyond the image (transformers 5.25: huggingface-hub>=2.4 with httpx2,
# and kernels) is found by `companions` and travels beside it.
WHEELS = {
    "transformers": (TF, "the image has 5.17; our floor is 5.20"),
    "trl": (CORE, "not on the image"),
    "peft": (CORE, "the version the suite passes with (the image's is unrecorded)"),
    "datasets": (CORE, "not on the image"),
    "dill": (CORE, "datasets needs it; not on the image"),
    "multiprocess": (CORE, "datasets needs it; not on the image"),
    "regex": (CORE, "transformers checks regex>=2025.10.22 at import; the image's version is unrecorded"),
    "fsspec": (CORE, "datasets pins fsspec<=2026.9.0; the image's version is unrecorded"),
    "liger-kernel": (EXTRA, "not on the image: the Liger on/off steps"),
    "gguf": (EXTRA, "a dependency of ours (loading .gguf checkpoints); not on the image"),
    "bitsandbytes": (BNB, "not on the image: the QLoRA steps"),
}
PINNED = {"liger-kernel": "0.8.5"}

# The image's Python packages (KINDS.md, read on a machine 2026-11-17): what the matrix may import without carrying.
IMAGE_PACKAGES = set("""absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch
build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers
flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize
hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib
kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py
markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind
narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc
nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse
nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir
onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging
pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11
py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock
pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham
simplejson six sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore
threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics
torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig
werkzeug wheel wrapt xarray xxhash yarl zipp""".split())
# Versions read there (KINDS.md's pip list, 2026-11): requirements on these are checked against them.
IMAGE_VERSIONS = {"accelerate": "1.15.0", "huggingface-hub": "1.33.0", "numpy": "2.5.2", "safetensors": "0.8.0",
                  "tokenizers": "0.23.2", "torch": "2.11.0", "triton": "3.6.0"}
# Dependencies of ours that the matrix never imports (installed with --no-deps, so nothing asks for them there).
NOT_NEEDED = {"evaluate": "metrics of the encoder recipes", "seqeval": "token-classification metrics",
              "fastapi": "finetune-kit serve", "uvicorn": "finetune-kit serve"}
DEVICE_MARKERS = {"python_version": PYTHON, "python_full_version": "3.12.3", "sys_platform": "linux",
                  "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
                  "os_name": "posix", "extra": ""}


def norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def gaps(requirements: dict[str, list[str]]):
    """(package, requirement, kind) for each requirement of `requirements` (name -> its Requires-Dist lines) the
    image plus the carried packages may not meet: kind "absent" (neither on the image nor carried), "older" (the
    image's recorded version is outside the specifier), "unverified" (a version bound on an image package whose
    version is unrecorded)."""
    from packaging.requirements import Requirement

    carried, image = {norm(n) for n in requirements}, {norm(n) for n in IMAGE_PACKAGES}
    for name, lines in requirements.items():
        for line in lines:
            need = Requirement(line)
            if need.marker is not None and not need.marker.evaluate(DEVICE_MARKERS):
                continue  # an extra, or another platform's
            wanted = norm(need.name)
            if wanted in carried or wanted in NOT_NEEDED:
                continue
            if wanted not in image:
                yield name, need, "absent"
            elif wanted in IMAGE_VERSIONS and not need.specifier.contains(IMAGE_VERSIONS[wanted], prereleases=True):
                yield name, need, "older"
            elif wanted not in IMAGE_VERSIONS and need.specifier:
                yield name, need, "unverified"


def unmet(requirements: dict[str, list[str]], unverified: list[str] | None = None) -> list[str]:
    """What the carried packages require that the device would lack, one line each: a package neither on the image
    nor carried, or an image version outside the specifier. Requirements with a version bound on an image package
    whose version is unrecorded go to `unverified` (the device run records those versions, and pip check's
    verdict)."""
    problems = []
    for name, need, kind in gaps(requirements):
        if kind == "absent":
            problems.append(f"{name} needs {need}: not on the image, not carried")
        elif kind == "older":
            problems.append(f"{name} needs {need}: the image has {IMAGE_VERSIONS[norm(need.name)]}")
        elif unverified is not None:
            unverified.append(f"{name} needs {need}")
    return problems


def companions(requirements: dict[str, list[str]]) -> dict[str, str]:
    """The packages that must travel because a carried one needs them and the image lacks them or has them too old
    (transformers 5.25 needs huggingface-hub>=2.4, which needs httpx2, and `kernels`), and what those need in turn:
    name -> the carried package that first asked for it. Their versions are this venv's (the ones the suite passes
    with); one not installed here stays a problem that `unmet` names."""
    requirements, found = dict(requirements), {}
    while True:
        new = {}
        for name, need, kind in gaps(requirements):
            if kind != "unverified" and norm(need.name) not in map(norm, new) and _installed(need.name):
                new[need.name] = found.get(name, name)  # a companion's need travels with what asked for it
        if not new:
            return found
        found.update(new)
        requirements.update({n: metadata.requires(n) or [] for n in new})


def _installed(name: str) -> bool:
    try:
        return bool(metadata.version(name))
    except metadata.PackageNotFoundError:
        return False


def wheel_requirements(wheels: list[Path]) -> dict[str, list[str]]:
    """Requires-Dist of each wheel, read from its METADATA."""
    import zipfile
    from email.parser import Parser

    found = {}
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
            meta = Parser().parsestr(archive.read(name).decode())
        found[meta["Name"]] = meta.get_all("Requires-Dist") or []
    return found


def wanted_version(name: str) -> str:
    return PINNED.get(name) or metadata.version(name)


def download(name: str, folder: Path) -> Path:
    """`name` at its wanted version as a wheel for the device's Python and platform (no dependencies: each is named)."""
    folder.mkdir(parents=True, exist_ok=True)
    spec = f"{name}=={wanted_version(name)}"
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
                    "--only-binary=:all:", "--python-version", PYTHON, "--implementation", ABI, *platforms,
                    "-d", str(folder), spec], check=True)
    stem = name.replace("-", "_").lower()
    found = [w for w in folder.glob("*.whl") if w.name.lower().startswith(stem + "-" + wanted_version(name))]
    if len(found) != 1:
        raise SystemExit(f"expected one wheel of {spec} in {folder}, found {[w.name for w in found]}")
    return found[0]


def project_wheel(folder: Path) -> Path:
    """This project as a wheel, built from a copy (an in-tree setuptools build leaves build/ in the checkout)."""
    for old in folder.glob("finetune_kit-*.whl"):
        old.unlink()
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "src"
        source.mkdir()
        for name in ("pyproject.toml", "README.md"):
            shutil.copy(ROOT / name, source / name)
        shutil.copytree(ROOT / "finetune_kit", source / "finetune_kit",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", "--no-deps",
                        "--no-build-isolation", "-w", str(folder), str(source)], check=True, cwd=tmp)
    return next(folder.glob("finetune_kit-*.whl"))


def pack_assets(folder: Path) -> Path:
    """SmolLM2-135M's tokenizer, chat template and config, gzipped: the matrix's random models use them."""
    from finetune_kit.models import resolve_checkpoint

    source = Path(resolve_checkpoint("smollm2-135m-instruct"))
    archive = folder / "assets.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "config.json",
                     "generation_config.json"):
            if (source / name).is_file():
                tar.add(source / name, arcname=f"smollm2/{name}")
    return archive


def tree_bytes() -> int:
    """What travels besides the carried paths: tracked and untracked-not-ignored files (and shared/, if any)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    files = [ROOT / name for name in listed if name and (ROOT / name).is_file()]
    shared = ROOT / "shared"
    if shared.is_dir():
        files += [p for p in shared.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in set(files))


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


def plan(tree: int, sizes: dict[str, int], split: bool = False) -> list[dict]:
    """One call when everything fits under the limit with HEADROOM to spare (and `split` is not asked for); else two,
    bitsandbytes in the second, which leaves transformers to the image when that is what it takes to fit."""
    fits = lambda parts: tree + sum(sizes[p] for p in parts) <= LIMIT - HEADROOM
    call = lambda part, parts: {"part": part, "carry": [f".gpukit/{p}" for p in parts],
                                "bytes": tree + sum(sizes[p] for p in parts)}
    if not split and fits(["core", "transformers", "extra", "bnb"]):
        return [call("all", ["core", "transformers", "extra", "bnb"])]
    second = next((parts for parts in (["core", "transformers", "bnb"], ["core", "bnb"]) if fits(parts)), None)
    if not fits(["core", "transformers", "extra"]) or second is None:
        raise SystemExit(f"even split, a call would carry more than the {LIMIT / 2**20:.0f} MiB allowed "
                         f"({HEADROOM / 2**20:.0f} MiB kept for the tree): sizes {sizes}, tree {tree}")
    return [call("1", ["core", "transformers", "extra"]), call("2", second)]


def run_call(part: str, carry: list[str], budget: int = 360) -> dict:
    """The `run` tool's arguments: install inside the entry point, the matrix within `budget` seconds, the log and
    results under $OUT; timeout_s a minute above the budget, so that a stuck step still returns the partial JSON."""
    command = (f"set -o pipefail; PYTHONUNBUFFERED=1 python3 -m benchmarks.gpu run --part {part} --budget {budget} "
               f"--out $OUT 2>&1 | tee $OUT/log.txt")
    return {"command": command, "carry": carry, "timeout_s": budget + 60}


def main(argv: list[str] | None = None) -> dict:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu prepare", description=__doc__.split("\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep wheels already downloaded")
    opts = parser.parse_args(argv)
    if not opts.keep:
        shutil.rmtree(KIT, ignore_errors=True)
    wheels = {name: download(name, folder).name for name, (folder, _) in WHEELS.items()}
    wheels["finetune-kit"] = project_wheel(CORE).name
    folders = {norm(name): folder for name, (folder, _) in WHEELS.items()}
    needed = companions(wheel_requirements(sorted(KIT.glob("*/*.whl"))))
    for name, asker in needed.items():  # beside what asked for it: a split call carries both or neither
        wheels[name] = download(name, folders.get(norm(asker), CORE)).name
    pack_assets(CORE)
    unverified: list[str] = []
    problems = unmet(wheel_requirements(sorted(KIT.glob("*/*.whl"))), unverified)
    sizes = {folder.name: folder_bytes(folder) for folder in (CORE, TF, EXTRA, BNB)}
    tree = tree_bytes()
    calls = plan(tree, sizes)
    report = {"command": "python -m benchmarks.gpu prepare", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "python": PYTHON, "platforms": PLATFORMS, "wheels": wheels, "unmet_requirements": problems,
              "unverified_requirements": unverified,
              "why": {**{name: why for name, (_, why) in WHEELS.items()},
                      **{name: f"{asker} needs it; the image lacks it or has it too old" for name, asker in needed.items()}},
              "tree_bytes": tree,
              "carried_bytes": sizes, "limit_bytes": LIMIT, "headroom_bytes": HEADROOM,
              "calls": [{**c, "run": run_call(c["part"], c["carry"])} for c in calls]}
    if len(calls) == 1:  # for a tree that grew past the limit after this step: the same matrix in two calls
        report["if_too_large"] = [{**c, "run": run_call(c["part"], c["carry"])} for c in plan(tree, sizes, True)]
    KIT.mkdir(exist_ok=True)
    (KIT / "prepared.json").write_text(json.dumps(report, indent=2) + "\n")
    for problem in problems:
        print(f"warning: {problem}")
    mib = {k: round(v / 2**20, 2) for k, v in {"tree": tree, **sizes}.items()}
    print(f"sizes (MiB): {mib}; limit {LIMIT / 2**20:.0f} MiB per call, {HEADROOM / 2**20:.0f} MiB kept for the tree")
    for call in report["calls"]:
        print(f"\npart {call['part']}: {call['bytes'] / 2**20:.1f} MiB travels. The device call:")
        print(json.dumps(call["run"], indent=2))
    if "if_too_large" in report:
        print("\nif the call is refused as too large (the tree grew), the same matrix in two calls: "
              "see if_too_large in .gpukit/prepared.json")
    print("\nbefore the call, the whole matrix on this CPU (~4 min on 2 busy cores): python -m benchmarks.gpu run --dry-run --out "
          "/tmp/gpukit-dry")
    return report
