"""`python -m finetune_kit.recipes`: rewrite finetune_kit/recipes/keys.json (run after adding or changing a key)."""
from finetune_kit.recipes import KEYS_FILE, write_key_index

print(f"{KEYS_FILE}: {len(write_key_index())} recipes")
