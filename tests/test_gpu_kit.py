"""The GPU check kit (benchmarks/gpu) on the CPU: its dry run trains through the main kinds of step it will run on
a device, and its parts (travel plan, step time boxes, Liger's undoing, the MFU count, the summary) do what they say.

The dry run here runs one step of each main code path (the matmul peak, our SFT recipe, trl's SFTTrainer (tuned,
QLoRA), a guard, our DPO arm), to keep the suite short: the other steps of the matrix run the same code with other
arguments, except trl's DPO arm (its trl calls are those of tests/test_bench_harness.py's DPO baseline) and the
FSDP2 accelerate launch (75 s; FSDP2 itself is tests/test_fsdp_cpu.py).
The whole matrix, the FSDP2 accelerate launch included, is `python -m benchmarks.gpu run --dry-run --out DIR`
(~4 min on 2 busy cores; every step passed on 2026-12-02).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
COVERING = ["matmul_peak", "sft/llama-1b/full/ours", "sft/llama-1b/qlora/trl-tuned",
            "guard/accumulation_1x8_equals_8x1", "dpo/llama-1b/lora/ours"]  # in the matrix's order


def test_dry_run_trains_one_step_of_each_kind_and_writes_the_report(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu", "run", "--dry-run", "--out", str(tmp_path),
                           "--budget", "600", "--steps", ",".join(COVERING)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_kit.json").read_text())
    assert list(report["steps"]) == COVERING  # in the matrix's order, nothing else
    assert {name: step["status"] for name, step in report["steps"].items()} == dict.fromkeys(COVERING, "ok")
    assert report["environment"]["dry_run"] and report["command"].startswith("python3 -m benchmarks.gpu run")
    peak = report["steps"]["matmul_peak"]["result"]["flops_per_second"]
    assert peak > 0
    arms = [name for name in COVERING if name.startswith(("sft/", "dpo/"))]
    for name in arms:
        arm = report["steps"][name]["result"]
        assert arm["steps"] == 2 and arm["timed_steps"] == 1 and len(arm["losses"]) == 2
        assert all(math.isfinite(loss) and loss > 0 for loss in arm["losses"])
        assert arm["tokens_per_second"] > 0 and arm["peak_rss_training_mib"] > 100
        # MFU is the achieved model FLOP/s over the measured peak, from the same run's figures
        assert arm["mfu"] == pytest.approx(arm["tokens_per_second"] * arm["flops_per_token"] / peak, rel=0.02)
    full, qlora = (report["steps"][name]["result"] for name in arms[:2])
    assert full["flops_per_token"] > qlora["flops_per_token"]  # (Q)LoRA computes no base weight gradients
    assert full["decisions"]["packing"] is False  # ours, on a CPU: padded batches (no flash attention)
    assert qlora["settings"]["packing"] is True and qlora["settings"]["gradient_checkpointing"] is False
    guard = report["steps"]["guard/accumulation_1x8_equals_8x1"]["result"]
    assert guard["ok"] and guard["lora_B_max_abs"] > 1e-3  # it learned something, and both shapes learned it
    assert report["summary"]["mfu_full_llama-1b_ours"]["target"] == 0.40


def test_travel_plan_is_one_call_when_bitsandbytes_fits_and_two_when_not():
    from benchmarks.gpu.prepare import LIMIT, plan, run_call

    mib = 2**20
    measured = {"core": int(3.8 * mib), "transformers": int(12.9 * mib), "extra": int(0.98 * mib),
                "bnb": int(41.14 * mib)}  # prepare, 2026-12-02
    (one,) = plan(int(1.3 * mib), measured)
    assert one["part"] == "all" and one["carry"] == [".gpukit/core", ".gpukit/transformers", ".gpukit/extra",
                                                     ".gpukit/bnb"]
    first, second = plan(int(4.5 * mib), measured)  # a tree grown by 3 MiB: bitsandbytes goes in a second call
    assert (first["part"], second["part"]) == ("1", "2") and ".gpukit/bnb" not in first["carry"]
    assert second["carry"] == [".gpukit/core", ".gpukit/transformers", ".gpukit/bnb"]
    first, second = plan(int(6 * mib), measured)  # more still: the second call runs on the image's transformers
    assert second["carry"] == [".gpukit/core", ".gpukit/bnb"] and all(c["bytes"] < LIMIT for c in (first, second))
    with pytest.raises(SystemExit, match="even split"):
        plan(int(1.3 * mib), {**measured, "bnb": 70 * mib})
    assert [c["part"] for c in plan(int(1.3 * mib), measured, split=True)] == ["1", "2"]  # the fallback printed
    call = run_call("all", one["carry"])
    assert len(call["command"]) <= 2000 and call["timeout_s"] <= 600 and len(call["carry"]) <= 8
    assert "--out $OUT" in call["command"] and "tee $OUT/log.txt" in call["command"]


def test_the_two_parts_of_a_split_call_cover_the_matrix():
    from benchmarks.gpu.matrix import steps
    from benchmarks.gpu.run import in_part

    matrix = steps()
    first = {s.name for s in matrix if in_part(s, "1")}
    second = {s.name for s in matrix if in_part(s, "2")}
    assert first | second == {s.name for s in matrix} and all(in_part(s, "all") for s in matrix)
    assert first & second == {"matmul_peak", "sft/llama-1b/lora/ours"}  # MFU's peak, QLoRA's memory reference
    assert all("/qlora/" in name for name in second - first) and not any("/qlora/" in name for name in first)


def test_what_we_carry_needs_nothing_the_device_lacks():
    """Requirements of the carried packages (this venv's versions, the ones carried), checked against the image's
    package list and its known versions; a requirement the image lacks is named."""
    from importlib import metadata

    from benchmarks.gpu.prepare import WHEELS, companions, unmet

    carried = {name: metadata.requires(name) or [] for name in WHEELS if name != "liger-kernel"}  # not installed here
    carried["finetune-kit"] = metadata.requires("finetune-kit")
    carried.update({name: metadata.requires(name) or [] for name in companions(carried)})  # as prepare downloads them
    unverified = []
    assert unmet(carried, unverified) == []
    assert "datasets needs pyarrow>=24.0.0" in unverified  # the image's pyarrow version is not recorded
    assert unmet({"x": ["huggingface-hub>=2"]}) == ["x needs huggingface-hub>=2: the image has 1.33.0"]
    assert unmet({"x": ["httpx2>=2", "tomli; python_version < '3.11'"]}) == [
        "x needs httpx2>=2: not on the image, not carried"]


def test_what_a_carried_wheel_needs_beyond_the_image_travels_with_it_and_what_it_needs_in_turn():
    """transformers 5.25 needs huggingface-hub>=2.4 (the image has 1.33), whose httpx2 the image lacks: both travel,
    filed under the package that asked; a need that is on the image, or not installed here, does not."""
    from importlib import metadata

    from benchmarks.gpu.prepare import companions, unmet

    hub = metadata.version("huggingface-hub")
    found = companions({"x": [f"huggingface-hub=={hub}", "numpy>=1", "no-such-package-xyz>=1"]})
    assert set(found.values()) == {"x"} and "numpy" not in found and "no-such-package-xyz" not in found
    if int(hub.split(".")[0]) >= 2:  # this venv's hub is the one that travels; 2.x brings httpx2
        assert {"huggingface-hub", "httpx2"} <= set(found)
    assert unmet({"x": ["no-such-package-xyz>=1"], **{n: [] for n in found}}) == [
        "x needs no-such-package-xyz>=1: not on the image, not carried"]


def test_a_step_past_its_time_box_is_recorded_and_the_run_goes_on(tmp_path):
    from benchmarks.gpu.matrix import Context, Step
    from benchmarks.gpu.run import run_step

    ctx = Context(work=tmp_path, assets=tmp_path, dry=True)
    deadline = time.time() + 600
    began = time.time()
    slow = run_step(Step("slow", lambda c: time.sleep(5) or {}, timeout=1), ctx, deadline)
    assert slow["status"] == "timeout" and time.time() - began < 4
    failed = run_step(Step("bad", lambda c: 1 / 0, timeout=5), ctx, deadline)
    assert failed["status"] == "error" and "ZeroDivisionError" in failed["why"]
    assert run_step(Step("fine", lambda c: {"x": 1}, timeout=5), ctx, deadline) == \
        {"status": "ok", "result": {"x": 1}, "seconds": pytest.approx(0, abs=1)}
    missing = run_step(Step("q", lambda c: {}, 5, needs=("no_such_package_xyz",)), ctx, deadline)
    assert missing["status"] == "skipped" and "no_such_package_xyz not installed" in missing["why"]
    late = run_step(Step("late", lambda c: {}, 5), ctx, time.time() + 5)
    assert late["status"] == "skipped" and late["why"].startswith("budget")


def test_an_unknown_step_name_stops_the_run_before_it_starts(tmp_path):
    from benchmarks.gpu.run import main

    with pytest.raises(SystemExit, match=r"unknown steps \['sft/llama-1b/ful/ours'\]"):
        main(["--dry-run", "--out", str(tmp_path), "--steps", "matmul_peak,sft/llama-1b/ful/ours"])
    assert not (tmp_path / "gpu_kit.json").exists()


def test_liger_patches_to_the_llama_module_are_undone():
    from transformers.models.llama import modeling_llama

    from benchmarks.gpu.arms import liger_undone

    rope, norm_forward = modeling_llama.apply_rotary_pos_emb, modeling_llama.LlamaRMSNorm.forward
    with liger_undone():  # what liger's apply_liger_kernel_to_llama does: module functions and class methods
        modeling_llama.apply_rotary_pos_emb = lambda *a, **k: None
        modeling_llama.LlamaRMSNorm.forward = lambda self, x: x
        modeling_llama.LlamaMLP.extra = 1
    assert modeling_llama.apply_rotary_pos_emb is rope and modeling_llama.LlamaRMSNorm.forward is norm_forward
    assert not hasattr(modeling_llama.LlamaMLP, "extra")


def test_model_flops_per_token_count_every_matmul():
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from benchmarks.gpu.arms import flops_per_token, matmul_counts

    d, i, layers, vocab, kv = 64, 128, 2, 100, 32
    model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=d, intermediate_size=i, num_hidden_layers=layers,
                                         num_attention_heads=4, num_key_value_heads=2))
    weights = layers * (2 * d * d + 2 * d * kv + 3 * d * i) + d * vocab  # q, o; k, v; gate, up, down; LM head
    assert matmul_counts(model) == (weights, weights)
    attention = 4 * layers * d * 10.0
    assert flops_per_token(model, 10.0) == 6 * weights + 3 * attention
    lora = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    adapters = layers * (4 * d + 4 * d + 4 * d + 4 * kv)  # A: d x 4, B: 4 x out, on q (out d) and v (out kv)
    assert matmul_counts(lora) == (weights + adapters, adapters)
    assert flops_per_token(lora, 10.0, extra_forwards=1) == pytest.approx(
        4 * (weights + adapters) + 2 * adapters + 3 * attention + 2 * (weights + adapters) + attention)


def test_summary_reports_ratios_and_targets():
    from benchmarks.gpu.matrix import summary

    key = "peak_allocated_gib" if torch.cuda.is_available() else "peak_rss_training_mib"
    arm = lambda rate, memory, **more: {"status": "ok", "result": {"tokens_per_second": rate, key: memory, **more}}
    out = summary({"sft/llama-1b/full/ours": arm(300, 10, mfu=0.42), "sft/llama-1b/full/trl-default": arm(200, 20),
                   "sft/llama-1b/lora/ours": arm(1, 10), "sft/llama-1b/qlora/ours": arm(1, 3.5),
                   "sft/llama-1b/qlora/trl-default": {"status": "timeout"},
                   "guard/bf16_close_to_fp32": {"status": "ok", "result": {"ok": False}}})
    assert out["sft/llama-1b/full/ours_over_trl-default"] == {"tokens_per_second": 1.5, "peak_memory": 0.5}
    assert "sft/llama-1b/qlora/ours_over_trl-default" not in out  # its baseline timed out: no ratio
    assert out["mfu_full_llama-1b_ours"] == {"value": 0.42, "target": 0.40}
    assert out["qlora_over_lora_peak_memory_llama-1b"] == {"value": 0.35, "target": 0.4}
    assert out["guards_ok"] == {"guard/bf16_close_to_fp32": False}
