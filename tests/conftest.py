"""Shared fixtures: a tiny Llama built from a config (fast), with the real SmolLM2 tokenizer and chat template."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "datasets"

# Nothing in the tests may reach the network: hub lookups must fail fast and clearly.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def bf16_decision() -> bool:
    """The recipes' bf16 default here: AMX on a CPU, or a CUDA GPU with bf16, or FINETUNE_KIT_BF16."""
    from finetune_kit.hardware import bf16_is_fast

    return bf16_is_fast()


# Tests whose assertions depend on the precision run once per precision, each stated in the config (`bf16`), so
# the result never depends on the machine's default. bf16 runs where the recipes would choose it (FINETUNE_KIT_BF16=1
# forces that on any CPU, slowly: the Makefile's second pass does so on machines without native bf16).
BF16_SKIP_REASON = ("bf16 is not the recipes' decision here (no AMX / CUDA bf16, or "
                    "FINETUNE_KIT_BF16=0); FINETUNE_KIT_BF16=1 runs it")
PRECISIONS = [pytest.param(False, id="fp32"),
              pytest.param(True, id="bf16", marks=pytest.mark.skipif(not bf16_decision(), reason=BF16_SKIP_REASON))]


@pytest.fixture(scope="session")
def smollm_dir() -> Path:
    """The embedded SmolLM2-135M-Instruct, converted from GGUF once (cached under FINETUNE_KIT_CACHE)."""
    from finetune_kit.models import resolve_checkpoint

    return Path(resolve_checkpoint("smollm2-135m-instruct"))


@pytest.fixture(scope="session")
def tokenizer(smollm_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm_dir)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smollm_dir, tokenizer) -> Path:
    """A 2-layer, hidden-32 Llama with SmolLM2's tokenizer, saved as a normal checkpoint folder."""
    return tiny_llama(tmp_path_factory.mktemp("tiny-llama"), tokenizer)


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_config(path: Path, cfg: dict) -> str:
    """A flat YAML config file (JSON scalars are valid YAML); returns its path as a string."""
    path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in cfg.items()))
    return str(path)


def chat_rows(n: int = 32):
    """Conversations with a learnable pattern: the answer repeats the user's word."""
    words = ["apple", "river", "stone", "cloud", "maple", "tiger", "lemon", "piano"]
    return [
        {"messages": [{"role": "user", "content": f"Say {w}"}, {"role": "assistant", "content": f"{w} {w} {w}"}]}
        for w in (words[i % len(words)] for i in range(n))
    ]


def run_recipe(name: str, argv: list[str]):
    """Run a recipe's main() in this process, as `finetune-kit train <name>` does."""
    from finetune_kit import recipes

    return recipes.get(name).load().main(argv)


def check_and_train_refuse(recipe: str, argv: list[str], message: str, capsys) -> None:
    """`finetune-kit check` and `finetune-kit train <recipe>` on the same arguments both stop with exit 2, the error
    matching `message` (a regex) and no traceback: what train refuses, check refuses first."""
    import re

    from finetune_kit.cli import main

    for command in (["check", *argv], ["train", recipe, *argv]):
        with pytest.raises(SystemExit) as exit_info:
            main(command)
        out = capsys.readouterr()
        assert exit_info.value.code == 2, (command, out)
        assert re.search(message, out.err) and "Traceback" not in out.err, (command, out)


@pytest.fixture
def python() -> str:
    return sys.executable


def tiny_llama(out: Path, tokenizer, max_positions: int = 512, seed: int = 0) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
        tie_word_embeddings=True, initializer_range=0.2,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_model_dir) -> Path:
    """A finished LoRA SFT run on the tiny model (adapter weights moved well away from zero)."""
    tmp = tmp_path_factory.mktemp("tiny-run")
    data = write_jsonl(tmp / "train.jsonl", chat_rows(16))
    out = tmp / "run"
    cfg = {"model_name_or_path": str(tiny_model_dir), "dataset_name": str(data), "output_dir": str(out),
           "use_peft": True, "lora_r": 8, "lora_alpha": 16, "learning_rate": 3e-2, "max_steps": 8,
           "per_device_train_batch_size": 8, "max_length": 64, "save_strategy": "no", "report_to": "none",
           "disable_tqdm": True}
    run_recipe("sft", ["--config", write_config(tmp / "c.yaml", cfg)])
    return out


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    """A 2-layer, hidden-32 BERT (no head) with the embedded MiniLM's WordPiece tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from finetune_kit.models import embedded_path

    out = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(embedded_path("minilm-l6"))
    torch.manual_seed(0)
    # A wide init (0.2, not 0.02) so that random layers already give inputs distinct features: frozen-base tests
    # (LoRA) can then learn within a few dozen steps.
    BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128,
                         initializer_range=0.2)).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
