"""The fixed matrix of the GPU kit, in the order it runs (what matters most first, so a cut-short lease still
returns it), and its sizes: the device's, and the dry run's tiny ones on a CPU.

Models are random, built from configs (no weights travel): `llama-1b` is TinyLlama-1.1B's shape (the CPU benchmark's
`random-llama-1b`), `smollm2-135m` SmolLM2-135M's own config; both with SmolLM2's tokenizer. In the dry run one tiny
Llama (2 layers, hidden 64) stands in for both: the steps of the two models run the same code at other sizes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from benchmarks.gpu import arms, guards

LLAMA_1B = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                num_key_value_heads=4, tie_word_embeddings=False)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            tie_word_embeddings=False)
# Device sizes: sequence 2048 as the issue asks; 8 steps, 3 of them warm-up, fit ~10-20 s per 1B arm on an H200.
SIZES = {"device": dict(max_length=2048, batch=4, steps=8, warmup=3, rows=96, dpo_max_length=1024, guard_max_length=256),
         "dry": dict(max_length=96, batch=2, steps=2, warmup=1, rows=8, dpo_max_length=64, guard_max_length=48)}
TARGETS = {"mfu_full_llama-1b_ours": 0.40, "qlora_over_lora_peak_memory_llama-1b": 0.4}


@dataclass
class Step:
    name: str
    run: Callable[["Context"], dict]
    timeout: int  # seconds on the device; the step is stopped there and recorded as timed out
    needs: tuple[str, ...] = ()  # packages without which the step is skipped (recorded as such)
    dry: bool = True  # whether the dry run runs it (not when another step already runs the same code)


@dataclass
class Context:
    work: Path
    assets: Path  # SmolLM2's tokenizer, chat template and config
    dry: bool
    peak_flops: float | None = None
    cache: dict = field(default_factory=dict)  # model folders and data files, made once per run

    @property
    def sizes(self) -> dict:
        return SIZES["dry" if self.dry else "device"]

    def model(self, name: str) -> str:
        """The random model's folder, built on first use (bf16 on disk, built on the GPU where there is one)."""
        key = "tiny" if self.dry else name
        if key not in self.cache:
            self.cache[key] = str(random_model(self.work / "models" / key, self.assets, key))
        return self.cache[key]

    def data(self, kind: str, max_length: int) -> tuple[Path, float]:
        from transformers import AutoTokenizer

        key = f"{kind}-{max_length}"
        if key not in self.cache:
            tokenizer = AutoTokenizer.from_pretrained(self.assets)
            make = arms.dpo_rows if kind == "dpo" else arms.sft_rows
            rows, context = make(tokenizer, self.sizes["rows"], max_length, seed=0)
            self.cache[key] = (arms.write_rows(self.work / "data" / f"{key}.json", rows), context)
        return self.cache[key]

    def setting(self, model: str, kind: str, out: str, max_length: int | None = None) -> arms.Setting:
        length = max_length or self.sizes["max_length"]
        data, context = self.data(kind, length)
        return arms.Setting(model=self.model(model), data=data, context=context, out=str(self.work / "runs" / out),
                            max_length=length, batch=self.sizes["batch"], steps=self.sizes["steps"],
                            warmup=self.sizes["warmup"])


def random_model(folder: Path, assets: Path, name: str) -> Path:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if (folder / "config.json").is_file():
        return folder
    tokenizer = AutoTokenizer.from_pretrained(assets)
    if name == "smollm2-135m":
        config = LlamaConfig.from_pretrained(assets)
    else:
        config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=8192, bos_token_id=tokenizer.bos_token_id,
                             eos_token_id=tokenizer.eos_token_id, **(LLAMA_1B if name == "llama-1b" else TINY))
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    return folder


def matmul_peak(ctx: Context) -> dict:
    """The bf16 matmul rate the MFU is measured against: the median of 10 timed products after 3 warm-ups, on random
    data (zeros run faster on an H200: METHOD.md)."""
    import time

    n = 1024 if ctx.dry else 8192
    device = "cuda" if torch.cuda.is_available() else "cpu"
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    times = []
    for i in range(13):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            a @ b
            end.record()
            end.synchronize()
            seconds = start.elapsed_time(end) / 1000
        else:
            began = time.perf_counter()
            a @ b
            seconds = time.perf_counter() - began
        if i >= 3:
            times.append(seconds)
    ctx.peak_flops = 2 * n**3 / sorted(times)[len(times) // 2]
    return {"n": n, "device": device, "tflops": round(ctx.peak_flops / 1e12, 2), "flops_per_second": ctx.peak_flops}


def _sft_arm(model: str, method: str, arm: str) -> Callable[[Context], dict]:
    def run(ctx: Context) -> dict:
        setting = ctx.setting(model, "sft", f"{model}-{method}-{arm}")
        if arm == "ours":
            return arms.ours("sft", method, setting, ctx.peak_flops)
        return arms.trl_sft(method, setting, ctx.peak_flops, tuned=arm == "trl-tuned")
    return run


def _switch(model: str, liger: bool, packing: bool) -> Callable[[Context], dict]:
    def run(ctx: Context) -> dict:
        setting = ctx.setting(model, "sft", f"{model}-full-liger{int(liger)}-packing{int(packing)}")
        return {"liger_available": arms.liger_available(),
                **arms.ours("sft", "full", setting, ctx.peak_flops, "--use_liger_kernel", str(liger).lower(),
                            "--packing", str(packing).lower())}
    return run


def _dpo_arm(arm: str) -> Callable[[Context], dict]:
    def run(ctx: Context) -> dict:
        setting = ctx.setting("llama-1b", "dpo", f"dpo-{arm}", max_length=ctx.sizes["dpo_max_length"])
        return arms.ours("dpo", "lora", setting, ctx.peak_flops) if arm == "ours" else arms.trl_dpo(setting,
                                                                                                     ctx.peak_flops)
    return run


def _guard(which: str) -> Callable[[Context], dict]:
    def run(ctx: Context) -> dict:
        model = ctx.model("smollm2-135m")
        data, _ = ctx.data("sft", ctx.sizes["guard_max_length"])
        work = ctx.work / "guards" / which
        bf16 = torch.cuda.is_available()  # the device's case; the dry run checks the code path in fp32
        if which == "packed_equals_padded":
            return guards.packed_equals_padded(model, data, work, bf16)
        if which == "accumulation_1x8_equals_8x1":
            return guards.accumulation_matches(model, data, work, bf16)
        return guards.bf16_close_to_fp32(model, data, work)
    return run


def _fsdp(ctx: Context) -> dict:
    data, _ = ctx.data("sft", ctx.sizes["guard_max_length"])
    return guards.fsdp2_launch(ctx.model("smollm2-135m"), data, ctx.work / "fsdp2")


def steps() -> list[Step]:
    """The matrix, most important first."""
    matrix = [Step("matmul_peak", matmul_peak, 60)]
    for model, timeout in (("llama-1b", 90), ("smollm2-135m", 45)):
        if model == "smollm2-135m":  # after the 1B's arms: the guards, FSDP, Liger / packing, DPO
            matrix += [Step(f"guard/{g}", _guard(g), 90) for g in
                       ("packed_equals_padded", "accumulation_1x8_equals_8x1", "bf16_close_to_fp32")]
            matrix.append(Step("fsdp2_launch", _fsdp, 150))
            matrix += [Step(f"sft/llama-1b/full/ours/liger={liger}/packing={packing}", _switch("llama-1b", liger, packing),
                            90, ("liger_kernel",) if liger else ()) for liger, packing in
                       ((False, False), (True, True), (False, True))]
            matrix += [Step(f"dpo/llama-1b/lora/{arm}", _dpo_arm(arm), 90) for arm in ("ours", "trl-default")]
        for method in ("full", "lora", "qlora"):
            for arm in ("ours", "trl-default", "trl-tuned"):
                matrix.append(Step(f"sft/{model}/{method}/{arm}", _sft_arm(model, method, arm), timeout,
                                   ("bitsandbytes",) if method == "qlora" else (), dry=model == "llama-1b"))
    return matrix


def summary(results: dict) -> dict:
    """The figures the issue asks for, from the steps that finished: ratios to trl-default, MFU against its target,
    QLoRA's peak over bf16 LoRA's."""
    done = {name: r["result"] for name, r in results.items() if r.get("status") == "ok"}
    memory_key = "peak_allocated_gib" if torch.cuda.is_available() else "peak_rss_training_mib"
    out = {}
    for name, result in done.items():
        parts = name.split("/")
        if parts[0] in ("sft", "dpo") and len(parts) == 4 and parts[3] != "trl-default":
            base = done.get("/".join(parts[:3] + ["trl-default"]))
            if base:
                out[f"{name}_over_trl-default"] = {
                    "tokens_per_second": round(result["tokens_per_second"] / base["tokens_per_second"], 3),
                    "peak_memory": round(result[memory_key] / base[memory_key], 3)}
    full = done.get("sft/llama-1b/full/ours")
    if full and full.get("mfu") is not None:
        out["mfu_full_llama-1b_ours"] = {"value": full["mfu"], "target": TARGETS["mfu_full_llama-1b_ours"]}
    lora, qlora = done.get("sft/llama-1b/lora/ours"), done.get("sft/llama-1b/qlora/ours")
    if lora and qlora:
        out["qlora_over_lora_peak_memory_llama-1b"] = {
            "value": round(qlora[memory_key] / lora[memory_key], 3),
            "target": TARGETS["qlora_over_lora_peak_memory_llama-1b"]}
    out["guards_ok"] = {name: r.get("ok") for name, r in done.items() if name.startswith(("guard/", "fsdp2"))}
    return out

