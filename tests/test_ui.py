"""The web board's pieces, without a browser: path confinement, the form from a config type, validation messages,
run discovery, progress, the queue, the command's refusals. (tests/test_ui_browser.py drives the whole board.)"""

from __future__ import annotations

import json
import os
import struct
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
    (stopped / "trainer_state.json").write_text(json.dumps({"global_step": 1, "log_history": [{"loss": 2.0,
                                                                                              "step": 1}]}))
    (stopped / "adapter_model.safetensors").write_bytes(struct.pack("<Q", 2) + b"{}")  # a whole (empty) safetensors
    (workspace / "runs" / "empty").mkdir()
    cut = workspace / "runs" / "cut" / "checkpoint-2"  # a save that never finished: nothing to resume from
    cut.mkdir(parents=True)
    (cut / "trainer_state.json").write_text('{"global_step": 2, "log_hi')
    rows = {r[0]: r for r in run_view.runs_table(workspace, None)}
    assert set(rows) == {"runs/done", "runs/stopped", "runs/cut"}
    assert rows["runs/done"][1:] == ["sft", "m", "d.jsonl", "finished", "train_loss 0.5", "1:15"]
    assert rows["runs/stopped"][4] == "stopped (resumable from checkpoint-3)"
    assert rows["runs/cut"][4] == "stopped (no complete checkpoint)"
    # Curves: the saved log history, and the newest checkpoint's for a run that never finished.
    curves = run_view.curve_rows({"a": run_view.history(workspace / "runs" / "done", None)})
    assert [(r["step"], r["value"]) for r in curves if r["series"] == "loss"] == [(1, 1.5), (2, 0.5)]
    assert run_view.curve_rows({"b": run_view.history(workspace / "runs" / "stopped", None)}) == \
        [{"step": 1, "value": 2.0, "series": "loss"}]
    both = run_view.curve_rows({"a": run_view.history(workspace / "runs" / "done", None),
                                "b": run_view.history(workspace / "runs" / "stopped", None)}, ("loss",))
    assert {r["series"] for r in both} == {"a: loss", "b: loss"}


def test_a_run_config_is_read_back_or_its_job_config_instead(tmp_path):
    """The board and the CLI read a run's config.yaml through files.read_yaml_mapping: a broken or missing one falls
    back to the job's config; a file that holds no mapping reads as {}."""
    from finetune_kit.cli_commands import run_config

    run, job = tmp_path / "run", tmp_path / "job.yaml"
    run.mkdir()
    job.write_text("model_name_or_path: from-the-job\n")
    assert run_view._run_config(run, job) == {"model_name_or_path": "from-the-job"}  # no config.yaml yet
    (run / "config.yaml").write_text("model_name_or_path: [unclosed\n")
    assert run_view._run_config(run, job) == {"model_name_or_path": "from-the-job"} and run_config(str(run)) == {}
    (run / "config.yaml").write_text("- a list, not a mapping\n")
    assert run_view._run_config(run, job) == {} and run_config(str(run)) == {}
    (run / "config.yaml").write_text("model_name_or_path: from-the-run\n")
    assert run_view._run_config(run, None) == run_config(str(run)) == {"model_name_or_path": "from-the-run"}
    assert run_view._run_config(tmp_path / "none", None) == {}


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


def _stubborn(ignores: tuple[str, ...]):
    """A run that ignores the signals named (SIGINT: a run that never reaches the end of its step)."""
    def command(job, progress):
        code = ("import signal, sys, time\n"
                f"for name in {ignores!r}: signal.signal(getattr(signal, name), signal.SIG_IGN)\n"
                "open(sys.argv[1], 'w').write('ready')\ntime.sleep(120)")
        return [sys.executable, "-c", code, str(Path(progress).parent / "ready")]
    return command


@pytest.mark.parametrize("ignores, ended_by", [(("SIGINT",), "SIGTERM"), (("SIGINT", "SIGTERM"), "SIGKILL")])
def test_a_stop_the_run_ignores_escalates_to_sigterm_then_sigkill(tmp_path, monkeypatch, ignores, ended_by):
    import signal

    from finetune_kit.ui import jobs

    monkeypatch.setattr(jobs, "STOP_GRACE_S", 0.5)
    queue = JobQueue(tmp_path, command_for=_stubborn(ignores), poll_s=0.05)
    try:
        job = queue.submit("sft", "a.yaml", "runs/a")
        _wait_for(lambda: (queue.folder(job.id) / "ready").is_file())
        queue.stop(job.id)
        time.sleep(0.3)
        assert job.state == jobs.STOPPING and queue.procs[job.id].poll() is None  # SIGINT ignored, still inside grace
        _wait_for(lambda: job.state == STOPPED)
        assert job.returncode == -getattr(signal, ended_by)
    finally:
        queue.close()


def test_a_workspace_deleted_under_the_board_is_a_one_line_error(tmp_path):
    import shutil

    from finetune_kit.ui import app
    from finetune_kit.ui.data_tab import check_report

    root = tmp_path / "ws"
    _finished_run(root / "runs" / "done", 0.5)
    queue = JobQueue(root, command_for=_sleeper(0), poll_s=0.05)
    try:
        board = app.build_board(root, queue)
        refresh = next(f.fn for f in board.fns.values() if f.fn.__name__ == "refresh")
        assert refresh("runs/done", None)[7].startswith("2 loss points, last 0.5 at step 2")
        shutil.rmtree(root)
        for problem in (lambda: inside_workspace(root, "runs/done"),
                        lambda: queue.submit("sft", "a.yaml", "runs/a")):
            with pytest.raises(UserError, match="no longer exists") as err:
                problem()
            assert "\n" not in str(err.value) and str(root) in str(err.value)
        queue.advance()  # the queue goes on without raising
        shown = refresh("runs/done", None)
        assert "no longer exists" in shown[3] and len(shown) == 10
        assert check_report(root, "sft", "data/x.jsonl", "m").startswith("error: the workspace")
    finally:
        queue.close()


def test_the_metric_chart_shows_evaluation_metrics_and_rewards():
    history = [{"loss": 1.0, "learning_rate": 1e-3, "step": 1},
               {"eval_loss": 0.9, "eval_accuracy": 0.6, "eval_f1": 0.5, "eval_runtime": 3.0,
                "eval_samples_per_second": 9.0, "step": 2},
               {"eval_loss": 0.8, "eval_accuracy": 0.7, "eval_f1": 0.65, "step": 4},
               {"train_runtime": 9.0, "train_loss": 0.9, "step": 4}]
    series = run_view.metric_series(history)
    assert series == {"eval_accuracy": [(2, 0.6), (4, 0.7)], "eval_f1": [(2, 0.5), (4, 0.65)]}
    assert [ax.get_title() for ax in run_view.metrics_figure(history).axes] == ["eval_accuracy", "eval_f1"]
    ppo = [{"step": s, "reward_mean": 0.1 * s, "kl": 0.01 * s, "policy_loss": -0.1, "updates": 4} for s in (1, 2)]
    assert list(run_view.metric_series(ppo)) == ["reward_mean", "kl", "policy_loss"]
    assert run_view.metrics_figure(history[:1]) is None  # nothing evaluated yet: no chart


def test_the_data_tab_counts_labels_by_name_and_checks_rows(workspace, monkeypatch):
    from finetune_kit.ui.data_tab import check_report, preview

    monkeypatch.chdir(workspace)  # as the board runs: relative paths of a config mean the workspace

    write_jsonl(workspace / "data" / "sentiment.jsonl",
                [{"text": f"text {i}", "label": "pos" if i % 3 else "neg"} for i in range(9)])
    status, _, table = preview(workspace, "text_classification", "data/sentiment.jsonl", "m", 5)
    assert status.startswith("9 rows, single_label_classification, 2 labels")
    assert dict(zip(table["label"], table["rows"])) == {"pos": 6, "neg": 3}  # names, not label ids
    write_jsonl(workspace / "data" / "ner.jsonl", [{"tokens": ["Ada", "lives", "in", "Paris"],
                                                    "tags": ["B-PER", "O", "O", "B-LOC"]}] * 3)
    status, _, table = preview(workspace, "token_classification", "data/ner.jsonl", "m", 5)
    assert status.startswith("3 rows, 3 tags") and dict(zip(table["label"], table["tokens"])) == \
        {"O": 6, "B-PER": 3, "B-LOC": 3}
    from PIL import Image

    for name, count in (("cat", 3), ("dog", 2)):
        (workspace / "pics" / name).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(workspace / "pics" / name / f"{i}.png")
    status, _, table = preview(workspace, "image_classification", "pics", "m", 5)
    assert status.startswith("5 images, 2 classes") and dict(zip(table["label"], table["images"])) == \
        {"cat": 3, "dog": 2}
    # The Check button: `finetune-kit check`'s preflight names the bad row of the file.
    write_jsonl(workspace / "data" / "broken.jsonl", [{"text": "fine", "label": "pos"}, {"text": "no label"}])
    report = check_report(workspace, "text_classification", "data/broken.jsonl", "m")
    assert report.startswith("error:") and "broken.jsonl line 2" in report and "label" in report, report
    with pytest.raises(UserError, match="broken.jsonl line 2"):
        preview(workspace, "text_classification", "data/broken.jsonl", "m", 5)


def test_a_ppo_run_shows_progress_and_stops_resumably_from_the_board(tmp_path, tiny_model_dir):
    """Our PPO loop is no transformers Trainer: the board's progress writer and Stop reach it all the same."""
    import signal

    from conftest import run_recipe, write_config
    from transformers import TrainerCallback

    from finetune_kit.trainer_setup import driver_callbacks
    from finetune_kit.ui.worker import progress_callback

    data = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Say {w}"} for w in ("apple", "river", "stone")] * 4)
    (tmp_path / "rewards.py").write_text("def length(prompts, answers):\n    return [len(a) / 20 for a in answers]\n")
    config = write_config(tmp_path / "c.yaml", {
        "model_name_or_path": str(tiny_model_dir), "dataset_name": str(data), "use_peft": True, "lora_r": 4,
        "max_steps": 4, "rollout_batch_size": 4, "mini_batch_size": 2, "max_new_tokens": 4, "save_steps": 10,
        "logging_steps": 1, "report_to": "none", "reward_functions": [f"{tmp_path / 'rewards.py'}:length"],
        "output_dir": str(tmp_path / "out")})
    progress = progress_callback(str(tmp_path / "progress.jsonl"))

    class StopAt2(TrainerCallback):  # the board's Stop button, pressed during step 2
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                progress.on_signal(signal.SIGINT, None)

    with driver_callbacks(StopAt2(), progress), pytest.raises(KeyboardInterrupt):
        run_recipe("ppo", ["--config", config])
    events = run_view.progress_events(tmp_path / "progress.jsonl")
    assert [(e["event"], e["step"]) for e in events if e["event"] != "log"] == \
        [("begin", 0), ("step", 1), ("step", 2), ("stopped", 2)]
    assert all("reward_mean" in e["logs"] for e in events if e["event"] == "log")
    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"] and not (out / "run_info.json").exists()
    shown = run_view.metric_series(run_view.history(out, tmp_path / "progress.jsonl"))
    assert [len(v) for k, v in shown.items() if k in ("reward_mean", "kl")] == [2, 2]  # the live chart's points

    resumed = progress_callback(str(tmp_path / "resumed.jsonl"))
    with driver_callbacks(resumed):
        run_recipe("ppo", ["--config", config, "--resume_from_checkpoint", "latest"])
    steps = [(e["event"], e["step"]) for e in run_view.progress_events(tmp_path / "resumed.jsonl")
             if e["event"] != "log"]
    assert steps == [("begin", 2), ("step", 3), ("step", 4)] and (out / "run_info.json").is_file()


def test_a_commands_result_line_is_its_own_not_a_library_warning_after_it(tmp_path):
    """The board's Export shows one line: the CLI's "exported to ..." even when a library warns on stderr after it
    (bitsandbytes with `kernels` installed, offline), and the CLI's error line when it fails."""
    from finetune_kit.ui.runs_tab import command_result

    warned = subprocess.run([sys.executable, "-c", "import sys; print('exported to ws/exports/a');"
                             "print(\"Skipping publisher trust check for 'k/q'\", file=sys.stderr)"],
                            capture_output=True, text=True)
    assert command_result(warned) == "exported to ws/exports/a"
    failed = subprocess.run([sys.executable, "-m", "finetune_kit.cli", "export", str(tmp_path / "nothing"), "--out",
                             str(tmp_path / "out")], capture_output=True, text=True)
    shown = command_result(failed)
    assert failed.returncode == 2 and shown.startswith("**error:** ") and "nothing" in shown
    assert not (tmp_path / "out").exists()
