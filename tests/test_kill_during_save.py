"""A process killed at any point of a checkpoint save never leaves a newest checkpoint that fails to resume.

Every write of the second save (checkpoint-4) is a kill point, twice: SIGKILL just before the write, and SIGKILL
after half of its bytes reached the file (a torn write). Writes are those Python makes: torch.save (optimizer,
scheduler, RNG, training args), safetensors files (adapter weights), text files opened for writing (configs,
tokenizer files, trainer_state.json), and the rename that publishes the staged folder (killed just before it, and
just after it). Until that rename no checkpoint-4 folder exists; after each kill, `resume_from_checkpoint: latest`
must pick the newest complete checkpoint and finish, and the staging leftovers must be gone.

Children are forked from this process (modules already imported, no torch work done before the fork), so each kill
point costs a few seconds instead of an interpreter start.
"""

from __future__ import annotations

import builtins
import io
import json
import os
import signal
import sys

import pytest

from conftest import chat_rows, run_recipe, write_config, write_jsonl

SAVE_STEP = 4  # kills land in the second save; checkpoint-2 is the complete one before it


def _kill_during_save(target: int | None, torn: bool, events: list[str]) -> None:
    """Patch the writers so that the `target`-th write into checkpoint-SAVE_STEP kills the process (None: record)."""
    import peft.peft_model
    import safetensors.torch
    import torch
    import transformers.modeling_utils

    folder = f"checkpoint-{SAVE_STEP}"

    def hit(path, write_half) -> None:
        if folder not in str(path):
            return
        events.append(os.path.basename(str(path)))
        if target is not None and len(events) == target:
            if torn:
                write_half()
            os.kill(os.getpid(), signal.SIGKILL)

    def half_bytes(path, data: bytes):
        def write():
            with original_open(path, "wb") as handle:
                handle.write(data[: len(data) // 2])
        return write

    original_save, original_open = torch.save, builtins.open
    original_safe = safetensors.torch.save_file

    def save(obj, f, *args, **kwargs):
        if isinstance(f, (str, os.PathLike)):
            buffer = io.BytesIO()
            original_save(obj, buffer, *args, **kwargs)
            hit(f, half_bytes(f, buffer.getvalue()))
        return original_save(obj, f, *args, **kwargs)

    def safe_save(tensors, filename, metadata=None):
        hit(filename, half_bytes(filename, safetensors.torch.save(tensors, metadata=metadata)))
        return original_safe(tensors, filename, metadata=metadata)

    def opener(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and ("w" in mode or "a" in mode):
            handle = original_open(file, mode, *args, **kwargs)
            real_write = handle.write

            def write(data):
                hit(file, lambda: (real_write(data[: len(data) // 2]), handle.flush()))
                return real_write(data)
            handle.write = write
            return handle
        return original_open(file, mode, *args, **kwargs)

    original_rename = os.rename

    def rename(src, dst, *args, **kwargs):  # "torn" here means: the rename happened, then the kill
        hit(dst, lambda: original_rename(src, dst, *args, **kwargs))
        return original_rename(src, dst, *args, **kwargs)

    os.rename = rename
    torch.save = save
    safetensors.torch.save_file = transformers.modeling_utils.safe_save_file = peft.peft_model.safe_save_file = \
        safe_save
    builtins.open = opener


def _fork(body) -> int:
    """Start `body` in a forked child (one torch thread: two children share the two cores); its pid."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            import torch

            torch.set_num_threads(1)
            body()
            code = 0
        except BaseException:  # show why a child failed; os._exit skips pytest's own reporting
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    return pid


def _status(pid: int) -> int:
    """A child's exit status, -9 when it was SIGKILLed."""
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _in_children(bodies) -> list[int]:
    """Run the bodies two at a time in forked children; their exit statuses in order."""
    statuses = []
    for start in range(0, len(bodies), 2):
        pids = [_fork(body) for body in bodies[start:start + 2]]
        statuses += [_status(pid) for pid in pids]
    return statuses


@pytest.mark.slow
def test_a_kill_at_any_write_of_a_save_leaves_a_resumable_run(tmp_path, tiny_model_dir):
    from finetune_kit.checkpoints import STAGING
    from finetune_kit.runs import checkpoint_problem, newest_complete_checkpoint

    data = write_jsonl(tmp_path / "train.jsonl", chat_rows(8))  # small batches: each kill point costs ~2 runs
    base = {"model_name_or_path": str(tiny_model_dir), "dataset_name": str(data), "use_peft": True, "lora_r": 4,
            "learning_rate": 1e-3, "per_device_train_batch_size": 2, "max_steps": SAVE_STEP, "save_steps": 2,
            "max_length": 64, "report_to": "none", "disable_tqdm": True, "seed": 0, "dataloader_num_workers": 0}

    # Discovery: the writes of one save, in order.
    events_file = tmp_path / "events.json"

    def record():
        events: list[str] = []
        _kill_during_save(None, False, events)
        run_recipe("sft", ["--config", write_config(tmp_path / "probe.yaml", {**base, "output_dir": str(tmp_path / "probe")})])
        events_file.write_text(json.dumps(events))

    assert _in_children([record]) == [0]
    writes = json.loads(events_file.read_text())
    assert "trainer_state.json" in writes and "optimizer.pt" in writes and "adapter_model.safetensors" in writes
    assert writes[-1] == f"checkpoint-{SAVE_STEP}", writes  # the publishing rename comes after every write
    points = [(i, torn) for i in range(1, len(writes) + 1) for torn in (False, True)]
    assert len(points) >= 20, writes

    outputs = [tmp_path / f"kill-{target}-{'torn' if torn else 'before'}" for target, torn in points]
    configs = [write_config(tmp_path / f"{out.name}.yaml", {**base, "output_dir": str(out)}) for out in outputs]

    def killed_run(target, torn, config):
        return lambda: (_kill_during_save(target, torn, []), run_recipe("sft", ["--config", config]))

    killed = _in_children([killed_run(t, torn, c) for (t, torn), c in zip(points, configs)])
    assert killed == [-9] * len(points)
    newest = [newest_complete_checkpoint(out) for out in outputs]
    for folder in newest:
        assert folder is not None and folder.name in ("checkpoint-2", f"checkpoint-{SAVE_STEP}")
        assert checkpoint_problem(folder) is None
    # Only the kill after the rename leaves a checkpoint-4; every earlier kill leaves no such folder at all.
    published = [(out / f"checkpoint-{SAVE_STEP}").exists() for out in outputs]
    assert published == [point == (len(writes), True) for point in points]
    resumed = _in_children([lambda c=c: run_recipe("sft", ["--config", c, "--resume_from_checkpoint", "latest"])
                            for c in configs])
    assert resumed == [0] * len(points), [(p, writes[p[0] - 1]) for p, r in zip(points, resumed) if r]
    for out in outputs:
        assert json.loads((out / "run_info.json").read_text())["recipe"] == "sft"
        assert not (out / STAGING).exists()
        assert checkpoint_problem(out / f"checkpoint-{SAVE_STEP}") is None


# A checkpoint damaged after it was saved (a disk error, a copy cut short, a hand edit): each file the Trainer
# loads on resume, made unreadable. Each was a traceback from deep inside torch / safetensors / transformers.
DAMAGE = {
    "optimizer.pt": lambda f: (f / "optimizer.pt").write_bytes(b"junk"),
    "scheduler.pt": lambda f: (f / "scheduler.pt").write_bytes(b"junk"),
    "rng_state.pth": lambda f: (f / "rng_state.pth").write_bytes(b"junk"),
    "adapter_model.safetensors": lambda f: (f / "adapter_model.safetensors").write_bytes(b"junk"),
    "global_step": lambda f: (f / "trainer_state.json").write_text('{"steps": 3}'),
}


def test_a_damaged_checkpoint_is_named_and_latest_resumes_from_the_one_before(tmp_path, tiny_model_dir, capsys):
    import shutil

    from finetune_kit.errors import UserError
    from finetune_kit.runs import checkpoint_problem

    data = write_jsonl(tmp_path / "d.jsonl", chat_rows(8))
    cfg = {"model_name_or_path": str(tiny_model_dir), "dataset_name": str(data), "use_peft": True, "max_steps": 3,
           "save_strategy": "steps", "save_steps": 1, "report_to": "none", "per_device_train_batch_size": 2,
           "bf16": False, "logging_steps": 1, "output_dir": str(tmp_path / "run")}
    run_recipe("sft", ["--config", write_config(tmp_path / "c.yaml", cfg)])
    (tmp_path / "run" / "run_info.json").unlink()  # as if the run had stopped after its third save
    assert checkpoint_problem(tmp_path / "run" / "checkpoint-3") is None
    for name, damage in DAMAGE.items():
        run = shutil.copytree(tmp_path / "run", tmp_path / f"run-{name}")
        damage(run / "checkpoint-3")
        assert name in checkpoint_problem(run / "checkpoint-3")
        resume = {**cfg, "output_dir": str(run), "max_steps": 4}
        with pytest.raises(UserError, match=rf"checkpoint-3 cannot be resumed from: .*{name}"):
            run_recipe("sft", ["--config", write_config(tmp_path / "r.yaml", {
                **resume, "resume_from_checkpoint": str(run / "checkpoint-3")})])
    # latest skips the damaged newest one and resumes, exactly, from checkpoint-2
    run_recipe("sft", ["--config", write_config(tmp_path / "r.yaml", {**resume, "resume_from_checkpoint": "latest"})])
    assert f"Resuming from {run / 'checkpoint-2'}" in capsys.readouterr().err
    history = json.loads((run / "log_history.json").read_text())
    assert [e["step"] for e in history if "loss" in e] == [1, 2, 3, 4]
