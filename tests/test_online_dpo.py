"""Online DPO (trl's OnlineDPOTrainer): a Python judge's held-out reward rises, the sampled pairs' DPO loss falls, the
guard reads our held-out evaluation and trl's KL, and a broken judge is one named error line, exit 2."""

from __future__ import annotations

import json
import math
import subprocess

import pytest
from conftest import ROOT, run_recipe, write_config, write_jsonl
from transformers import TrainerControl, TrainerState

from finetune_kit.rl.guard import HeldOutRewardGuard

WORDS = ["apple", "river", "stone", "cloud", "maple", "tiger", "lemon", "piano"]

# A random-weight model samples almost uniformly over 49k tokens: a judge of words or lengths gives it nothing it
# can learn in a few steps. This judge scores an answer by the mean of its tokens' first embedding coordinate in the
# tiny model itself: dense (no ties), and one direction of the hidden state raises it, so DPO on a few dozen sampled
# pairs can learn it. Checkable: a fixed function of the answer's text.
JUDGE = '''
from safetensors.torch import load_file
from transformers import AutoTokenizer

_tokenizer = AutoTokenizer.from_pretrained({model!r})
_side = load_file({weights!r})["model.embed_tokens.weight"][:, 0].tolist()


def side(prompts, answers):
    ids = [_tokenizer(a, add_special_tokens=False)["input_ids"] or [0] for a in answers]
    return [sum(_side[i] for i in row) / len(row) for row in ids]


def short(prompts, answers):
    return [0.0] * (len(answers) - 1)


def raises(prompts, answers):
    raise KeyError("score")
'''


def heldout_dpo_loss(model_dir, adapter_dir, judge_file, beta=0.1, samples=8) -> float:
    """The trained policy's DPO loss against its reference (adapter off), on pairs the reference samples for prompts
    of verbs the training never saw, each pair ordered by the judge: log 2 before training, below it where the
    learnt preference generalises. fp32, seeded: the same pairs for any policy."""
    import importlib.util

    import torch
    import torch.nn.functional as F
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.spec_from_file_location("judge_for_heldout", judge_file)
    judge = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(judge)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    policy = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
                                       adapter_dir).eval()
    torch.manual_seed(0)
    losses = []
    for prompt in (f"{verb} {w}" for verb in ("Name", "Draw", "Find", "Show") for w in WORDS):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)["input_ids"]
        start = ids.shape[1]
        with torch.no_grad():
            with policy.disable_adapter():
                out = policy.generate(ids.repeat(samples, 1), do_sample=True, max_new_tokens=4, min_new_tokens=4,
                                      pad_token_id=tokenizer.pad_token_id or 0)
            ratio = _answer_logp(policy, out, start)
            with policy.disable_adapter():
                ratio -= _answer_logp(policy, out, start)
        scores = judge.side(None, tokenizer.batch_decode(out[:, start:], skip_special_tokens=True))
        for i in range(0, samples, 2):
            chosen, rejected = (i, i + 1) if scores[i] >= scores[i + 1] else (i + 1, i)
            losses.append(float(-F.logsigmoid(beta * (ratio[chosen] - ratio[rejected]))))
    return sum(losses) / len(losses)


def _answer_logp(model, ids, start):
    logits = model(ids).logits[:, start - 1:-1]
    return logits.log_softmax(-1).gather(-1, ids[:, start:, None]).squeeze(-1).sum(-1)


@pytest.fixture
def setup(tmp_path, tiny_model_dir):
    prompts = [[{"role": "user", "content": f"{verb} {w}"}] for verb in ("Say", "Repeat", "Write", "Spell") for w in WORDS]
    data = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p} for p in prompts])
    (tmp_path / "judge.py").write_text(JUDGE.format(model=str(tiny_model_dir),
                                                    weights=str(tiny_model_dir / "model.safetensors")))
    base = {"model_name_or_path": str(tiny_model_dir), "dataset_name": str(data), "use_peft": True, "lora_r": 4,
            "learning_rate": 0.03, "max_steps": 8, "per_device_train_batch_size": 8, "per_device_eval_batch_size": 16,
            "max_new_tokens": 4, "eval_split_ratio": 0.5, "guard_eval_steps": 0, "keep_policy": "last",
            "save_strategy": "no", "logging_steps": 1, "report_to": "none", "disable_tqdm": True,
            "reward_functions": [f"{tmp_path / 'judge.py'}:side"], "output_dir": str(tmp_path / "out")}
    return tmp_path, base


@pytest.mark.precision
def test_the_judges_held_out_reward_rises_and_the_sampled_pairs_dpo_loss_falls(setup):
    tmp_path, base = setup
    metrics = run_recipe("online_dpo", ["--config", write_config(tmp_path / "c.yaml", base)])
    before, after = metrics["before"]["eval_reward"], metrics["after"]["eval_reward"]
    # 16 held-out prompts x 2 answers, one sampling seed before and after; the judge's values spread ~0.1 per
    # answer (the mean of four 0.2-wide coordinates), so a rise of 0.05 is ~2.8 standard errors.
    assert after > before + 0.05, (before, after)
    steps = [e for e in json.loads((tmp_path / "out" / "log_history.json").read_text()) if "loss" in e]
    assert len(steps) == 8 and steps[0]["loss"] == pytest.approx(math.log(2), abs=1e-3)  # policy = reference at 1
    # trl's per-step loss is on 8 fresh pairs: too few to show the fall (seeds 1-5 and 42, bf16 on an AMX CPU and
    # fp32: later-half means 0.59-0.76). 128 pairs on prompts of unseen verbs, all below log 2 in those 12 runs
    # (0.61-0.68), show it.
    assert heldout_dpo_loss(base["model_name_or_path"], tmp_path / "out", tmp_path / "judge.py") < math.log(2) - 0.01
    decisions = json.loads((tmp_path / "out" / "run_info.json").read_text())["decisions"]
    assert ("lm_head_fp32" in decisions) == decisions["bf16"]["value"]


def test_the_guard_keeps_the_best_scored_step_of_an_online_dpo_run(setup):
    from safetensors.torch import load_file

    tmp_path, base = setup
    cfg = {**base, "max_steps": 4, "guard_eval_steps": 2, "save_strategy": "steps", "save_steps": 2,
           "keep_policy": "best", "learning_rate": 0.3}
    metrics = run_recipe("online_dpo", ["--config", write_config(tmp_path / "c.yaml", cfg)])
    guard = metrics["guard"]
    scores = {int(k): v for k, v in guard["held_out_reward_by_step"].items()}
    assert 0 in scores and max(scores) in (2, 4) and guard["best_step"] == max(scores, key=lambda k: (scores[k], -k))
    saved = load_file(tmp_path / "out" / "adapter_model.safetensors")
    if guard["best_step"] == 0:  # the starting policy: LoRA's B matrices still zero
        assert all(not t.any() for k, t in saved.items() if "lora_B" in k)
    else:
        kept = load_file(tmp_path / "out" / f"checkpoint-{guard['best_step']}" / "adapter_model.safetensors")
        assert all(t.equal(kept[k]) for k, t in saved.items())


def test_the_kl_ceiling_reads_online_dpos_kl_per_answer():
    import torch

    guard = HeldOutRewardGuard(torch.nn.Linear(2, 2), every=0, answers_per_eval=0, kl_ceiling=20.0)
    control = TrainerControl()
    guard.on_log(None, TrainerState(global_step=3), control, logs={"objective/kl": 12.0})
    assert not control.should_training_stop
    guard.on_log(None, TrainerState(global_step=5), control, logs={"objective/kl": 25.0})
    assert control.should_training_stop and "25.00 nats per answer at step 5" in guard.stopped


@pytest.mark.parametrize("judge, message", [
    ("short", r"reward {path}:short returned 31 values for 32 answers\."),
    ("raises", r"reward {path}:raises raised KeyError: 'score'"),
])
def test_a_broken_judge_is_one_named_error_line_exit_2(setup, python, judge, message):
    import re

    tmp_path, base = setup
    path = tmp_path / "judge.py"
    config = write_config(tmp_path / "c.yaml", {**base, "reward_functions": [f"{path}:{judge}"]})
    done = subprocess.run([python, "-m", "finetune_kit.cli", "train", "online_dpo", "--config", config],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert len(errors) == 1 and re.search(message.format(path=re.escape(str(path))), errors[0]), done.stderr[-2000:]


def test_a_config_without_a_reward_or_with_trls_reward_model_path_is_refused(setup, capsys):
    from finetune_kit.cli import main

    tmp_path, base = setup
    for extra, expected in (({"reward_functions": None}, "no reward: set reward_model"),
                            ({"reward_model_path": "x"}, "key 'reward_model_path' does nothing in the online_dpo"),
                            ({"beta": [0.1, 0.0]}, "beta must be positive")):
        with pytest.raises(SystemExit) as done:
            main(["train", "online_dpo", "--config", write_config(tmp_path / "c.yaml", {**base, **extra})])
        err = capsys.readouterr().err.strip()
        assert done.value.code == 2 and len(err.splitlines()) == 1 and expected in err, err
