"""GRPO's guards (issue #25): the held-out reward guard on trl's trainer, the KL ceiling, keep_policy: best."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import TrainerControl, TrainerState

from conftest import run_recipe, write_config, write_jsonl
from finetune_kit.rl.guard import HeldOutRewardGuard, keep_policy_decision

WORDS = ["apple", "river", "stone", "cloud", "maple", "tiger", "lemon", "piano"]


def lora_model(tokenizer):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    return get_peft_model(LlamaForCausalLM(config), LoraConfig(r=4, target_modules="all-linear"))


def evaluated(guard, step: int, mean: float, std: float = 0.5) -> TrainerControl:
    control = TrainerControl()
    guard.on_evaluate(None, TrainerState(global_step=step), control,
                      metrics={"eval_reward": mean, "eval_reward_std": std, "eval_loss": 0.0})
    return control


def move(model, by: float) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(by)


def lora_weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def test_a_clear_fall_stops_the_run_and_the_best_step_is_restored(tokenizer):
    model = lora_model(tokenizer)
    guard = HeldOutRewardGuard(model, every=4, answers_per_eval=64, kl_ceiling=0.0)
    assert not evaluated(guard, 0, 0.20).should_training_stop
    move(model, 0.1)
    assert not evaluated(guard, 4, 0.50).should_training_stop  # better: the new best
    best = lora_weights(model)
    move(model, 5.0)
    # 0.45: within two standard errors of the difference (0.5 / 8 each: margin 0.18), noise, not a fall
    assert not evaluated(guard, 8, 0.45).should_training_stop
    control = evaluated(guard, 12, 0.10)
    assert control.should_training_stop and "step 12" in guard.stopped and "0.500 at step 4" in guard.stopped
    decision = guard.best.keep_best(12, guard.scores)
    assert decision.key == "policy_step" and decision.value == 4
    assert all(torch.equal(best[n], p) for n, p in lora_weights(model).items())
    assert guard.summary() == {"held_out_reward_by_step": {0: 0.2, 4: 0.5, 8: 0.45, 12: 0.1}, "best_step": 4,
                               "stopped": guard.stopped}


def test_the_best_step_being_the_last_changes_nothing(tokenizer):
    model = lora_model(tokenizer)
    guard = HeldOutRewardGuard(model, every=2, answers_per_eval=16, kl_ceiling=0.0)
    evaluated(guard, 0, 0.1)
    move(model, 0.1)
    evaluated(guard, 2, 0.9)
    last = lora_weights(model)
    assert guard.best.keep_best(2, guard.scores) is None
    assert all(torch.equal(last[n], p) for n, p in lora_weights(model).items())


def test_the_kl_ceiling_is_per_answer_from_trls_per_token_kl(tokenizer):
    guard = HeldOutRewardGuard(lora_model(tokenizer), every=0, answers_per_eval=0, kl_ceiling=20.0)
    control = TrainerControl()
    guard.on_log(None, TrainerState(global_step=3), control, logs={"kl": 0.3, "completions/mean_length": 50.0})
    assert not control.should_training_stop  # 15 nats per answer
    guard.on_log(None, TrainerState(global_step=4), control, logs={"kl": 0.5, "completions/mean_length": 50.0})
    assert control.should_training_stop and "25.00 nats per answer at step 4" in guard.stopped


def test_evaluations_are_asked_for_every_n_steps_and_at_the_last():
    guard = HeldOutRewardGuard(torch.nn.Linear(2, 2), every=4, answers_per_eval=8, kl_ceiling=0.0)
    asked = []
    for step in range(1, 11):
        control = TrainerControl()
        guard.on_step_end(None, TrainerState(global_step=step, max_steps=10), control)
        asked += [step] if control.should_evaluate else []
    assert asked == [4, 8, 10]


def test_keep_policy_left_unset_is_decided_by_the_held_out_prompts():
    assert keep_policy_decision(None, True).value == "best"
    assert keep_policy_decision(None, False).value == "last"
    assert keep_policy_decision("last", True) is None  # the user's choice stands


@pytest.fixture
def grpo_setup(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Say {w}"} for w in WORDS * 2])
    (tmp_path / "rewards.py").write_text("def length(prompts, answers):\n    return [len(a) / 20 for a in answers]\n")
    base = {"model_name_or_path": str(tiny_model_dir), "dataset_name": str(data), "use_peft": True, "lora_r": 4,
            "learning_rate": 0.3, "max_steps": 4, "per_device_train_batch_size": 4, "per_device_eval_batch_size": 4,
            "num_generations": 4, "max_completion_length": 6, "eval_split_ratio": 0.25, "guard_eval_steps": 1,
            "save_steps": 1, "logging_steps": 1, "report_to": "none", "disable_tqdm": True,
            "reward_functions": [f"{tmp_path / 'rewards.py'}:length"], "output_dir": str(tmp_path / "out")}
    return tmp_path, base


# grpo runs again under the other bf16 decision in `make test` (the fp32 head; rloo's is the same function)
@pytest.mark.parametrize("recipe", [pytest.param("grpo", marks=pytest.mark.precision), "rloo"])
def test_scores_before_and_after_and_saves_the_best_scored_step(grpo_setup, recipe):
    from safetensors.torch import load_file

    tmp_path, base = grpo_setup
    metrics = run_recipe(recipe, ["--config", write_config(tmp_path / "c.yaml", base)])
    assert "eval_reward" in metrics["before"] and "eval_reward" in metrics["after"]
    guard, out = metrics["guard"], tmp_path / "out"
    scores = {int(k): v for k, v in guard["held_out_reward_by_step"].items()}
    last = max(scores)  # 4, or earlier where the guard stopped a run that fell (lr 0.3 is large)
    assert sorted(scores) == list(range(last + 1)) and (last == 4 or guard["stopped"])
    assert guard["best_step"] == max(scores, key=lambda k: (scores[k], -k))
    saved = load_file(out / "adapter_model.safetensors")
    if guard["best_step"] == 0:  # the starting policy: LoRA's B matrices still zero
        assert all(not t.any() for k, t in saved.items() if "lora_B" in k)
    else:
        kept = load_file(out / f"checkpoint-{guard['best_step']}" / "adapter_model.safetensors")
        assert all(torch.equal(saved[k], kept[k]) for k in kept)
    decisions = json.loads((out / "run_info.json").read_text())["decisions"]
    assert decisions["keep_policy"]["value"] == "best"
    assert (decisions.get("policy_step", {}).get("value") == guard["best_step"]) == (guard["best_step"] != last)
    assert ("fused_lm_head_fp32" in decisions) == decisions["bf16"]["value"]


def test_keep_policy_best_without_held_out_prompts_is_refused(grpo_setup):
    from finetune_kit.errors import UserError

    tmp_path, base = grpo_setup
    cfg = {k: v for k, v in base.items() if k != "eval_split_ratio"}
    with pytest.raises(UserError, match="keep_policy: best scores held-out prompts: set eval_split_ratio"):
        run_recipe("grpo", ["--config", write_config(tmp_path / "c.yaml", {**cfg, "keep_policy": "best"})])
    assert not (tmp_path / "out").exists()


def test_under_half_precision_log_probs_come_from_an_fp32_lm_head(tokenizer):
    """Issue #25 for GRPO / RLOO: trl scores log-probabilities through a fused LM head; under bf16 autocast its matmul
    rounds them (by ~0.03 nats); the recipes wrap it again in fp32, and the log-probabilities are an fp32 matmul's."""
    from types import SimpleNamespace

    from trl.trainer.utils import add_fused_lm_head

    from finetune_kit.rl.online import fused_head_in_fp32

    peft_model = lora_model(tokenizer)
    model = peft_model.get_base_model()
    add_fused_lm_head(model, outputs=("log_probs", "entropy"))  # what GRPOTrainer / RLOOTrainer do
    ids = torch.randint(0, len(tokenizer), (2, 12))

    def log_probs():
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            fused = model(input_ids=ids, labels=ids, fused_lm_head=True).log_probs
            hidden = model.model(input_ids=ids).last_hidden_state
        reference = torch.log_softmax(hidden.float() @ model.lm_head.weight.T, -1)[:, :-1]
        return fused[:, :reference.size(1)], reference.gather(-1, ids[:, 1:, None]).squeeze(-1)

    fused, reference = log_probs()
    assert not torch.allclose(fused.float(), reference, atol=1e-4)  # trl's head under autocast: bf16 rounding
    fp32 = SimpleNamespace(bf16=False, fp16=False, temperature=1.0)
    assert fused_head_in_fp32(SimpleNamespace(args=fp32, model=peft_model, ref_model=None)) is None
    half = SimpleNamespace(bf16=True, fp16=False, temperature=1.0)
    assert fused_head_in_fp32(SimpleNamespace(args=half, model=peft_model, ref_model=None)).value is True
    fused, reference = log_probs()
    assert fused.dtype == torch.float32 and torch.allclose(fused, reference, atol=1e-4)


# --- the `make grpo` demo: questions, the judge and the shipped reward functions --------------------------------


def test_demo_question_sets_are_disjoint_and_cover_every_sum_and_difference(tmp_path):
    from finetune_kit import demo_grpo

    sets = demo_grpo.questions()
    assert {k: len(v) for k, v in sets.items()} == {"validation": 32, "test": 64, "prompts": 126}
    every = [q for v in sets.values() for q in v]
    assert len(set(every)) == len(every) == 12 * 12 + 12 * 13 // 2
    assert demo_grpo.questions() == sets  # seeded
    counts = demo_grpo.make_dataset(tmp_path)
    row = json.loads((tmp_path / "test.jsonl").read_text().splitlines()[0])
    question = row["prompt"][0]["content"][len("What is "):].split("?")[0]
    assert counts["test"] == 64 and demo_grpo.truth(row["prompt"]) == eval(question)


@pytest.mark.parametrize("reply, exact, form, value", [
    ("7 + 12 = 19\nAnswer: 19", True, True, True),
    ("Answer: 19.", True, True, True),
    ("Answer: 12", False, True, False),         # the format, copying the example's number
    ("The answer is 19.", False, False, True),  # right, not in the asked format
    ("Answer: 19 is my guess", False, False, True),  # the line must close the reply
    ("I cannot do sums.", False, False, False),
])
def test_the_demo_judge_on_hand_written_replies(reply, exact, form, value):
    from finetune_kit.demo_grpo import judge, prompt

    assert judge(prompt(7, "+", 12), reply) == {"exact": exact, "format": form, "value": value}
    assert judge("What is 20 - 1?", reply)["exact"] is (reply.startswith("7 + 12") or reply == "Answer: 19.")


def test_the_shipped_reward_functions_pay_the_right_number_above_the_format_and_name_a_bad_prompt():
    from finetune_kit.demo_grpo import prompt
    from finetune_kit.errors import UserError
    from finetune_kit.rl.rewards import RewardSources

    rewards = RewardSources(None, ["examples/arithmetic_rewards.py:format_reward",
                                   "examples/arithmetic_rewards.py:correct_reward"])
    scores = rewards([prompt(3, "-", 5)] * 3, ["Answer: -2", "Answer: 2", "-2"])
    assert scores.tolist() == [1.25, 0.25, 1.0]  # right and formatted; formatted, wrong; right, unformatted
    with pytest.raises(UserError, match=r"correct_reward raised ValueError: no 'What is a \+ b\?'"):
        rewards(["Tell me a joke"], ["Answer: 3"])


# --- grpo_preset: a published variant's trl options set together, each a recorded decision ----------------------

# What each preset sets, as the README's table says (written out here, not read from finetune_kit/rl/presets.py).
PRESET_TABLE = {
    "dapo": {"loss_type": "dapo", "epsilon": 0.2, "epsilon_high": 0.28, "mask_truncated_completions": True,
             "beta": 0.0},
    "dr_grpo": {"loss_type": "dr_grpo", "scale_rewards": "none", "beta": 0.0},
    "gspo": {"importance_sampling_level": "sequence", "loss_type": "grpo", "epsilon": 3e-4, "epsilon_high": 4e-4,
             "beta": 0.0},
    "cispo": {"loss_type": "cispo", "epsilon_high": 5.0},
    "grpo": {"loss_type": "grpo", "scale_rewards": "group", "importance_sampling_level": "token", "beta": 0.04},
}


def preset_applied(tmp_path, yaml: dict, cli: tuple = ()):
    """The grpo recipe's config after its preset decisions, as its main() makes them (parse, then the preset)."""
    from finetune_kit.config import parse_config
    from finetune_kit.config_decoder import GRPORecipeConfig
    from finetune_kit.decisions import Decisions
    from finetune_kit.rl.presets import preset_decisions

    argv = ["--config", write_config(tmp_path / "g.yaml", {"dataset_name": "d.jsonl", "output_dir": str(tmp_path),
                                                           "reward_functions": ["m:f"], **yaml}), *cli]
    cfg = parse_config(GRPORecipeConfig, argv)
    decisions = Decisions(cfg, argv)
    decisions.add(cfg, *preset_decisions(cfg.preset.grpo_preset, decisions.user))
    return cfg.training, {d.key: d for d in decisions.made if d.why.startswith("grpo_preset")}


@pytest.mark.parametrize("preset", PRESET_TABLE)
def test_a_preset_sets_exactly_its_documented_options(tmp_path, preset):
    plain, none_decided = preset_applied(tmp_path, {})
    args, decided = preset_applied(tmp_path, {"grpo_preset": preset})
    table = PRESET_TABLE[preset]
    assert {key: getattr(args, key) for key in table} == table
    assert set(decided) == set(table) and all(preset in d.why for d in decided.values())
    before = plain.to_dict()
    changed = {k for k, v in args.to_dict().items() if v != before[k]}
    assert changed <= set(table) and not none_decided  # nothing else moves; no preset, no preset decisions


@pytest.mark.parametrize("where", ["yaml", "cli"])
def test_a_key_set_by_hand_wins_over_the_preset(tmp_path, where):
    yaml, cli = ({"grpo_preset": "dapo", "epsilon_high": 0.35}, ()) if where == "yaml" else \
        ({"grpo_preset": "dapo"}, ("--epsilon_high", "0.35"))
    args, decided = preset_applied(tmp_path, yaml, cli)
    assert args.epsilon_high == 0.35 and "epsilon_high" not in decided
    assert args.loss_type == "dapo" and args.mask_truncated_completions is True and set(decided) == \
        set(PRESET_TABLE["dapo"]) - {"epsilon_high"}


def test_an_unknown_preset_is_a_one_line_config_error(tmp_path, capsys):
    from finetune_kit.cli import main

    config = write_config(tmp_path / "g.yaml", {"dataset_name": "d.jsonl", "output_dir": str(tmp_path / "o"),
                                                "reward_functions": ["m:f"], "grpo_preset": "ppo"})
    with pytest.raises(SystemExit) as done:
        main(["train", "grpo", "--config", config])
    err = capsys.readouterr().err.strip()
    assert done.value.code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("error: config key 'grpo_preset'") and "invalid choice: 'ppo'" in err and "'dapo'" in err
    with pytest.raises(SystemExit):  # rloo has no presets: trl's RLOOConfig has none of the options they set
        main(["train", "rloo", "--config", config])
    assert "unknown config key 'grpo_preset'" in capsys.readouterr().err


def test_the_recipe_hands_the_preset_to_trl_and_records_it(grpo_setup):
    """grpo_preset: grpo (DeepSeekMath) turns the KL term on (beta 0.04): trl loads a reference and logs the KL;
    scale_rewards set by hand stays; run_info.json says which value came from the preset."""
    import yaml

    tmp_path, base = grpo_setup
    cfg = {**{k: v for k, v in base.items() if k not in ("eval_split_ratio", "guard_eval_steps", "save_steps")},
           "max_steps": 1, "grpo_preset": "grpo", "scale_rewards": "batch"}
    run_recipe("grpo", ["--config", write_config(tmp_path / "c.yaml", cfg)])
    out = tmp_path / "out"
    decisions = json.loads((out / "run_info.json").read_text())["decisions"]
    assert {k: v["value"] for k, v in decisions.items() if "grpo_preset grpo" in v["why"]} == \
        {k: v for k, v in PRESET_TABLE["grpo"].items() if k != "scale_rewards"}
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["scale_rewards"] == "batch" and resolved["beta"] == 0.04 and resolved["loss_type"] == "grpo"
    assert any("kl" in e for e in json.loads((out / "log_history.json").read_text()))  # beta reached trl
