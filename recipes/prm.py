"""From a clone, `python recipes/prm.py` or `accelerate launch recipes/prm.py`:
runs finetune_kit.recipes.prm."""
from finetune_kit.recipes import launch

launch(__file__)
