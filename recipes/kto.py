"""From a clone, `python recipes/kto.py` or `accelerate launch recipes/kto.py`:
runs finetune_kit.recipes.kto."""
from finetune_kit.recipes import launch

launch(__file__)
