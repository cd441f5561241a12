"""From a clone, `python recipes/distill.py` or `accelerate launch recipes/distill.py`:
runs finetune_kit.recipes.distill."""
from finetune_kit.recipes import launch

launch(__file__)
