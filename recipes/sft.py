"""From a clone, `python recipes/sft.py` or `accelerate launch recipes/sft.py`:
runs finetune_kit.recipes.sft."""
from finetune_kit.recipes import launch

launch(__file__)
