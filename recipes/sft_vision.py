"""From a clone, `python recipes/sft_vision.py` or `accelerate launch recipes/sft_vision.py`: runs
finetune_kit.recipes.sft_vision."""
from finetune_kit.recipes import launch

launch(__file__)
