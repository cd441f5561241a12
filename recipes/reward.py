"""From a clone, `python recipes/reward.py` or `accelerate launch recipes/reward.py`:
runs finetune_kit.recipes.reward."""
from finetune_kit.recipes import launch

launch(__file__)
