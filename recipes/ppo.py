"""From a clone, `python recipes/ppo.py` or `accelerate launch recipes/ppo.py`:
runs finetune_kit.recipes.ppo."""
from finetune_kit.recipes import launch

launch(__file__)
