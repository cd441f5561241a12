"""trl's OnlineDPOTrainer with a held-out evaluation that samples and scores, so the online-RL guard can run on it.

trl 1.16's OnlineDPOTrainer has no evaluation of its own: `evaluate` falls through to transformers' loop, which
wants a loss from labelled batches that prompt rows do not have. Ours samples two answers per held-out prompt with
trl's own sampling (`_generate`: the training's temperature, top-p, max_new_tokens) and scores them with trl's own
reward path (`_calculate_rewards_from_functions`: the run's reward functions / reward model and `reward_weights`),
then reports `eval_reward` / `eval_reward_std` as GRPO's evaluate does. That is what rl/guard.HeldOutRewardGuard
reads, so guarded_train (before / after, keep_policy: best, the collapse guard) works unchanged.
"""

from __future__ import annotations

import warnings

import torch
from trl.data_utils import is_conversational
from trl.import_utils import TRLExperimentalWarning

with warnings.catch_warnings():
    warnings.simplefilter("ignore", TRLExperimentalWarning)
    from trl.experimental.online_dpo import OnlineDPOTrainer

ANSWERS_PER_PROMPT = 2  # OnlineDPOTrainer samples a pair per prompt; the evaluation samples the same


class ScoredOnlineDPOTrainer(OnlineDPOTrainer):
    """OnlineDPOTrainer whose `evaluate` samples and scores the held-out prompts (the one thing changed)."""

    @torch.no_grad()
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict:
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        step = self.args.per_device_eval_batch_size
        scores = []
        for start in range(0, len(dataset), step):
            prompts = dataset[start:start + step]["prompt"]
            completion_ids = self._generate(self.model, prompts)[2]
            completions = self.processing_class.batch_decode(completion_ids, skip_special_tokens=True)
            if is_conversational({"prompt": prompts[0]}):
                completions = [[{"role": "assistant", "content": c}] for c in completions]
            scores.append(self._calculate_rewards_from_functions(
                prompts=ANSWERS_PER_PROMPT * prompts, completions=completions,
                completion_ids_list=completion_ids.tolist()).float().cpu())
        rewards = torch.cat(scores)
        metrics = {f"{metric_key_prefix}_reward": rewards.mean().item(),
                   f"{metric_key_prefix}_reward_std": rewards.std().item() if rewards.numel() > 1 else 0.0}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics
