"""PPO for causal LMs with LoRA (trl removed its PPOTrainer after 1.12; this follows its algorithm).

One PPO step:
1. rollout: sample an answer to each prompt from the policy; score each (prompt, answer) with the reward;
2. per-token rewards: -kl_coef * (log p_policy - log p_ref) on every answer token, the score added on the last one
   (the reference is the base model with the LoRA adapters disabled: no second copy in memory);
3. advantages and returns by GAE from a value head on the policy's last hidden state;
4. several epochs of minibatch updates of the clipped policy loss + vf_coef * clipped value loss.

The math is in small pure functions (tested against hand-computed values); `PPOTrainer` holds the loop, saving and
resuming. Every step reseeds sampling with seed + step and draws prompts from a per-epoch seeded permutation, so a
run resumed from checkpoint k repeats steps k+1.. of the uninterrupted run.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import torch
from torch import nn

from finetune_kit.errors import UserError

# --- the math ------------------------------------------------------------------------------------------------


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + 1e-8) * mask


def kl_penalised_rewards(scores, logprobs, ref_logprobs, mask, kl_coef: float):
    """Per-token rewards of right-padded answers: KL penalty on every token, the score on the last real one."""
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    last = mask.sum(dim=1).long() - 1
    rewards[torch.arange(len(scores)), last] += scores
    return rewards, kl


def compute_gae(rewards, values, mask, gamma: float, lam: float):
    """Advantages and returns by generalised advantage estimation; positions after an answer's end count as 0."""
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.size(1))):
        next_value = values[:, t + 1] if t + 1 < rewards.size(1) else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
    advantages = advantages * mask
    return advantages, advantages + values


def policy_loss(logprobs, old_logprobs, advantages, mask, cliprange: float):
    """Clipped surrogate loss and the share of tokens where clipping was active."""
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - cliprange, 1 + cliprange)
    return masked_mean(torch.max(unclipped, clipped), mask), masked_mean((clipped > unclipped).float(), mask)


def value_loss(values, old_values, returns, mask, cliprange_value: float):
    """Clipped value loss (0.5 * squared error, the larger of clipped and unclipped) and its clip fraction."""
    clipped_values = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    unclipped, clipped = (values - returns) ** 2, (clipped_values - returns) ** 2
    return 0.5 * masked_mean(torch.max(unclipped, clipped), mask), masked_mean((clipped > unclipped).float(), mask)


class AdaptiveKLController:
    """Ziegler et al. (2019): move kl_coef so the per-answer KL tracks `target`, at most +-20% per horizon."""

    def __init__(self, kl_coef: float, target: float | None, horizon: int):
        self.value, self.target, self.horizon = kl_coef, target, horizon

    def update(self, current_kl: float, n_answers: int) -> None:
        if self.target is None:  # fixed coefficient
            return
        error = min(max(current_kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + error * n_answers / self.horizon


# --- the model -------------------------------------------------------------------------------------------------


class PolicyWithValue(nn.Module):
    """A peft causal LM and a scalar value head on its last hidden state (shared trunk, as in trl's PPO)."""

    def __init__(self, policy):
        super().__init__()
        self.policy = policy
        self.value_head = nn.Linear(policy.config.get_text_config().hidden_size, 1)
        nn.init.zeros_(self.value_head.weight)  # start from V = 0: no made-up values before any return is seen
        nn.init.zeros_(self.value_head.bias)
        output_layer_in_fp32(policy)

    def forward(self, input_ids, attention_mask):
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # prompts are left-padded
        out = self.policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          output_hidden_states=True)
        hidden = out.hidden_states[-1]
        with torch.autocast(hidden.device.type, enabled=False):  # values in fp32, whatever the trunk's dtype
            return out.logits, self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1)


def output_layer_in_fp32(policy) -> None:
    """Log-probabilities, ratios and KL all come from the logits. Under bf16 autocast the LM head's matmul rounds
    them to bf16 (8 bits of mantissa: ~0.03 nats at a logit of 8), as large as what one PPO update changes, and the
    rollout's and the update's roundings differ: the ratio is noise, the KL estimate drifts, and a bf16 run of `make
    rlhf` collapsed (issue #25). The head (a small share of the compute) runs in its weights' dtype (fp32 as the
    recipe loads them) with autocast off; the trunk keeps the autocast dtype."""
    head = policy.get_output_embeddings()
    forward = head.forward

    def forward_in_weight_dtype(hidden, *args, **kwargs):
        with torch.autocast(hidden.device.type, enabled=False):
            return forward(hidden.to(head.weight.dtype), *args, **kwargs)

    head.forward = forward_in_weight_dtype


def answer_logprobs(logits, input_ids, prompt_len: int, temperature: float):
    """Log-probabilities (and entropies) of the answer tokens, from logits over the whole sequence."""
    logits = logits[:, prompt_len - 1:-1].float() / temperature
    logp = torch.log_softmax(logits, dim=-1)
    taken = torch.gather(logp, 2, input_ids[:, prompt_len:].unsqueeze(-1)).squeeze(-1)
    entropy = -(logp.exp() * logp).sum(-1)
    return taken, entropy


# --- the loop --------------------------------------------------------------------------------------------------


@dataclass
class Rollout:
    input_ids: torch.Tensor  # prompt (left-padded) + answer (right-padded)
    attention_mask: torch.Tensor
    mask: torch.Tensor  # answer tokens up to and including EOS
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    scores: torch.Tensor
    texts: list[str]


class PPOTrainer:
    """PPO steps over `prompts` (raw, as the reward sees them) and their token ids, rewarded by
    `reward(raw_prompts, answer_texts) -> scores`."""

    def __init__(self, model: PolicyWithValue, tokenizer, prompts: list, prompt_ids: list[list[int]],
                 reward: Callable, ppo, args, accelerator, on_nonfinite: str = "stop"):
        self.skip_nonfinite, self.skipped = on_nonfinite == "skip", 0
        self.tokenizer, self.prompts, self.prompt_ids, self.reward = tokenizer, prompts, prompt_ids, reward
        self.ppo, self.args, self.accelerator = ppo, args, accelerator
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=args.learning_rate, weight_decay=args.weight_decay,
                                      betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon)
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        self.kl_ctl = AdaptiveKLController(ppo.kl_coef, ppo.target_kl if ppo.adaptive_kl else None, ppo.kl_horizon)
        self.step, self.log_history = 0, []

    @property
    def unwrapped(self) -> PolicyWithValue:
        return self.accelerator.unwrap_model(self.model)

    # What runs.finish_run uses of a transformers Trainer, so a PPO run finishes as every recipe's does.
    @property
    def peft_model(self):
        return self.unwrapped.policy

    @property
    def state(self) -> SimpleNamespace:
        return SimpleNamespace(log_history=self.log_history)

    def is_world_process_zero(self) -> bool:
        return self.accelerator.is_main_process

    def create_model_card(self, model_name: str) -> None:
        from huggingface_hub import ModelCard, ModelCardData

        base = self.peft_model.peft_config["default"].base_model_name_or_path
        data = ModelCardData(base_model=base, library_name="peft", tags=["finetune_kit", "ppo", "rlhf"])
        card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n# {model_name}\n\nLoRA adapter and value head trained "
                         f"with PPO (finetune_kit's ppo recipe) from {base}: {self.step} steps; the training log is "
                         "in log_history.json, the settings in config.yaml.\n")
        card.save(Path(self.args.output_dir) / "README.md")

    def batch_indices(self, step: int) -> list[int]:
        """This process's prompts for `step`: consecutive slices of a per-epoch seeded permutation."""
        per_step = self.ppo.rollout_batch_size * self.accelerator.num_processes
        start = step * per_step
        out = []
        while len(out) < per_step:
            epoch, offset = divmod(start + len(out), len(self.prompts))
            order = torch.randperm(len(self.prompts), generator=torch.Generator().manual_seed(self.args.seed + epoch))
            out += order[offset:offset + per_step - len(out)].tolist()
        return out[self.accelerator.process_index::self.accelerator.num_processes]

    @torch.no_grad()
    def rollout(self, prompts: list, prompt_ids: list[list[int]], seed: int) -> Rollout:
        """Sample answers, score them, and record policy / reference log-probs and values."""
        tok, model = self.tokenizer, self.unwrapped
        model.eval()
        width, pad = max(len(p) for p in prompt_ids), tok.pad_token_id
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompt_ids], device=self.accelerator.device)
        attn = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids], device=ids.device)
        torch.manual_seed(seed)
        with self.accelerator.autocast():
            seq = model.policy.generate(input_ids=ids, attention_mask=attn, do_sample=True,
                                        max_new_tokens=self.ppo.max_new_tokens, temperature=self.ppo.temperature,
                                        top_k=self.ppo.top_k, top_p=1.0, pad_token_id=pad,
                                        eos_token_id=tok.eos_token_id)
        answer = seq[:, width:]
        ended = (answer == tok.eos_token_id).long().cumsum(-1)
        mask = ((ended == 0) | ((ended == 1) & (answer == tok.eos_token_id))).float()  # through the first EOS
        answer = torch.where(mask.bool(), answer, torch.full_like(answer, pad))
        seq = torch.cat([ids, answer], dim=1)
        full_attn = torch.cat([attn, mask.long()], dim=1)
        with self.accelerator.autocast():
            logits, values = model(seq, full_attn)
            logprobs, _ = answer_logprobs(logits, seq, width, self.ppo.temperature)
            with model.policy.disable_adapter():  # the reference: the base model itself
                ref_logits, _ = model(seq, full_attn)
            ref_logprobs, _ = answer_logprobs(ref_logits, seq, width, self.ppo.temperature)
        texts = tok.batch_decode(answer, skip_special_tokens=True)
        scores = self.reward(prompts, texts).to(self.accelerator.device, torch.float32)
        return Rollout(seq, full_attn, mask, logprobs.float(), ref_logprobs.float(), values[:, width - 1:-1].float(),
                       scores, texts)

    def evaluate(self, prompts: list, prompt_ids: list[list[int]], seed: int) -> dict:
        """Mean and spread of the reward, and the KL to the reference, on fixed prompts with a fixed seed."""
        scores, kls, texts = [], [], []
        size = self.ppo.rollout_batch_size
        for start in range(0, len(prompts), size):
            r = self.rollout(prompts[start:start + size], prompt_ids[start:start + size], seed + start)
            scores += r.scores.tolist()
            kls += ((r.logprobs - r.ref_logprobs) * r.mask).sum(1).tolist()
            texts += r.texts
        s = torch.tensor(scores)
        return {"reward_mean": s.mean().item(), "reward_std": s.std().item() if len(s) > 1 else 0.0,
                "kl": sum(kls) / len(kls), "scores": scores, "answers": texts,
                "prompts": [p if isinstance(p, str) else json.dumps(p) for p in prompts]}

    def approx_kl(self, logprobs, old_logprobs, mask) -> float:
        """KL from the rollout policy to the current one per answer token (Schulman's k3: mean of r - 1 - log r),
        averaged over processes so that all of them stop together."""
        log_ratio = ((logprobs - old_logprobs) * mask).detach()
        k3 = masked_mean(torch.exp(log_ratio) - 1 - log_ratio, mask)
        return self.accelerator.reduce(k3, "mean").item()

    def snapshot(self) -> dict[str, torch.Tensor]:
        """The trained parameters (adapters and value head), copied: what the best-policy guard keeps."""
        return {n: p.detach().to("cpu", copy=True) for n, p in self.unwrapped.named_parameters() if p.requires_grad}

    def restore(self, snapshot: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, param in self.unwrapped.named_parameters():
                if name in snapshot:
                    param.copy_(snapshot[name])

    def train_step(self) -> dict[str, float]:
        ppo = self.ppo
        indices = self.batch_indices(self.step)
        r = self.rollout([self.prompts[i] for i in indices], [self.prompt_ids[i] for i in indices],
                         seed=self.args.seed + self.step)
        scores = r.scores
        if ppo.whiten_rewards:
            scores = (scores - scores.mean()) / (scores.std() + 1e-8)
        rewards, kl = kl_penalised_rewards(scores, r.logprobs, r.ref_logprobs, r.mask, self.kl_ctl.value)
        advantages, returns = compute_gae(rewards, r.values, r.mask, ppo.gamma, ppo.lam)
        advantages = masked_whiten(advantages, r.mask)
        width = r.input_ids.size(1) - r.mask.size(1)

        # The model stays in eval mode: dropout would make the first ratio differ from 1 before any update.
        stats: dict[str, list[float]] = {"policy_loss": [], "value_loss": [], "clip_frac": [], "entropy": [],
                                         "approx_kl": []}
        order_gen = torch.Generator().manual_seed(self.args.seed + self.step)
        batches = [mb for _ in range(ppo.ppo_epochs)
                   for mb in torch.randperm(len(scores), generator=order_gen).split(ppo.mini_batch_size)]
        updates = 0
        for mb in batches:
            mb = mb.to(r.mask.device)
            with self.accelerator.autocast():
                logits, values = self.model(r.input_ids[mb], r.attention_mask[mb])
                logprobs, entropy = answer_logprobs(logits, r.input_ids[mb], width, ppo.temperature)
            m = r.mask[mb]
            approx_kl = self.approx_kl(logprobs, r.logprobs[mb], m)
            stats["approx_kl"].append(approx_kl)
            if ppo.early_stop_kl and approx_kl > ppo.early_stop_kl:
                break  # the policy has moved as far from its rollouts as one step may: no more updates on them
            pg, clip_frac = policy_loss(logprobs, r.logprobs[mb], advantages[mb], m, ppo.cliprange)
            vf, _ = value_loss(values[:, width - 1:-1].float(), r.values[mb], returns[mb], m, ppo.cliprange_value)
            loss = pg + ppo.vf_coef * vf
            if not torch.isfinite(loss) and self.skip_nonfinite:  # drop this update, count it, go on
                self.skipped += 1
                continue
            if not torch.isfinite(loss):
                raise UserError(f"PPO step {self.step + 1}: the loss is {loss.item()} (not finite); the last "
                                "checkpoint is intact. Lower learning_rate, check the rewards, or set "
                                "on_nonfinite: skip.")
            self.optimizer.zero_grad()
            self.accelerator.backward(loss)
            if self.args.max_grad_norm:
                self.accelerator.clip_grad_norm_(self.model.parameters(), self.args.max_grad_norm)
            self.optimizer.step()
            for key, value in (("policy_loss", pg), ("value_loss", vf), ("clip_frac", clip_frac),
                               ("entropy", masked_mean(entropy, m))):
                stats[key].append(value.item())
            updates += 1
        kl_per_answer = self.accelerator.gather(kl.sum(1)).mean().item()
        self.kl_ctl.update(kl_per_answer, len(scores) * self.accelerator.num_processes)
        self.step += 1
        all_scores = self.accelerator.gather(r.scores)
        log = {"step": self.step, "reward_mean": all_scores.mean().item(), "reward_std": all_scores.std().item(),
               "kl": kl_per_answer, "kl_coef": self.kl_ctl.value, "answer_length": r.mask.sum(1).mean().item(),
               "nonfinite_skipped": self.skipped, "updates": updates, "planned_updates": len(batches),
               **{k: sum(v) / len(v) if v else float("nan") for k, v in stats.items()}}
        self.log_history.append(log)
        return log

    # --- checkpoints -------------------------------------------------------------------------------------------

    def save_checkpoint(self, output_dir: str) -> Path | None:
        """checkpoint-<step>, written to a temporary folder and renamed: a killed save leaves no half checkpoint."""
        self.accelerator.wait_for_everyone()
        if not self.accelerator.is_main_process:
            return None
        target = Path(output_dir) / f"checkpoint-{self.step}"
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".tmp-{target.name}-"))
        try:
            self.save_model(tmp)
            torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
            state = {"global_step": self.step, "kl_coef": self.kl_ctl.value, "log_history": self.log_history}
            (tmp / "trainer_state.json").write_text(json.dumps(state, indent=1))  # last: marks a finished save
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target

    def save_model(self, folder: Path) -> None:
        from safetensors.torch import save_file

        folder, model = Path(folder), self.unwrapped
        model.policy.save_pretrained(folder)
        save_file({k: v.contiguous() for k, v in model.value_head.state_dict().items()}, folder / "value_head.safetensors")
        self.tokenizer.save_pretrained(folder)

    def load_checkpoint(self, folder: str) -> None:
        from peft.utils import set_peft_model_state_dict
        from safetensors.torch import load_file

        folder = Path(folder)
        model = self.unwrapped
        set_peft_model_state_dict(model.policy, load_file(folder / "adapter_model.safetensors"))
        model.value_head.load_state_dict(load_file(folder / "value_head.safetensors"))
        self.optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location=self.accelerator.device))
        state = json.loads((folder / "trainer_state.json").read_text())
        self.step, self.kl_ctl.value, self.log_history = state["global_step"], state["kl_coef"], state["log_history"]

