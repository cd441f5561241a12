"""Shipped configs fit their data: `finetune-kit check` on each shipped config with its default data reports no
truncated or dropped rows (seq2seq: cut sources or targets), unless the YAML says why that is accepted (a
`# truncation accepted:` line).

Generated data is written into a temporary folder; data under ../shared is used where it exists (a user's clone has
none: those configs are then skipped); configs of hub checkpoints need the network and are skipped.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import ROOT, SHARED
from finetune_kit import recipes
from finetune_kit.yaml_config import CONFIGS_DIR, read_yaml_config

ACCEPTED = "# truncation accepted:"
TRUNCATION = re.compile(r"(training rows are longer than max_length|sources are longer than max_source_length|"
                        r"captions are longer than max_length)=\d+ "
                        r"and will be (truncated|dropped)|targets are cut to max_target_length|whose target is over "
                        r"max_target_length")


def _decoder_configs() -> list[str]:
    """Configs of the recipes whose rows `check` measures: the decoder stages, and those with a length_check."""
    rows = {r.name: r for r in recipes.RECIPES}
    return [name for recipe, names in recipes.configs_by_recipe().items()
            if rows[recipe].rows or rows[recipe].length_check for name in names]


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    from finetune_kit import demo, demo_clip, demo_grpo, demo_rlhf, demo_seq2seq, demo_vision_chat

    root = tmp_path_factory.mktemp("generated")
    demo.make_dataset(root / "data/generated/identity")
    demo_rlhf.make_dataset(root / "data/generated/rlhf")
    demo_grpo.make_dataset(root / "data/generated/grpo")
    demo_seq2seq.make_dataset(root / "data/generated/dates")  # rows, tokenizer and the T5 built from a config
    demo_clip.make_dataset(root / "data/generated/clip-shapes", per_class=4, zero_shot_per_class=2)  # + tiny CLIP
    # pictures, rows and the tiny SmolVLM built from a config
    demo_vision_chat.make_dataset(root / "data/generated/shapes", sizes={"train": 40, "validation": 8, "test": 8})
    return root


def _local(value: str, generated: Path) -> str | None:
    if value.startswith("data/generated/"):
        return str(generated / value)
    if value.startswith("../shared/"):
        path = (ROOT / value).resolve()
        return str(path) if path.exists() else None
    return value


@pytest.mark.parametrize("name", _decoder_configs())
def test_a_shipped_config_fits_its_data_or_says_why_not(name, generated, tmp_path, capsys):
    from finetune_kit.check import check

    raw = read_yaml_config(name)
    model = str(raw.get("model_name_or_path", ""))
    if "/" in model and not model.startswith(("runs/", "data/generated/")):
        pytest.skip("a hub checkpoint: needs the network")
    argv = ["--config", name, "--output_dir", str(tmp_path / "out")]
    if model.startswith("data/generated/"):  # a model the data command writes (seq2seq: a T5 built from a config)
        argv += ["--model_name_or_path", _local(model, generated)]
    for key in ("dataset_name", "eval_dataset_name", "test_dataset_name", "zero_shot_dataset_name"):
        if key in raw:
            local = _local(str(raw[key]), generated)
            if local is None:
                pytest.skip(f"{raw[key]} is not here (../shared: {SHARED.exists()})")
            argv += [f"--{key}", local]
    if str(raw.get("model_name_or_path", "")).startswith("runs/"):  # a later stage of `make rlhf`: the same
        argv += ["--model_name_or_path", "smollm2-135m-instruct"]  # tokenizer, from the base it started from
    if str(raw.get("reward_model", "")).startswith("runs/"):  # the reward stage's run: check finds it, loads nothing
        argv += ["--reward_model", "smollm2-135m-instruct"]
    code = check(argv)
    out = capsys.readouterr().out
    truncated = [line for line in out.splitlines() if TRUNCATION.search(line)]
    accepted = ACCEPTED in (CONFIGS_DIR / f"{name}.yaml").read_text()
    assert code in (0, 1), out
    assert not truncated or accepted, f"{name}: {truncated[0]} Raise max_length, or say why in '{ACCEPTED}'."
