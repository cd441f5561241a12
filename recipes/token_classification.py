"""From a clone, `python recipes/token_classification.py` or `accelerate launch recipes/token_classification.py`:
runs finetune_kit.recipes.token_classification."""
from finetune_kit.recipes import launch

launch(__file__)
