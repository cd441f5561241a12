"""From a clone, `python recipes/pretrain.py` or `accelerate launch recipes/pretrain.py`:
runs finetune_kit.recipes.pretrain."""
from finetune_kit.recipes import launch

launch(__file__)
