"""Our PPO: the math against hand-computed values, a real learning test on a tiny model, resume, bad rewards."""

from __future__ import annotations

import collections
import json

import pytest
import torch

from conftest import PRECISIONS, run_recipe, write_config, write_jsonl
from finetune_kit.errors import UserError
from finetune_kit.rl.ppo import (AdaptiveKLController, PolicyWithValue, PPOTrainer, answer_logprobs, compute_gae,
                                 kl_penalised_rewards, policy_loss, value_loss)
from finetune_kit.rl.rewards import RewardSources, check_scores

# Trains with the recipes' default precision: `make test` runs this file under both bf16 decisions.
pytestmark = pytest.mark.precision

WORDS = ["apple", "river", "stone", "cloud", "maple", "tiger", "lemon", "piano"]


def test_gae_matches_a_hand_computed_trajectory():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 99.0]])
    values = torch.tensor([[0.5, 0.6, 0.7], [0.5, 0.6, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])  # second answer ends one token early
    adv, ret = compute_gae(rewards, values, mask, gamma=1.0, lam=0.5)
    # delta_t = r_t + gamma V_{t+1} - V_t; A_t = delta_t + gamma lam A_{t+1}; padding counts as 0
    assert adv[0].tolist() == pytest.approx([0.225, 0.25, 0.3])
    assert ret[0].tolist() == pytest.approx([0.725, 0.85, 1.0])
    assert adv[1].tolist() == pytest.approx([0.3, 0.4, 0.0])
    # lam = 1: advantages are discounted returns minus values
    adv, _ = compute_gae(rewards[:1], values[:1], mask[:1], gamma=0.9, lam=1.0)
    assert adv[0].tolist() == pytest.approx([0.81 - 0.5, 0.9 - 0.6, 1.0 - 0.7])


def test_clipped_policy_loss_matches_hand_values():
    old = torch.zeros(1, 3)
    new = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))
    adv = torch.tensor([[1.0, -1.0, 1.0]])
    loss, clip_frac = policy_loss(new, old, adv, torch.ones(1, 3), cliprange=0.2)
    # token 0: max(-1.5, -1.2) = -1.2 (clipped); token 1: max(0.5, 0.8) = 0.8 (clipped); token 2: -1.1 (inside)
    assert loss.item() == pytest.approx((-1.2 + 0.8 - 1.1) / 3)
    assert clip_frac.item() == pytest.approx(2 / 3)
    masked, _ = policy_loss(new, old, adv, torch.tensor([[1.0, 1.0, 0.0]]), cliprange=0.2)
    assert masked.item() == pytest.approx((-1.2 + 0.8) / 2)


def test_clipped_value_loss_matches_hand_values():
    loss, frac = value_loss(torch.tensor([[1.0, 1.1]]), torch.tensor([[0.5, 1.0]]), torch.tensor([[2.0, 1.0]]),
                            torch.ones(1, 2), cliprange_value=0.2)
    # token 0: clipped value 0.7 -> max((1-2)^2, (0.7-2)^2) = 1.69; token 1: inside the clip, (1.1-1)^2 = 0.01
    assert loss.item() == pytest.approx(0.5 * (1.69 + 0.01) / 2)
    assert frac.item() == pytest.approx(0.5)


def test_kl_penalty_is_per_token_and_the_score_lands_on_the_last_real_token():
    logprobs = torch.tensor([[-1.0, -1.0, -1.0, 0.0]])
    ref = torch.tensor([[-2.0, -1.0, -1.5, -7.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    rewards, kl = kl_penalised_rewards(torch.tensor([2.0]), logprobs, ref, mask, kl_coef=0.1)
    assert kl[0].tolist() == pytest.approx([1.0, 0.0, 0.5, 0.0])
    assert rewards[0].tolist() == pytest.approx([-0.1, 0.0, 2.0 - 0.05, 0.0])


def test_adaptive_kl_controller_moves_towards_the_target():
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=100)
    ctl.update(current_kl=12.0, n_answers=10)  # error clipped to +0.2: 0.1 * (1 + 0.2 * 10 / 100)
    assert ctl.value == pytest.approx(0.102)
    ctl.update(current_kl=3.0, n_answers=10)  # error -0.5 clipped to -0.2
    assert ctl.value == pytest.approx(0.102 * 0.98)
    from finetune_kit.config_decoder import PPOArguments

    defaults = PPOArguments()  # issue #25: with the default horizon the coefficient reacts within a short run
    reacting = AdaptiveKLController(0.05, target=defaults.target_kl, horizon=defaults.kl_horizon)
    for _ in range(10):
        reacting.update(current_kl=2 * defaults.target_kl, n_answers=8)
    assert reacting.value > 0.05 * 1.2
    fixed = AdaptiveKLController(0.1, target=None, horizon=100)
    fixed.update(50.0, 10)
    assert fixed.value == 0.1


def test_check_scores_rejects_wrong_counts_and_non_finite_values():
    assert check_scores([1, 2.5], "f", 2).tolist() == [1.0, 2.5]
    with pytest.raises(UserError, match="returned 1 values for 2 answers"):
        check_scores([1.0], "f", 2)
    with pytest.raises(UserError, match=r"reward f returned a non-finite value \(nan\) for answer 1"):
        check_scores([0.0, float("nan")], "f", 2)
    with pytest.raises(UserError, match="not numbers"):
        check_scores(["good", "bad"], "f", 2)


# --- a tiny policy ---------------------------------------------------------------------------------------------


def tiny_policy(tokenizer, seed: int = 0):
    """A 2-layer Llama with a wide init (peaked next-token distributions, so a target token is sampled at all)."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True, initializer_range=1.0,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    base = LlamaForCausalLM(config)
    return get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.0))


def make_trainer(tokenizer, reward, tmp_path, seed=0, bf16=False, **ppo_overrides):
    from accelerate import Accelerator
    from transformers import TrainingArguments

    from finetune_kit.config_decoder import PPOArguments

    prompts = [[{"role": "user", "content": f"Say {w}"}] for w in WORDS]
    ids = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
           for p in prompts]
    args = TrainingArguments(output_dir=str(tmp_path), learning_rate=3e-3, seed=seed, report_to="none", use_cpu=True)
    ppo = PPOArguments(**{"rollout_batch_size": 8, "mini_batch_size": 4, "max_new_tokens": 6, "kl_coef": 0.01,
                          **ppo_overrides})
    torch.manual_seed(seed)
    return PPOTrainer(PolicyWithValue(tiny_policy(tokenizer)), tokenizer, prompts, ids, reward, ppo, args,
                      Accelerator(cpu=True, mixed_precision="bf16" if bf16 else "no"))


def test_rollout_log_probs_match_a_fresh_forward_so_the_first_ratio_is_one(tokenizer, tmp_path):
    trainer = make_trainer(tokenizer, lambda p, texts: torch.zeros(len(texts)), tmp_path)
    r = trainer.rollout(trainer.prompts, trainer.prompt_ids, seed=3)
    width = r.input_ids.size(1) - r.mask.size(1)
    with torch.no_grad():
        logits, _ = trainer.model(r.input_ids[:4], r.attention_mask[:4])  # a minibatch, as in the update
        fresh, _ = answer_logprobs(logits, r.input_ids[:4], width, 1.0)
    assert torch.allclose(fresh * r.mask[:4], r.logprobs[:4] * r.mask[:4], atol=1e-5)
    assert torch.allclose(r.logprobs, r.ref_logprobs)  # adapters start at zero: policy == reference


def test_under_bf16_autocast_log_probs_and_values_stay_fp32(tokenizer, tmp_path):
    """Issue #25: the LM head and the value head run in fp32 under bf16 autocast, so the log-probabilities behind
    the ratio and the KL carry no bf16 rounding of the logits."""
    trainer = make_trainer(tokenizer, lambda p, texts: torch.zeros(len(texts)), tmp_path, bf16=True)
    r = trainer.rollout(trainer.prompts, trainer.prompt_ids, seed=3)
    with torch.no_grad(), trainer.accelerator.autocast():
        logits, values = trainer.model(r.input_ids, r.attention_mask)
        hidden = trainer.unwrapped.policy(input_ids=r.input_ids, attention_mask=r.attention_mask,
                                          output_hidden_states=True).hidden_states[-1]
        head = trainer.unwrapped.policy.get_output_embeddings().weight
        assert torch.nn.functional.linear(hidden, head).dtype == torch.bfloat16  # autocast is on: a plain head's
    assert logits.dtype == torch.float32 and values.dtype == torch.float32  # matmul would round; ours do not
    assert torch.allclose(logits, hidden.float() @ head.T, atol=1e-4)


def toy_target(tokenizer, tmp_path) -> str:
    """A first token that the initial tiny policy picks about 1 time in 6."""
    probe = make_trainer(tokenizer, lambda p, texts: torch.zeros(len(texts)), tmp_path)
    firsts = collections.Counter()
    for seed in range(4):
        r = probe.rollout(probe.prompts, probe.prompt_ids, seed=100 + seed)
        firsts.update(r.input_ids[:, r.input_ids.size(1) - r.mask.size(1)].tolist())
    return tokenizer.decode([min(firsts, key=lambda t: abs(firsts[t] / 32 - 1 / 6))])


@pytest.mark.parametrize("bf16", PRECISIONS)
def test_ppo_raises_a_toy_reward_in_either_precision(tokenizer, tmp_path, bf16):
    target = toy_target(tokenizer, tmp_path)
    trainer = make_trainer(tokenizer, lambda p, texts: torch.tensor([float(t.startswith(target)) for t in texts]),
                           tmp_path, bf16=bf16)
    before = trainer.evaluate(trainer.prompts * 2, trainer.prompt_ids * 2, seed=7)["reward_mean"]
    for _ in range(25):
        log = trainer.train_step()
    after = trainer.evaluate(trainer.prompts * 2, trainer.prompt_ids * 2, seed=7)["reward_mean"]
    assert after >= before + 0.4, (target, bf16, before, after)
    assert log["kl"] > 0 and torch.isfinite(torch.tensor(log["kl"]))


def test_the_kl_early_stop_ends_a_steps_updates(tokenizer, tmp_path):
    reward = lambda p, texts: torch.tensor([len(t) / 10 for t in texts])  # noqa: E731
    free = make_trainer(tokenizer, reward, tmp_path, ppo_epochs=4, early_stop_kl=0.0).train_step()
    assert free["updates"] == free["planned_updates"] == 8
    stopped = make_trainer(tokenizer, reward, tmp_path, ppo_epochs=4, early_stop_kl=1e-4).train_step()
    assert 1 <= stopped["updates"] < 8  # the first update runs (no move yet), a later one crosses the threshold
    assert stopped["approx_kl"] > 0


def test_a_forced_collapse_is_caught_and_the_pre_collapse_policy_restored(tokenizer, tmp_path):
    from finetune_kit.rl.guard import BestPolicy

    target = toy_target(tokenizer, tmp_path)
    trainer = make_trainer(tokenizer, lambda p, texts: torch.tensor([float(t.startswith(target)) for t in texts]),
                           tmp_path)
    guard = BestPolicy(trainer)

    def score():
        return trainer.evaluate(trainer.prompts * 2, trainer.prompt_ids * 2, seed=11)

    assert guard.offer(0, score()) is None
    for step in range(1, 26):
        trainer.train_step()
        if step % 5 == 0:
            assert guard.offer(step, score()) is None  # learning: no alarm
    best = guard.result["reward_mean"]
    for group in trainer.optimizer.param_groups:
        group["lr"] = 3.0  # a learning rate far too large: the policy collapses
    reasons = []
    for _ in range(3):
        trainer.train_step()
        reasons.append(guard.offer(trainer.step, score()))
    assert any(reasons), (best, [r for r in reasons])
    collapsed = score()["reward_mean"]
    guard.restore()
    restored = score()
    assert collapsed < best and restored["reward_mean"] == pytest.approx(best)  # same seed: the best's own answers
    assert restored["answers"] == guard.result["answers"]


def test_resumed_ppo_repeats_the_uninterrupted_steps(tokenizer, tmp_path):
    def reward(prompts, texts):
        return torch.tensor([len(t) / 40 for t in texts])

    full = make_trainer(tokenizer, reward, tmp_path / "a")
    full_logs = [full.train_step() for _ in range(4)]
    first = make_trainer(tokenizer, reward, tmp_path / "b")
    for _ in range(2):
        first.train_step()
    checkpoint = first.save_checkpoint(str(tmp_path / "b"))
    assert checkpoint.name == "checkpoint-2" and not list((tmp_path / "b").glob(".tmp-*"))
    resumed = make_trainer(tokenizer, reward, tmp_path / "c", seed=0)
    resumed.load_checkpoint(str(checkpoint))
    resumed_logs = [resumed.train_step() for _ in range(2)]
    for a, b in zip(full_logs[2:], resumed_logs):
        assert a["step"] == b["step"]
        for key in ("reward_mean", "kl", "policy_loss", "value_loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), key


# --- the recipe ------------------------------------------------------------------------------------------------


REWARD_FILE = """
def length(prompts, answers):
    return [len(a) / 20 for a in answers]

def broken(prompts, answers):
    raise KeyError("score")

def nan(prompts, answers):
    return [float("nan")] * len(answers)
"""


@pytest.fixture
def ppo_setup(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Say {w}"} for w in WORDS * 2])
    (tmp_path / "rewards.py").write_text(REWARD_FILE)
    base = {"model_name_or_path": str(tiny_model_dir), "dataset_name": str(data), "use_peft": True, "lora_r": 4,
            "learning_rate": 1e-3, "max_steps": 4, "rollout_batch_size": 4, "mini_batch_size": 2,
            "max_new_tokens": 4, "eval_split_ratio": 0.25, "save_steps": 2, "logging_steps": 1, "report_to": "none",
            "reward_functions": [f"{tmp_path / 'rewards.py'}:length"], "output_dir": str(tmp_path / "out")}
    return tmp_path, base


def test_ppo_recipe_runs_saves_and_reports_before_and_after(ppo_setup):
    tmp_path, base = ppo_setup
    metrics = run_recipe("ppo", ["--config", write_config(tmp_path / "c.yaml", base)])
    out = tmp_path / "out"
    assert {"before", "after"} <= set(metrics) and len(metrics["after"]["scores"]) == 4
    assert (out / "adapter_model.safetensors").is_file() and (out / "value_head.safetensors").is_file()
    assert (out / "checkpoint-2" / "trainer_state.json").is_file()
    info = json.loads((out / "run_info.json").read_text())
    assert info["recipe"] == "ppo" and len(json.loads((out / "log_history.json").read_text())) == 4

    from finetune_kit.models import load_for_inference  # the policy loads back as a chat model
    model, _ = load_for_inference(str(out))
    assert type(model.get_base_model()).__name__ == "LlamaForCausalLM"


def test_the_saved_policy_is_the_best_scored_step(ppo_setup):
    """keep_policy: best (the default): the run folder holds the adapter of the step with the highest held-out
    reward among those scored, and says which (a decision in run_info.json)."""
    from safetensors.torch import load_file

    tmp_path, base = ppo_setup
    cfg = {**base, "learning_rate": 0.3, "guard_eval_steps": 1, "save_steps": 1, "max_steps": 4, "kl_ceiling": 0}
    metrics = run_recipe("ppo", ["--config", write_config(tmp_path / "c.yaml", cfg)])
    guard, out = metrics["guard"], tmp_path / "out"
    scores = {int(k): v for k, v in guard["held_out_reward_by_step"].items()}
    assert sorted(scores)[0] == 0 and guard["best_step"] == max(scores, key=lambda k: (scores[k], -k))
    saved = load_file(out / "adapter_model.safetensors")
    if guard["best_step"] == 0:  # the starting policy: LoRA's B matrices still zero
        assert all(not t.any() for k, t in saved.items() if "lora_B" in k)
    else:
        kept = load_file(out / f"checkpoint-{guard['best_step']}" / "adapter_model.safetensors")
        assert all(torch.equal(saved[k], kept[k]) for k in kept)
    decisions = json.loads((out / "run_info.json").read_text())["decisions"]
    assert (decisions.get("policy_step", {}).get("value") == guard["best_step"]) == (guard["best_step"] != 4)


@pytest.mark.parametrize("function, message", [("broken", "raised KeyError: 'score'"),
                                               ("nan", "non-finite value (nan)"),
                                               ("missing", "has no function 'missing'")])
def test_bad_reward_functions_are_clear_errors(ppo_setup, capsys, function, message):
    from finetune_kit.errors import run_cli

    tmp_path, base = ppo_setup
    cfg = {**base, "reward_functions": [f"{tmp_path / 'rewards.py'}:{function}"]}
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda _: run_recipe("ppo", ["--config", write_config(tmp_path / "c.yaml", cfg)]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_reward_model_must_have_one_score(tmp_path, tiny_bert_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    two_way = tmp_path / "two-way"
    AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=2).save_pretrained(two_way)
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(two_way)
    with pytest.raises(UserError, match="2-way head; a reward model outputs a single score"):
        RewardSources(str(two_way), None)
    with pytest.raises(UserError, match="not a sequence classifier"):
        RewardSources(str(tiny_bert_dir), None)


def test_shipped_example_reward_functions_load_by_path():
    from conftest import ROOT
    from finetune_kit.rl.rewards import load_reward_function

    sure = load_reward_function(f"{ROOT / 'examples' / 'reward_functions.py'}:opens_with_sure")
    assert sure(["q", "q"], [" Sure! yes", "Okay. yes"]) == [1.0, 0.0]
    brevity = load_reward_function(f"{ROOT / 'examples' / 'reward_functions.py'}:brevity")
    assert brevity(["q"] * 2, ["word " * 50, "word"]) == pytest.approx([1.0, 0.02])
    with pytest.raises(UserError, match="write it as module:function"):
        load_reward_function("examples/reward_functions.py")


def test_a_reward_function_is_found_before_anything_runs_or_named(tmp_path, monkeypatch):
    from finetune_kit.rl.reward_functions import locate_reward_function, require_reward_sources

    assert locate_reward_function("math:fsum") == ("math", "fsum")  # found, nothing imported yet
    with pytest.raises(UserError, match="no module named nosuch.mod on the Python path"):
        locate_reward_function("nosuch.mod:f")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "__init__.py").write_text("raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UserError, match=r"importing broken\.rewards failed \(RuntimeError: boom\)"):
        locate_reward_function("broken.rewards:f")
    with pytest.raises(UserError, match="reward_model: model path not found: .*no-rm"):
        require_reward_sources(str(tmp_path / "no-rm"), ["math:fsum"])
