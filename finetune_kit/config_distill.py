"""The distill recipe's config: a student, a teacher (`teacher_model_name_or_path`, trl's key) and trl's GKD options.

Its own module beside config_decoder.py: the student part (`student_config`) is the one thing no other recipe has.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field

from trl.import_utils import TRLExperimentalWarning

from finetune_kit.config import DataArguments, ModelArguments, RunArguments
from finetune_kit.config_decoder import TrlMachineDefaults

# trl 1.16's stable DistillationTrainer only trains on the student's own samples (it reads the prompt column and
# generates); GKD also trains on the data's answers (lmbda: the share of on-policy steps), which a student built
# from a config needs first. GKD lives in trl.experimental, whose import warns on every run; tests/test_distill.py
# trains the recipe, so an API change is caught there.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", TRLExperimentalWarning)
    from trl.experimental.gkd import GKDConfig


@dataclass
class StudentArguments(ModelArguments):
    """The student: `model_name_or_path` as a checkpoint, or, with `student_config`, a new model of its architecture."""

    student_config: dict | str | None = field(default=None, metadata={
        "help": "Build the student from model_name_or_path's config with these values replaced (e.g. "
                "{num_hidden_layers: 4, hidden_size: 192, intermediate_size: 512, num_attention_heads: 3, "
                "num_key_value_heads: 1}): its architecture, tokenizer and vocabulary, new random weights, all "
                "trained. Unset: model_name_or_path's weights are the student."})

    def __post_init__(self):
        if isinstance(self.student_config, str):  # a command-line value: JSON, as transformers' dict keys take it
            try:
                self.student_config = json.loads(self.student_config)
            except json.JSONDecodeError as err:
                raise ValueError(f"student_config must be a mapping (JSON on the command line): {err}") from None
        super().__post_init__()


@dataclass
class DistillTrainingArguments(TrlMachineDefaults, GKDConfig):
    """trl's `GKDConfig` (teacher_model_name_or_path, lmbda, beta, temperature, max_new_tokens, seq_kd) with machine
    bf16."""


@dataclass
class DistillRecipeConfig:
    """The distill recipe: a student learns a teacher's next-token distributions (trl's GKDTrainer)."""

    model: StudentArguments
    data: DataArguments
    training: DistillTrainingArguments
    run: RunArguments
