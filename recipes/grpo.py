"""From a clone, `python recipes/grpo.py` or `accelerate launch recipes/grpo.py`:
runs finetune_kit.recipes.grpo."""
from finetune_kit.recipes import launch

launch(__file__)
