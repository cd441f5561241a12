"""From a clone, `python recipes/masked_lm.py` or `accelerate launch recipes/masked_lm.py`:
runs finetune_kit.recipes.masked_lm."""
from finetune_kit.recipes import launch

launch(__file__)
