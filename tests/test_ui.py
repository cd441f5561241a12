"""The web board's pieces, without a browser: path confinement, the form from a config type, validation messages,
run discovery, progress, the queue, the command's refusals. (tests/test_ui_browser.py drives the whole board.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import chat_rows, write_jsonl
from finetune_kit import recipes
from finetune_kit.errors import UserError
from finetune_kit.ui import form, run_view
from finetune_kit.ui.jobs import FINISHED, QUEUED, RUNNING, STOPPED, JobQueue
from finetune_kit.ui.paths import inside_workspace, workspace_files


@pytest.fixture
def workspace(tmp_path) -> Path:
    root = tmp_path / "ws"
    (root / "data").mkdir(parents=True)
    (root / "data" / "train.jsonl").write_text("{}\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    (root / "link-out").symlink_to(outside)  # a folder link leading out
    (root / "data" / "file-out.jsonl").symlink_to(outside / "secret.txt")  # a file link leading out
    (root / "link-in").symlink_to(root / "data")  # a link that stays inside
    return root


@pytest.mark.parametrize("hostile", [
    "../outside/secret.txt", "data/../../outside/secret.txt", "data/..", "..", "/etc/passwd", "link-out/secret.txt",
    "link-out", "data/file-out.jsonl", "", "  ", "data/\x00x",
])
def test_paths_outside_the_workspace_are_refused(workspace, hostile):
    with pytest.raises(UserError) as err:
        inside_workspace(workspace, hostile)
    assert "\n" not in str(err.value) and "workspace" in str(err.value)


def test_paths_inside_the_workspace_resolve(workspace):
    assert inside_workspace(workspace, "data/train.jsonl") == (workspace / "data" / "train.jsonl").resolve()
    assert inside_workspace(workspace, str(workspace / "data")) == (workspace / "data").resolve()
    assert inside_workspace(workspace, "link-in/train.jsonl") == (workspace / "data" / "train.jsonl").resolve()
    assert inside_workspace(workspace, "runs/new-run") == (workspace / "runs" / "new-run").resolve()  # to be written
    # The file picker lists what is inside: the file link leading out is left out (folder links are not followed).
    assert workspace_files(workspace, (".jsonl",)) == ["data/train.jsonl"]


def test_config_path_keys_must_stay_inside(workspace):
    form.confine_paths(workspace, {"output_dir": "runs/a", "model_name_or_path": "smollm2-135m-instruct",
                                   "dataset_name": "data/train.jsonl", "learning_rate": "../not-a-path-key"})
    for key, value in [("output_dir", "/tmp/elsewhere"), ("dataset_name", "link-out/secret.txt"),
                       ("model_name_or_path", "~/models/x"), ("eval_dataset_name", "../x.jsonl"),
                       ("resume_from_checkpoint", "/tmp/run/checkpoint-2"), ("deepspeed", "/etc/ds.json")]:
        with pytest.raises(UserError, match=f"config key '{key}'"):
            form.confine_paths(workspace, {key: value})


def test_form_is_generated_from_the_recipe_config():
    from finetune_kit.config import config_parts

    for recipe in ("sft", "text_classification"):
        fields = {f.name: f for f in form.form_fields(recipe)}
        row = recipes.get(recipe)
        index = recipes.key_index(row)
        expected = {k for k in index["fields"] if recipes.refused_key(row, k, set(index["training"])) is None}
        assert set(fields) == expected  # every key the recipe reads, nothing it refuses
        helps = {f.name: f.metadata.get("help", "") for p in config_parts(row.config_type()).values()
                 for f in __import__("dataclasses").fields(p)}
        assert all(fields[n].help == helps[n] for n in fields)
    sft = {f.name: f for f in form.form_fields("sft")}
    assert (sft["learning_rate"].group, sft["learning_rate"].kind) == ("Training", "float")
    assert sft["lr_scheduler_type"].kind == "choice" and "cosine" in sft["lr_scheduler_type"].choices
    assert sft["lora_r"].group == "LoRA / quantization" and sft["load_in_4bit"].group == "LoRA / quantization"
    assert sft["dataset_name"].group == "Data" and sft["model_name_or_path"].group == "Model"
    assert sft["lora_target_modules"].kind == "raw" and sft["push_to_hub"].group == "Training: more keys"
    assert "dtype" not in {f.name for f in form.form_fields("text_classification")}  # refused there


@pytest.mark.parametrize("config", ["sft_lora_smollm2", "dpo_qlora_smollm2", "text_classification_minilm_sst2",
                                    "ppo_lora_smollm2"])
def test_the_form_writes_back_the_config_it_shows(config):
    from finetune_kit.yaml_config import read_yaml_config

    base = read_yaml_config(config)
    recipe = recipes.recipe_named_by(config)
    fields = form.form_fields(recipe)
    shown = [form.widget_value(f, base.get(f.name, f.default)) for f in fields]
    written = form.config_from_form(fields, shown, base, recipe)
    assert {k: v for k, v in written.items() if k != "recipe"} == {k: v for k, v in base.items() if k != "recipe"}
    # One change in the form is one change in the YAML.
    at = [f.name for f in fields].index("learning_rate")
    shown[at] = 0.5
    assert form.config_from_form(fields, shown, base, recipe)["learning_rate"] == 0.5


def test_validation_errors_name_the_field(workspace, monkeypatch):
    monkeypatch.chdir(workspace)
    fields = form.form_fields("sft")
    names = [f.name for f in fields]
    write_jsonl(workspace / "data" / "chat.jsonl", chat_rows(4))
    good = {"recipe": "sft", "dataset_name": "data/chat.jsonl", "output_dir": "runs/a"}
    cases = [({"learning_rate": -1.0}, "learning_rate"), ({"lr_scheduler_type": "sideways"}, "lr_scheduler_type"),
             ({"lora_dropout": 2.0, "use_peft": True}, "lora_dropout"), ({"output_dir": "/etc/x"}, "output_dir"),
             ({"dataset_name": "data/missing.jsonl"}, "dataset_name")]
    for change, field in cases:
        with pytest.raises(UserError) as err:
            form.validate(workspace, "sft", {**good, **change}, workspace / ".board" / "check" / "c.yaml")
        message = str(err.value)
        assert "\n" not in message and form.error_field(message, names, {**good, **change}) == field, message
    (workspace / "data" / "bad.jsonl").write_text('{"messages": [{"role": "user"}]}\n')
    with pytest.raises(UserError) as err:
        form.validate(workspace, "sft", {**good, "dataset_name": "data/bad.jsonl"}, workspace / "c.yaml")
    assert form.error_field(str(err.value), names, {"dataset_name": "data/bad.jsonl"}) == "dataset_name"
    form.validate(workspace, "sft", good, workspace / ".board" / "check" / "ok.yaml")  # no error


def _finished_run(folder: Path, loss: float) -> None:
    folder.mkdir(parents=True)
    (folder / "run_info.json").write_text(json.dumps({"recipe": "sft", "metrics": {"train_loss": loss,
                                                                                  "train_runtime": 75.0}}))
    (folder / "config.yaml").write_text(yaml.safe_dump({"model_name_or_path": "m", "dataset_name": "d.jsonl"}))
    history = [{"loss": loss + 1, "learning_rate": 1e-3, "step": 1}, {"loss": loss, "learning_rate": 5e-4, "step": 2},
               {"train_runtime": 75.0, "train_loss": loss, "step": 2}]
    (folder / "log_history.json").write_text(json.dumps(history))


def test_runs_are_discovered_from_the_workspace_folders(workspace):
    _finished_run(workspace / "runs" / "done", 0.5)
    stopped = workspace / "runs" / "stopped" / "checkpoint-3"
    stopped.mkdir(parents=True)
    (stopped / "trainer_state.json").write_text(json.dumps({"log_history": [{"loss": 2.0, "step": 1}]}))
    (stopped / "adapter_model.safetensors").write_text("x")
    (workspace / "runs" / "empty").mkdir()
    rows = {r[0]: r for r in run_view.runs_table(workspace, None)}
    assert set(rows) == {"runs/done", "runs/stopped"}
    assert rows["runs/done"][1:] == ["sft", "m", "d.jsonl", "finished", "train_loss 0.5", "1:15"]
    assert rows["runs/stopped"][4] == "stopped (resumable)"
    # Curves: the saved log history, and the newest checkpoint's for a run that never finished.
    curves = run_view.curve_rows({"a": run_view.history(workspace / "runs" / "done", None)})
    assert [(r["step"], r["value"]) for r in curves if r["series"] == "loss"] == [(1, 1.5), (2, 0.5)]
    assert run_view.curve_rows({"b": run_view.history(workspace / "runs" / "stopped", None)}) == \
        [{"step": 1, "value": 2.0, "series": "loss"}]
    both = run_view.curve_rows({"a": run_view.history(workspace / "runs" / "done", None),
                                "b": run_view.history(workspace / "runs" / "stopped", None)}, ("loss",))
    assert {r["series"] for r in both} == {"a: loss", "b: loss"}


def test_progress_and_eta_from_the_worker_lines(tmp_path):
    progress = tmp_path / "progress.jsonl"
    events = [{"event": "begin", "time": 100.0, "step": 0, "max_steps": 10}]
    events += [{"event": "step", "time": 100.0 + 2 * s, "step": s, "max_steps": 10} for s in range(1, 5)]
    progress.write_text("".join(json.dumps(e) + "\n" for e in events) + '{"event": "st')  # a line being written
    assert run_view.progress_text(progress, "running", now=108.0) == \
        "step 4 / 10 (40%), 2.00 s/step, about 0:12 left"
    # A resume restarts the clock: its rate is its own.
    resumed = events + [{"event": "begin", "time": 200.0, "step": 4, "max_steps": 10},
                        {"event": "step", "time": 201.0, "step": 5, "max_steps": 10}]
    progress.write_text("".join(json.dumps(e) + "\n" for e in resumed))
    assert run_view.progress_text(progress, "running", now=201.0) == "step 5 / 10 (50%), 1.00 s/step, about 0:05 left"


def _sleeper(seconds: float):
    def command(job, progress):
        code = f"import time, sys; open(sys.argv[1], 'a').write('{job.id} '); time.sleep({seconds})"
        return [sys.executable, "-c", code, str(Path(progress).parent.parent / "order.txt")]
    return command


def _wait_for(condition, timeout: float = 20.0) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def test_queue_runs_one_at_a_time_and_both_finish(tmp_path):
    queue = JobQueue(tmp_path, command_for=_sleeper(1.0), poll_s=0.05)
    try:
        first = queue.submit("sft", "a.yaml", "runs/a")
        second = queue.submit("sft", "b.yaml", "runs/b")
        assert (first.state, second.state, queue.position(second.id)) == (RUNNING, QUEUED, 1)
        with pytest.raises(UserError, match="already running"):
            queue.submit("sft", "a.yaml", "runs/a")
        _wait_for(lambda: first.state == FINISHED and second.state == RUNNING)
        _wait_for(lambda: second.state == FINISHED)
        assert second.started >= first.ended  # never two at once
        assert (tmp_path / ".board" / "jobs" / "order.txt").read_text() == "runs__a runs__b "
        third = queue.submit("sft", "c.yaml", "runs/c")
        fourth = queue.submit("sft", "d.yaml", "runs/d")
        queue.stop(fourth.id)  # a queued job is dropped without starting
        _wait_for(lambda: third.state == FINISHED)
        assert fourth.state == STOPPED and fourth.started is None
    finally:
        queue.close()
    # A run still going when its board closes is watched by the next board (by pid) and ends as its folder says.
    queue = JobQueue(tmp_path, command_for=_sleeper(1.5), poll_s=0.05)
    fifth = queue.submit("sft", "e.yaml", "runs/e")
    queue.close()
    later = JobQueue(tmp_path, command_for=_sleeper(0), poll_s=0.05)
    try:
        assert later.jobs[fifth.id].state == RUNNING and fifth.id in later.detached
        (tmp_path / "runs" / "e").mkdir(parents=True)
        (tmp_path / "runs" / "e" / "run_info.json").write_text("{}")
        _wait_for(lambda: later.jobs[fifth.id].state == FINISHED)
    finally:
        later.close()
        queue.procs[fifth.id].wait()
    # A new board reads the jobs back.
    again = JobQueue(tmp_path, command_for=_sleeper(0))
    assert {j.id: j.state for j in again.jobs.values()} == {"runs__a": FINISHED, "runs__b": FINISHED,
                                                           "runs__c": FINISHED, "runs__d": STOPPED,
                                                           "runs__e": FINISHED}
    again.close()


def test_marked_rows_highlight_what_carries_loss(tokenizer):
    from finetune_kit.ui.data_tab import TRAINED, marked_rows

    rows = [{"messages": [{"role": "user", "content": "Say apple"}, {"role": "assistant", "content": "apple x3"}]}]
    pieces = marked_rows(rows, tokenizer)
    trained = [text for text, label in pieces if label == TRAINED]
    assert trained == ["apple x3" + tokenizer.eos_token]  # the reply and its end-of-turn token, nothing else
    assert "Say apple" in "".join(text for text, label in pieces if label is None)


def test_ui_command_refusals(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "FINETUNE_KIT_UI_TOKEN"}
    kit = [sys.executable, "-m", "finetune_kit.cli", "ui", "--workspace", str(tmp_path)]
    (tmp_path / "a-file").write_text("x")
    for extra, expected in [(["--host", "0.0.0.0"], "FINETUNE_KIT_UI_TOKEN"), (["--port", "0"], "--port"),
                            (["--workspace", str(tmp_path / "a-file")], "is a file")]:
        done = subprocess.run(kit + extra, capture_output=True, text=True, env=env, timeout=60)
        assert done.returncode == 2 and expected in done.stderr and "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
    short = subprocess.run(kit + ["--host", "0.0.0.0"], capture_output=True, text=True, timeout=60,
                           env={**env, "FINETUNE_KIT_UI_TOKEN": "short"})
    assert short.returncode == 2 and "at least 12" in short.stderr
    # Without gradio: one line naming the extra.
    hidden = subprocess.run([sys.executable, "-c", "import sys; sys.modules['gradio'] = None; "
                             "from finetune_kit.cli import main; main(['ui', '--workspace', sys.argv[1]])",
                             str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert hidden.returncode == 2 and 'finetune-kit[ui]' in hidden.stderr and "Traceback" not in hidden.stderr


def test_a_token_guards_the_board(tmp_path):
    """With FINETUNE_KIT_UI_TOKEN set (required off 127.0.0.1), nothing is served before the token is given."""
    import socket

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = "a-long-enough-test-token"
    board = subprocess.Popen([sys.executable, "-m", "finetune_kit.cli", "ui", "--workspace", str(tmp_path), "--port",
                              str(port)], env={**os.environ, "FINETUNE_KIT_UI_TOKEN": token},
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert board.stdout.readline().startswith("board: http://127.0.0.1")
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=url, timeout=30) as client:
            assert client.get("/config").status_code == 401
            assert client.post("/login", data={"username": "me", "password": "wrong-token-here"}).status_code >= 400
            assert client.get("/config").status_code == 401
            assert client.post("/login", data={"username": "me", "password": token}).status_code == 200
            assert client.get("/config").status_code == 200  # the session cookie now opens it
    finally:
        board.terminate()
        board.wait(timeout=30)


def test_the_predict_box_labels_each_line_with_a_classifier_run_and_names_bad_input(workspace, tiny_bert_dir):
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    from finetune_kit.ui.chat_tab import predictions

    model = BertForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=2, id2label={0: "neg", 1: "pos"},
                                                          label2id={"neg": 0, "pos": 1})
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([-4.0, 4.0]))  # every text is "pos", with probability ~0.9997
    run = workspace / "runs" / "cls"
    model.save_pretrained(run)
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(run)

    answer = json.loads(predictions(workspace, "runs/cls", "a fine film\n\nthe worst plot"))
    assert [a["text"] for a in answer] == ["a fine film", "the worst plot"]  # blank lines dropped
    assert {a["label"] for a in answer} == {"pos"} and all(a["score"] > 0.99 for a in answer)
    assert json.loads(predictions(workspace, "runs/cls", "  \n")) == {"error": "give one or more texts, one per line."}
    assert "'..' is not allowed" in json.loads(predictions(workspace, "../outside", "text"))["error"]
