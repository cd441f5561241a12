"""From a clone, `python recipes/seq2seq.py` or `accelerate launch recipes/seq2seq.py`: runs
finetune_kit.recipes.seq2seq."""
from finetune_kit.recipes import launch

launch(__file__)
