"""From a clone, `python recipes/text_classification.py` or `accelerate launch recipes/text_classification.py`:
runs finetune_kit.recipes.text_classification."""
from finetune_kit.recipes import launch

launch(__file__)
