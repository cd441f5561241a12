"""From a clone, `python recipes/image_classification.py` or `accelerate launch recipes/image_classification.py`:
runs finetune_kit.recipes.image_classification."""
from finetune_kit.recipes import launch

launch(__file__)
