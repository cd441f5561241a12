"""From a clone, `python recipes/cpo.py` or `accelerate launch recipes/cpo.py`:
runs finetune_kit.recipes.cpo."""
from finetune_kit.recipes import launch

launch(__file__)
