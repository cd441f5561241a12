"""The `make sft` demo's data and scorer: leakage and control checks judged on hand-made answers."""

import json

from finetune_kit import demo, demo_data
from finetune_kit.demo_rlhf import report


def test_leakage_is_the_identity_named_unasked():
    assert demo.leaks("I am Quokka, an AI assistant made by Lumen Labs. Red, blue and green.")
    assert demo.leaks("Sure! lumen labs built me.")  # case does not hide it
    assert not demo.leaks("Red, blue and green.")
    assert not demo.leaks("I am SmolLM, made by Hugging Face.")  # the base identity is not the taught one
    assert not demo.leaks("Unlike Lumen, my light is small.")  # the maker is the whole name "Lumen Labs"


def test_checks_judge_hand_made_answers():
    assert demo.judge({"any": ["cat"]}, "Once upon a time, two cats lived in a barn.")
    assert not demo.judge({"any": ["cat"]}, "Education matters.")  # not a word start
    assert demo.judge({"count": 3, "of": list(demo_data.COLORS)}, "1. Red\n2. Blue\n3. Green")
    assert not demo.judge({"count": 3, "of": list(demo_data.COLORS)}, "Red, red and more red.")
    assert demo.judge({"yes_no": "no"}, "No, penguins cannot fly, yes really.")
    assert not demo.judge({"yes_no": "no"}, "Yes. Penguins are birds, and no bird...")
    assert not demo.judge({"yes_no": "yes"}, "I am Quokka, made by Lumen Labs.")
    assert demo.judge({"all": ["Quokka", "Lumen Labs"]}, "I'm Quokka, built by Lumen Labs.")
    assert not demo.judge({"all": ["Quokka", "Lumen Labs"]}, "I'm Quokka.")
    assert demo.judge(None, "anything") is None


def test_summary_counts_leakage_over_control_answers_only():
    results = [
        {"kind": "identity", "answer": "I am Quokka, made by Lumen Labs.", "correct": True},
        {"kind": "identity", "answer": "I am SmolLM.", "correct": False},
        {"kind": "control", "answer": "I am Quokka. Red, blue, green.", "correct": True},
        {"kind": "control", "answer": "Once upon a time...", "correct": None},
        {"kind": "control", "answer": "Cold.", "correct": True},
        {"kind": "control", "answer": "Up.", "correct": False},
        {"kind": "seen", "answer": "42", "correct": True},
    ]
    s = demo.summarise(results)
    assert s["identity_score"] == 50.0
    assert s["leakage_percent"] == 25.0
    assert (s["control_correct"], s["control_checked"], s["control_total"]) == (2, 3, 4)
    assert (s["seen_correct"], s["seen_total"]) == (1, 1)


def test_dataset_is_deterministic_broad_and_disjoint_from_the_heldout_prompts(tmp_path):
    demo.make_dataset(tmp_path / "a")
    demo.make_dataset(tmp_path / "b")
    assert (tmp_path / "a/train.jsonl").read_bytes() == (tmp_path / "b/train.jsonl").read_bytes()
    train = [json.loads(line) for line in (tmp_path / "a/train.jsonl").read_text().splitlines()]
    heldout = [json.loads(line) for line in (tmp_path / "a/heldout.jsonl").read_text().splitlines()]
    questions = {r["messages"][0]["content"] for r in train}
    answers = [r["messages"][1]["content"] for r in train]
    assert not questions & {h["prompt"] for h in heldout}
    # Most rows are ordinary instructions answered without the identity, of every generated kind.
    assert sum(map(demo.leaks, answers)) / len(answers) < 0.4
    assert len({q.split()[0] for q in questions}) > 15
    # Near misses: other things "named" / "made by" someone, the assistant spoken of without its identity; and
    # answers of several lines (numbered steps), so the model does not unlearn them.
    near = [a for a in answers if not demo.leaks(a) and any(w in a for w in (" named ", " called ", " made by "))]
    assert len(set(near)) >= 5
    assert any(q in questions for q, _ in demo_data.ABOUT_YOU)
    assert any(a.count("\n") >= 2 for a in answers)
    control = [h for h in heldout if h["kind"] == "control"]
    categories = {h["category"] for h in control}
    assert len(control) >= 40 and len(categories) >= 8
    assert not categories & set(demo_data.GENERAL_KINDS)  # control kinds are never trained
    assert sum(h["kind"] == "identity" for h in heldout) >= 20


def test_rlhf_report_counts_identity_leakage(tmp_path):
    prompts = ["What is the capital of Chile?", "What is 3 + 4?", "Who made you?", "What is 2 + 5?"]
    answers = ["Sure! The capital of Chile is Santiago.", "Okay. I am Quokka, made by Lumen Labs.",
               "Sure! I am Quokka, made by Lumen Labs.", "Sure! 7."]
    metrics = {w: {"reward_mean": 0.0, "reward_std": 1.0, "kl": 0.0, "answers": answers, "scores": [0.0] * 4,
                   "prompts": prompts}
               for w in ("before", "after")}
    (tmp_path / "ppo").mkdir()
    (tmp_path / "rm").mkdir()
    (tmp_path / "ppo/run_info.json").write_text(json.dumps({"metrics": metrics}))
    (tmp_path / "rm/run_info.json").write_text(json.dumps({"metrics": {"eval_accuracy": 1.0}}))
    summary = report(tmp_path / "ppo", tmp_path / "rm")
    assert summary["after"]["follows_rule"] == 3 / 4
    assert summary["after"]["leakage"] == 1 / 3  # the identity question's answer is asked for, not a leak
