"""Using a trained model: streaming, chat with Ctrl-C, batch generation, export, tokenize, inspect."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch

from conftest import tiny_llama, write_jsonl
from finetune_kit.cli import main as cli_main
from finetune_kit.errors import UserError
from finetune_kit.generation import GenerationOptions, generate_batch, reply, stream_reply
from finetune_kit.models import load_for_inference

GREEDY = GenerationOptions(max_new_tokens=24, temperature=0.0)
HELLO = [{"role": "user", "content": "Say apple"}]


def cli(argv, capsys, stdout_only: bool = False):
    """Run the console entry point in-process; return (exit code, its stdout + stderr, or stdout alone)."""
    capsys.readouterr()  # drop what earlier steps printed
    code = 0
    try:
        cli_main(argv)
    except SystemExit as exit_info:
        code = exit_info.code
    captured = capsys.readouterr()
    return code, captured.out if stdout_only else captured.out + captured.err


def test_streaming_gives_the_same_text_as_one_shot(tiny_run):
    model, tokenizer = load_for_inference(str(tiny_run))
    streamed = "".join(stream_reply(model, tokenizer, HELLO, GREEDY))
    assert streamed == reply(model, tokenizer, HELLO, GREEDY)[0] and streamed.strip()


def test_stop_event_ends_generation_early(tiny_run):
    model, tokenizer = load_for_inference(str(tiny_run))
    stop = threading.Event()
    pieces = []
    for piece in stream_reply(model, tokenizer, HELLO, GenerationOptions(max_new_tokens=400, temperature=0), stop):
        pieces.append(piece)
        if len(pieces) == 3:
            stop.set()
    full, _, _ = reply(model, tokenizer, HELLO, GenerationOptions(max_new_tokens=400, temperature=0))
    assert len("".join(pieces)) < len(full)


def test_prompt_longer_than_the_context_window(tiny_run):
    model, tokenizer = load_for_inference(str(tiny_run))
    long = [{"role": "user", "content": "word " * 600}]
    with pytest.raises(UserError, match=r"exceeds the model's context window of 512 tokens"):
        reply(model, tokenizer, long, GREEDY)


def test_batched_generation_matches_one_at_a_time(tiny_run, tmp_path, capsys):
    prompts = ["Say apple", "Say river and then stone", "Say cloud"]
    model, tokenizer = load_for_inference(str(tiny_run))
    alone = [generate_batch(model, tokenizer, [p], GREEDY)[0] for p in prompts]
    src = write_jsonl(tmp_path / "p.jsonl", [{"prompt": p} for p in prompts])
    code, _ = cli(["generate", "--model", str(tiny_run), "--input", str(src), "--output", str(tmp_path / "a.jsonl"),
                   "--temperature", "0", "--max_new_tokens", "24", "--batch_size", "3"], capsys)
    answers = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert code == 0 and [a["prompt"] for a in answers] == prompts
    assert [a["answer"] for a in answers] == alone


def test_generate_names_the_bad_row(tiny_run, tmp_path, capsys):
    src = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "ok"}, {"question": "no prompt"}])
    code, out = cli(["generate", "--model", str(tiny_run), "--input", str(src), "--output", str(tmp_path / "a")],
                    capsys)
    assert code == 2 and "p.jsonl line 2: field 'prompt' must be a non-empty string" in out


@pytest.mark.parametrize("verbose", ["0", "1"])
def test_weight_loading_bars_are_off_in_a_log_unless_verbose(tiny_model_dir, tmp_path, python, verbose):
    """Run as from a log file (stderr not a terminal): no weight-loading bar, unless FINETUNE_KIT_VERBOSE=1."""
    src = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Say apple"}])
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    done = subprocess.run([str(Path(python).parent / "finetune-kit"), "generate", "--model", str(tiny_model_dir),
                           "--input", str(src), "--output", str(tmp_path / "a.jsonl"), "--max_new_tokens", "2"],
                          capture_output=True, text=True, env={**env, "FINETUNE_KIT_VERBOSE": verbose}, timeout=300)
    assert done.returncode == 0, done.stderr
    assert ("Loading weights" in done.stderr) == (verbose == "1"), done.stderr


def test_ctrl_c_stops_the_answer_not_the_session(tmp_path, tokenizer, python):
    model_dir = tiny_llama(tmp_path / "long", tokenizer, max_positions=8192)
    proc = subprocess.Popen(
        [str(Path(python).parent / "finetune-kit"), "chat", "--model", str(model_dir), "--max_new_tokens", "6000",
         "--temperature", "0"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=0,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    output: list[str] = []
    reader = threading.Thread(target=lambda: [output.append(c) for c in iter(lambda: proc.stdout.read(1), "")],
                              daemon=True)
    reader.start()

    def wait_for(predicate, timeout=120.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if predicate("".join(output)):
                return "".join(output)
            time.sleep(0.05)
        proc.kill()
        raise AssertionError(f"timed out; output so far: {''.join(output)[-2000:]!r}")

    try:
        wait_for(lambda s: s.endswith(">>> "))
        proc.stdin.write("Tell me a long story\n")
        proc.stdin.flush()
        mark = len("".join(output))
        wait_for(lambda s: len(s) > mark + 40)  # the answer is streaming
        proc.send_signal(signal.SIGINT)
        text = wait_for(lambda s: "[stopped]" in s and s.endswith(">>> "))
        proc.stdin.write("/reset\n")
        proc.stdin.flush()
        wait_for(lambda s: "(history cleared)" in s)
        proc.stdin.write("/exit\n")
        proc.stdin.flush()
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    answer = text[mark:text.index("[stopped]")]
    assert 40 < len(answer) and "Traceback" not in text


# --- export ---------------------------------------------------------------------------------------------------


def test_export_merges_and_matches_the_adapter_logits(tiny_run, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    code, _ = cli(["export", str(tiny_run), "--out", str(tmp_path / "merged")], capsys)
    assert code == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    adapter_model, tokenizer = load_for_inference(str(tiny_run))
    ids = tokenizer.apply_chat_template(HELLO, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        diff = (merged(**ids).logits - adapter_model(**ids).logits).abs().max().item()
    assert diff <= 1e-4, diff
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(json.loads((tiny_run / "adapter_config.json").read_text())
                                                    ["base_model_name_or_path"])
        assert (base(**ids).logits - merged(**ids).logits).abs().max() > 1e-3  # the adapter really is in there
    for name in ("model.safetensors", "tokenizer.json", "chat_template.jinja", "generation_config.json",
                 "README.md"):
        assert (tmp_path / "merged" / name).is_file(), name
    code, out = cli(["export", str(tiny_run), "--out", str(tmp_path / "merged")], capsys)
    assert code == 2 and "is not empty; nothing was changed" in out


def test_classifier_export_keeps_labels(tmp_path, tokenizer, capsys):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

    labels = {0: "negative", 1: "neutral", 2: "positive"}
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, num_labels=3, id2label=labels,
                        label2id={v: k for k, v in labels.items()})
    BertForSequenceClassification(config).save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "base")
    lora = LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "value"], init_lora_weights=False)
    peft_model = get_peft_model(model, lora)
    peft_model.save_pretrained(tmp_path / "run")
    tokenizer.save_pretrained(tmp_path / "run")
    code, out = cli(["export", str(tmp_path / "run"), "--out", str(tmp_path / "merged"), "--dtype", "bfloat16"],
                    capsys)
    assert code == 0, out
    exported = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert exported["id2label"] == {"0": "negative", "1": "neutral", "2": "positive"}
    assert exported["dtype"] == "bfloat16"


# --- tokenize and inspect ---------------------------------------------------------------------------------------


def tiny_bert(out: Path) -> Path:
    """A 1-layer BERT with the embedded MiniLM's real WordPiece tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    from finetune_kit.models import embedded_path

    tokenizer = AutoTokenizer.from_pretrained(embedded_path("minilm-l6"))
    BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=32)).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_tokenize_shows_bert_specials(tmp_path, capsys):
    code, out = cli(["tokenize", str(tiny_bert(tmp_path / "bert")), "Tokenizers split"], capsys)
    lines = [line for line in out.splitlines() if line[:5].strip().isdigit() or " tokens, " in line]
    assert code == 0 and "'[CLS]'  (special)" in lines[0] and "'[SEP]'  (special)" in lines[-2]
    assert [line.split()[2] for line in lines[:-1]] == ["'[CLS]'", "'token'", "'##izer'", "'##s'", "'split'",
                                                        "'[SEP]'"]
    assert lines[-1] == "6 tokens, 2 special"


def test_tokenize_chat_shows_the_template_markers(tiny_model_dir, capsys):
    code, out = cli(["tokenize", str(tiny_model_dir), "Hi", "--chat"], capsys)
    assert code == 0 and out.count("'<|im_start|>'  (special)") == 3  # system, user, assistant
    assert "'Hi'" in out


def test_inspect_families(tmp_path, tiny_model_dir, tiny_run, capsys):
    from transformers import ViTConfig, ViTForImageClassification

    ViTForImageClassification(ViTConfig(image_size=16, patch_size=4, hidden_size=16, num_hidden_layers=1,
                                        num_attention_heads=2, intermediate_size=32,
                                        num_labels=2)).save_pretrained(tmp_path / "vit")
    cases = {str(tiny_model_dir): ("decoder", "LlamaForCausalLM"), str(tiny_bert(tmp_path / "bert")):
             ("encoder", "BertForMaskedLM"), str(tmp_path / "vit"): ("vision", "ViTForImageClassification")}
    for path, (family, arch) in cases.items():
        code, out = cli(["inspect", path, "--json"], capsys, stdout_only=True)
        summary = json.loads(out)
        assert code == 0 and summary["family"] == family and summary["architecture"] == arch, summary
        assert summary["parameters"] > 0
    assert json.loads(cli(["inspect", str(tmp_path / "vit"), "--json"], capsys, True)[1])["modality"] == "image"
    decoder = json.loads(cli(["inspect", str(tiny_model_dir), "--json"], capsys, True)[1])
    assert decoder["chat_template"] is True and "sft" in decoder["recipes"]
    run = json.loads(cli(["inspect", str(tiny_run), "--json"], capsys, True)[1])
    assert run["adapter"]["r"] == 8 and run["training"]["recipe"] == "sft" and run["base_model"] == str(tiny_model_dir)


def test_inspect_gguf_reads_metadata_only(capsys):
    code, out = cli(["inspect", "smollm2-135m-instruct", "--json"], capsys, stdout_only=True)
    summary = json.loads(out)
    assert code == 0 and summary["format"] == "gguf" and summary["architecture"] == "llama"
    assert 130e6 < summary["parameters"] < 140e6 and summary["chat_template"] is True


# --- bad input --------------------------------------------------------------------------------------------------


def test_missing_and_corrupt_adapters(tiny_run, tmp_path, capsys):
    import shutil

    broken = tmp_path / "no-weights"
    shutil.copytree(tiny_run, broken)
    (broken / "adapter_model.safetensors").unlink()
    code, out = cli(["export", str(broken), "--out", str(tmp_path / "x")], capsys)
    assert code == 2 and "no adapter_model.safetensors: the adapter is missing" in out

    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_run, corrupt)
    (corrupt / "adapter_model.safetensors").write_bytes(b"\x00" * 64)
    code, out = cli(["export", str(corrupt), "--out", str(tmp_path / "y")], capsys)
    assert code == 2 and "corrupt or truncated" in out

    bad_json = tmp_path / "bad-json"
    shutil.copytree(tiny_run, bad_json)
    (bad_json / "adapter_config.json").write_text("{not json")
    code, out = cli(["export", str(bad_json), "--out", str(tmp_path / "z")], capsys)
    assert code == 2 and "adapter_config.json: corrupt adapter config" in out
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_adapter_for_a_different_base(tiny_run, tmp_path, tokenizer, capsys):
    import shutil

    from transformers import LlamaConfig, LlamaForCausalLM

    other = tmp_path / "other-base"
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=48, intermediate_size=96,
                                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)).save_pretrained(other)
    moved = tmp_path / "moved"
    shutil.copytree(tiny_run, moved)
    config = json.loads((moved / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(other)
    (moved / "adapter_config.json").write_text(json.dumps(config))
    code, out = cli(["export", str(moved), "--out", str(tmp_path / "x")], capsys)
    assert code == 2 and "does not fit its base model" in out and "different model" in out


def test_adapters_that_name_each_other_as_base(tiny_run, tmp_path, capsys):
    # What a run trained into the folder it started from left behind (refused since): a loop of bases, which was a
    # RecursionError; now named.
    import shutil

    first, second = tmp_path / "first", tmp_path / "second"
    for folder, base in ((first, second), (second, first)):
        shutil.copytree(tiny_run, folder)
        config = json.loads((folder / "adapter_config.json").read_text())
        (folder / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": str(base)}))
    for target in (first, second):
        code, out = cli(["export", str(target), "--out", str(tmp_path / "x")], capsys)
        assert code == 2 and "is itself or an adapter based on it" in out and "Traceback" not in out
    assert not (tmp_path / "x").exists()


def test_unsupported_gguf_architecture(tmp_path, monkeypatch, capsys):
    import numpy as np
    from gguf import GGUFWriter

    monkeypatch.setenv("FINETUNE_KIT_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "odd.gguf"
    writer = GGUFWriter(str(path), "madeuparch")
    writer.add_tensor("w", np.zeros((2, 2), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    code, out = cli(["chat", "--model", str(path)], capsys)
    assert code == 2 and "odd.gguf: transformers cannot load this GGUF file" in out


def test_serve_port_in_use(tiny_run, python):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run([str(Path(python).parent / "finetune-kit"), "serve", "--model", str(tiny_run),
                                 "--port", str(port)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and f"port {port} on 127.0.0.1 is already in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_cli_argument(capsys):
    code, out = cli(["inspect", "x", "--colour"], capsys)
    assert code == 2 and "unrecognized arguments: --colour" in out
