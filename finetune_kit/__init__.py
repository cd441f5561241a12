"""finetune_kit: fine-tune pretrained transformer checkpoints with the Hugging Face stack.

The helpers the recipes use, importable for your own scripts:

    from finetune_kit import parse_config, SFTRecipeConfig, load_tokenizer, load_causal_lm, load_sft_datasets

Names load lazily, so `import finetune_kit` stays cheap until a helper is used.
"""

from __future__ import annotations

import importlib
import logging
import os

__version__ = "0.1.0"

# bitsandbytes logs on every import, on every CPU without the optional `kernels` package, that a hub kernel could not
# load; its own CPU path works. Dropped here, precisely (FINETUNE_KIT_VERBOSE=1 keeps it).
if os.environ.get("FINETUNE_KIT_VERBOSE", "") in ("", "0"):
    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(lambda record: "kernels-community" not in
                                                                 record.getMessage())

# A CUDA torchvision beside a CPU torch (PyPI's wheels on this project's machines) fails its own import, and with it
# transformers' and timm's; finetune_kit/torchvision_compat.py. An import hook only: nothing heavy is imported here.
from finetune_kit import torchvision_compat as _torchvision_compat

_torchvision_compat.install()



def quiet_libraries() -> None:
    """At the command-line boundary (errors.run_cli), unless FINETUNE_KIT_VERBOSE=1: FutureWarnings that the
    libraries address to their callers' authors (us: `is_gradient_checkpointing is deprecated`, ...) are not shown to
    users, and outside a terminal (a log file, CI; not a notebook) the weight-loading bars, which a log shows as
    hundreds of redrawn lines, are off. Scripts that import finetune_kit keep the libraries' defaults."""
    import sys
    import warnings

    if os.environ.get("FINETUNE_KIT_VERBOSE", "") not in ("", "0"):
        return
    warnings.filterwarnings("ignore", category=FutureWarning,
                            module=r"(transformers|trl|peft|accelerate|datasets|torch|huggingface_hub)(\.|$)")
    if not sys.stderr.isatty() and "ipykernel" not in sys.modules:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read when huggingface_hub / transformers load
        if "transformers" in sys.modules:
            from transformers.utils import logging as transformers_logging

            transformers_logging.disable_progress_bar()


_EXPORTS = {
    "parse_config": "finetune_kit.config",
    "ModelArguments": "finetune_kit.config",
    "DataArguments": "finetune_kit.config",
    "RunArguments": "finetune_kit.config",
    "SFTRecipeConfig": "finetune_kit.config_decoder",
    "SFTTrainingArguments": "finetune_kit.config_decoder",
    "load_tokenizer": "finetune_kit.models",
    "load_causal_lm": "finetune_kit.models",
    "load_for_inference": "finetune_kit.models",
    "resolve_checkpoint": "finetune_kit.models",
    "load_rows": "finetune_kit.data",
    "load_sft_datasets": "finetune_kit.data",
    "tokenize_sft_dataset": "finetune_kit.data",
    "tokenize_conversation": "finetune_kit.data",
    "UserError": "finetune_kit.errors",
    "prepare_trainer": "finetune_kit.trainer_setup",
    "atomic_checkpoints": "finetune_kit.checkpoints",
    "write_report": "finetune_kit.report",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'finetune_kit' has no attribute {name!r}")
