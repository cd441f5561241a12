"""Real FSDP2 sharding without a GPU: `fully_shard` over a gloo process group, a sharded (DCP) save, an exact resume.

    torchrun --nproc_per_node 2 -m benchmarks.gpu.fsdp2_shard --out DIR

Why not `accelerate launch --config_file recipes/accelerate/fsdp2.yaml` on the CPU: with ACCELERATE_USE_CPU it
silently runs plain DDP (nothing sharded). torch's own FSDP2 works over gloo: each rank keeps half the rows of every
weight (a DTensor), all-gathers them for its forward and backward and reduce-scatters the gradients; the optimizer
state is sharded the same way. The same 2-layer Llama (each decoder layer and the root wrapped, as the
transformers integration wraps them) trains on a fixed global batch split across the ranks: 6 straight steps; then,
from the same initial weights, 3 steps and a sharded save of model and optimizer; then a new model and a new
optimizer load that checkpoint and take the last 3 steps. One launch, one process group: a second torchrun would add
~20 s of imports on a 2-core machine, and tearing the group down and starting another inside the same torchrun
(destroy_process_group, init_process_group) hung on the rendezvous store now and then (torch 2.13, gloo).
Rank 0 writes `fsdp2.json`: losses, checksums of the gathered weights, and what the shards looked like.
tests/test_fsdp_cpu.py asserts that 3 + 3 equals 6.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist

STEPS, SAVED_AT, GLOBAL_BATCH, SEQ, VOCAB = 6, 3, 4, 16, 128


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)  # the same initial weights on every rank and in every phase
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=SEQ,
                         tie_word_embeddings=False)
    return LlamaForCausalLM(config)


def sharded(model):
    """FSDP2 over the gloo group: each decoder layer its own unit (one all-gather per layer), then the root."""
    from torch.distributed.fsdp import fully_shard

    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    return model


def batch(step: int, rank: int, world: int) -> torch.Tensor:
    """This rank's rows of step's global batch: fixed by the step alone, so a resumed run sees the same data.
    Counting sequences (each token the previous plus one) from random starts: learnable, so the loss falls."""
    starts = torch.randint(0, VOCAB, (GLOBAL_BATCH, 1), generator=torch.Generator().manual_seed(1000 + step))
    rows = (starts + torch.arange(SEQ)) % VOCAB
    per_rank = GLOBAL_BATCH // world
    return rows[rank * per_rank:(rank + 1) * per_rank]


def train(model, optimizer, steps: range) -> list[float]:
    """Losses of `steps`, each the mean over the whole global batch (all ranks)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    losses = []
    for step in steps:
        ids = batch(step, rank, world)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        losses.append(mean.item() / world)
    return losses


def weights_summary(model) -> dict:
    """Checksums of the full (gathered) weights, and the shard layout of one weight, to show real sharding."""
    from torch.distributed.tensor import DTensor

    total, absolute = 0.0, 0.0
    for param in model.parameters():
        full = param.full_tensor() if isinstance(param, DTensor) else param
        total += full.double().sum().item()
        absolute += full.double().abs().sum().item()
    weight = model.model.layers[0].mlp.gate_proj.weight
    return {"sum": total, "abs_sum": absolute, "dtensor": isinstance(weight, DTensor),
            "full_shape": list(weight.shape), "local_shape": list(weight.to_local().shape),
            "placements": [str(p) for p in weight.placements]}


def fresh():
    model = sharded(tiny_llama())
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    opts = parser.parse_args()
    torch.set_num_threads(1)
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    checkpoint = str(opts.out / "checkpoint")
    dist.init_process_group("gloo")
    result = {"world_size": dist.get_world_size(), "backend": dist.get_backend(), "torch": torch.__version__}
    model, optimizer = fresh()
    result["straight_losses"] = train(model, optimizer, range(STEPS))
    result["straight_weights"] = weights_summary(model)
    model, optimizer = fresh()
    result["losses_before_save"] = train(model, optimizer, range(SAVED_AT))
    model_state, optimizer_state = get_state_dict(model, optimizer)  # sharded: each rank writes its own part
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=checkpoint)
    del model, optimizer, model_state, optimizer_state

    model, optimizer = fresh()  # a new model and optimizer: all trained state must come from the checkpoint
    model_state, optimizer_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optimizer_state}
    dcp.load(state, checkpoint_id=checkpoint)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    result["losses_after_resume"] = train(model, optimizer, range(SAVED_AT, STEPS))
    result["resumed_weights"] = weights_summary(model)
    if dist.get_rank() == 0:
        (opts.out / "fsdp2.json").write_text(json.dumps(result, indent=2))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
