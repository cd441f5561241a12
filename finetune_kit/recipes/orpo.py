"""ORPO: odds-ratio preference optimisation of a causal LM on chosen / rejected pairs, with trl's ORPOTrainer.

    finetune-kit train orpo --config orpo_lora_smollm2 [--key value ...]
    accelerate launch -m finetune_kit.recipes.orpo --config orpo_lora_smollm2

One loss does SFT and preference at once (Hong et al. 2024): the NLL of the chosen answer minus `beta` (λ) times
the log-sigmoid of the log odds ratio between chosen and rejected, both from length-averaged log-probabilities.
There is no reference model, so no second forward pass and no frozen copy, and no SFT stage is needed first.
Held-out reward accuracy and margin (beta times the averaged log-probability, chosen minus rejected) are reported
before and after training when there is validation data; unlike DPO's, they are not zero before training.
"""

from __future__ import annotations

import warnings

from trl.import_utils import TRLExperimentalWarning

with warnings.catch_warnings():  # trl.experimental's import notice, for every run: see finetune_kit/config_decoder.py
    warnings.simplefilter("ignore", TRLExperimentalWarning)
    from trl.experimental.orpo import ORPOTrainer

from finetune_kit.config_decoder import ORPORecipeConfig
from finetune_kit.errors import run_cli
from finetune_kit.recipes.cpo import train_reference_free


def main(argv: list[str] | None = None) -> dict:
    # trl's ORPOTrainer takes CPOTrainer's arguments and data: the same recipe (pairs whose prompt fills max_length
    # refused or dropped, held-out margins before and after), another loss.
    return train_reference_free("orpo", ORPORecipeConfig, ORPOTrainer, argv)


if __name__ == "__main__":
    run_cli(main)
