"""From a clone, `python recipes/orpo.py` or `accelerate launch recipes/orpo.py`:
runs finetune_kit.recipes.orpo."""
from finetune_kit.recipes import launch

launch(__file__)
