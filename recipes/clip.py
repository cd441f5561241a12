"""From a clone, `python recipes/clip.py` or `accelerate launch recipes/clip.py`: runs
finetune_kit.recipes.clip."""
from finetune_kit.recipes import launch

launch(__file__)
