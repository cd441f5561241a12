"""From a clone, `python recipes/online_dpo.py` or `accelerate launch recipes/online_dpo.py`:
runs finetune_kit.recipes.online_dpo."""
from finetune_kit.recipes import launch

launch(__file__)
