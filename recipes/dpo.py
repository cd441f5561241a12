"""From a clone, `python recipes/dpo.py` or `accelerate launch recipes/dpo.py`:
runs finetune_kit.recipes.dpo."""
from finetune_kit.recipes import launch

launch(__file__)
