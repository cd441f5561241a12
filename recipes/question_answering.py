"""From a clone, `python recipes/question_answering.py` or `accelerate launch recipes/question_answering.py`:
runs finetune_kit.recipes.question_answering."""
from finetune_kit.recipes import launch

launch(__file__)
