"""The recipe table: the one place that says what each recipe is.

A recipe is a module of this package (`finetune_kit/recipes/<name>.py`, a `main(argv)` you can read top to bottom)
plus one row below. The CLI (`train`, `check`, `recipes`, `init`, `inspect`, `tune`) and the benchmark harness read
this table and nothing else; adding a recipe means its module, its config type, one row, its YAML and its test.

Rows name their module and config type as strings, imported when used: listing recipes imports no trainer.

    python -m finetune_kit.recipes.sft --config sft_lora_smollm2
    accelerate launch -m finetune_kit.recipes.sft --config sft_lora_smollm2
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from finetune_kit import config_checks as cc
from finetune_kit import config_checks_recipes as rc
from finetune_kit.errors import ConfigError, UserError
from finetune_kit.yaml_config import (
    CONFIGS_DIR,
    RECIPE_KEY,
    config_argument,
    config_path,
    keys_in,
    read_yaml_config,
    shipped_configs,
)


@dataclass(frozen=True)
class Recipe:
    name: str
    summary: str
    config: str  # "module:Class" of its typed config
    family: str  # which checkpoints fit it (`finetune-kit inspect`): decoder | encoder | encoder-decoder | vision
    # How `check` validates and measures its data rows: sft (the chat / instruction formats), text, pair
    # (prompt + chosen / rejected), scored_pair (a pair and an optional margin: reward models), unpaired (prompt +
    # completion + label), prompt; None: config check only.
    rows: str | None = None
    # Sequences one training example puts through the model at once (chosen and rejected: 2; KTO's completion and
    # its mismatched KL completion: 2): scales the activation term of the memory estimate and auto checkpointing.
    sequences_per_example: int = 1
    # Its trainer keeps each prompt whole and cuts only the answers to max_length (trl's ORPO / CPO): a prompt that
    # fills max_length leaves nothing to score, so such pairs are refused (or skipped) by train and check alike.
    keeps_prompt_whole: bool = False
    # Keys of the shared parts (model, data, run) that this recipe does not read: refused by name when set, never
    # accepted and ignored.
    unread: tuple[str, ...] = ()
    # Where only some keys of the training part reach the trainer (our PPO loop): those keys; others are refused.
    training_reads: tuple[str, ...] | None = None
    # The config checks it runs (finetune_kit.config_checks, config_checks_recipes): in the pre-import preflight
    # and in parse_config alike.
    checks: tuple = ()
    # Recipes without a `rows` kind: "module:function" reading and validating every data row of a config (the
    # function the recipe itself calls first), which the preflight runs before any library loads.
    data_check: str | None = None
    # Recipes without a `rows` kind: "module:function(cfg, tokenizer)" that `check` calls to measure every row in
    # tokens and refuse (or count) what the recipe would.
    length_check: str | None = None
    module: str = ""  # default: finetune_kit.recipes.<name>

    def config_type(self) -> type:
        return _named(self.config)

    def check_data(self, cfg) -> None:
        if self.data_check:
            _named(self.data_check)(cfg)

    def measure_rows(self, cfg, tokenizer) -> list[str]:
        return _named(self.length_check)(cfg, tokenizer) if self.length_check else []

    def load(self):
        return importlib.import_module(self.module or f"finetune_kit.recipes.{self.name}")

    def shipped_configs(self) -> list[str]:
        return configs_by_recipe().get(self.name, [])


def _named(spec: str):
    """The object a "module:name" string of the table names, imported when used."""
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


_DEC, _TASK = "finetune_kit.config_decoder", "finetune_kit.config_tasks"
# The encoder and vision recipes load with `from_pretrained` on the checkpoint and read local files: the decoder
# loader's revision / dtype / attention / quantization keys and the hub-dataset keys do nothing there. They set the
# LoRA task type themselves (the head must be trained and saved).
_ENCODER_UNREAD = ("model_revision", "dtype", "attn_implementation", "load_in_8bit", "load_in_4bit",
                   "bnb_4bit_quant_type", "use_bnb_nested_quant", "bnb_4bit_quant_storage", "lora_task_type",
                   "dataset_config", "dataset_train_split", "dataset_format", "skip_invalid_rows", "datasets",
                   "mix_strategy", "streaming")
# seq2seq loads like the encoders, but reads hub datasets (dataset_config: a WMT language pair) and skips invalid rows;
# transformers 5 reads no `sortish_sampler`.
_SEQ2SEQ_UNREAD = (*(k for k in _ENCODER_UNREAD
                     if k not in ("dataset_config", "dataset_train_split", "skip_invalid_rows")), "sortish_sampler")
# Recipes whose rows have one fixed shape (a normaliser): dataset_format is not theirs to choose. They read their
# data whole (streaming: sft and pretrain only; mixtures: every decoder recipe).
_SHAPED = ("dataset_format", "streaming")
# trl's ORPO / CPO configs carry keys for encoder-decoder models and for a model named by string (model_init_kwargs
# would raise there: the recipes load the model themselves); these decoder recipes read none of them.
_PAIRS_UNREAD = (*_SHAPED, "max_completion_length", "is_encoder_decoder", "model_init_kwargs")
# GKD is an SFTTrainer whose own collator renders the conversations and whose own loss replaces SFT's: these SFT
# keys shape data or loss it never prepares or computes; the student and teacher are loaded by the recipe, which
# reads its data whole (no streaming).
_DISTILL_UNREAD = ("streaming", "packing", "packing_strategy", "padding_free", "eval_packing", "dataset_text_field",
                   "dataset_num_proc", "dataset_kwargs", "completion_only_loss", "assistant_only_loss", "loss_type",
                   "truncation_mode", "pad_to_multiple_of", "label_smoothing_factor", "router_aux_loss_coef",
                   "chat_template_path", "model_init_kwargs", "teacher_model_init_kwargs")
# SFT on image rows: trl skips its dataset preparation (the vision collator encodes each batch) and refuses packing /
# padding-free / keep_end for them, so these SFT keys shape nothing; rows have one shape (conversations with images),
# read whole (no mixtures, no stream); the model is loaded by the recipe (no model_init_kwargs).
_SFT_VISION_UNREAD = ("dataset_format", "datasets", "mix_strategy", "streaming", "packing", "packing_strategy",
                      "padding_free", "eval_packing", "dataset_text_field", "dataset_num_proc", "dataset_kwargs",
                      "completion_only_loss", "truncation_mode", "shuffle_dataset", "model_init_kwargs")
# What our PPO loop (finetune_kit/rl/ppo.py) reads of transformers' TrainingArguments: AdamW, clipping, steps, saving.
_PPO_TRAINING = ("output_dir", "seed", "learning_rate", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon",
                 "max_grad_norm", "max_steps", "logging_steps", "save_strategy", "save_steps",
                 "resume_from_checkpoint", "bf16", "fp16", "use_cpu", "trust_remote_code",
                 "report_to")  # accepted as `none` only (config_decoder.ppo_reports_nowhere)
_COMMON = cc.COMMON_CHECKS
_GUARD_CHECKS = (rc.guard_ranges, rc.best_policy_needs_held_out)
_PPO_CHECKS = (*_COMMON, rc.has_reward_source, rc.reward_weights_match_sources, rc.ppo_needs_adapter,
               rc.ppo_batches_divide, rc.ppo_ranges,
               *_GUARD_CHECKS, rc.ppo_needs_max_steps, rc.ppo_reports_nowhere)
_CLASSIFIER_CHECKS = (*_COMMON, rc.classifier_splits_in_range, rc.weights_or_balanced_sampling,
                      rc.freeze_layers_not_negative, rc.one_test_source)
RECIPES: list[Recipe] = [
    Recipe("sft", "supervised fine-tuning of a causal LM on instruction / chat data (LoRA, QLoRA, DoRA, full)",
           f"{_DEC}:SFTRecipeConfig", "decoder", rows="sft", checks=_COMMON),
    Recipe("pretrain", "continued causal-LM pretraining on plain text (packed blocks)",
           f"{_DEC}:PretrainConfig", "decoder", rows="text", unread=("dataset_format",), checks=_COMMON),
    Recipe("reward", "a reward model: one-score head on a causal LM, trained on preference pairs",
           f"{_DEC}:RewardRecipeConfig", "decoder", rows="scored_pair", sequences_per_example=2, unread=_SHAPED,
           checks=(*_COMMON, rc.reward_head_with_lora)),
    # Step-labelled rows have one shape and are read whole, problems kept together (no mixtures); the recipe sets
    # the LoRA task type itself (TOKEN_CLS: the new head is trained and saved).
    Recipe("prm", "a process reward model: scores each reasoning step (token head at the step separator), ranks "
           "solutions; a reward for grpo / ppo", f"{_DEC}:PRMRecipeConfig", "decoder",
           unread=(*_SHAPED, "datasets", "mix_strategy", "lora_task_type"),
           checks=(*_COMMON, rc.step_separator_given), data_check="finetune_kit.tasks.steps:step_splits"),
    Recipe("dpo", "direct preference optimisation on chosen / rejected pairs (trl DPOTrainer)",
           f"{_DEC}:DPORecipeConfig", "decoder", rows="pair", sequences_per_example=2, unread=_SHAPED,
           checks=(*_COMMON, rc.beta_positive)),
    Recipe("kto", "KTO on unpaired desirable / undesirable answers (trl KTOTrainer)",
           f"{_DEC}:KTORecipeConfig", "decoder", rows="unpaired", sequences_per_example=2, unread=_SHAPED,
           checks=(*_COMMON, rc.beta_positive)),
    Recipe("orpo", "odds-ratio preference optimisation: SFT and preference in one loss, no reference model "
           "(trl ORPOTrainer)", f"{_DEC}:ORPORecipeConfig", "decoder", rows="pair", sequences_per_example=2,
           unread=_PAIRS_UNREAD, checks=(*_COMMON, rc.beta_positive), keeps_prompt_whole=True),
    Recipe("cpo", "contrastive preference optimisation and SimPO (loss_type simpo, cpo_alpha 0), no reference model "
           "(trl CPOTrainer)", f"{_DEC}:CPORecipeConfig", "decoder", rows="pair", sequences_per_example=2,
           unread=_PAIRS_UNREAD, checks=(*_COMMON, rc.beta_positive, rc.cpo_alpha_not_negative),
           keeps_prompt_whole=True),
    Recipe("ppo", "PPO with a value head against a reward model or reward functions (our loop)",
           f"{_DEC}:PPORecipeConfig", "decoder", rows="prompt", unread=_SHAPED, training_reads=_PPO_TRAINING,
           checks=_PPO_CHECKS),
    Recipe("grpo", "group-relative policy optimisation against reward models / functions (trl GRPOTrainer)",
           f"{_DEC}:GRPORecipeConfig", "decoder", rows="prompt", unread=(*_SHAPED, "max_prompt_length"),
           checks=(*_COMMON, rc.has_reward_source, rc.reward_weights_match_sources, *_GUARD_CHECKS)),
    Recipe("rloo", "REINFORCE leave-one-out against reward models / functions (trl RLOOTrainer)",
           f"{_DEC}:RLOORecipeConfig", "decoder", rows="prompt", unread=(*_SHAPED, "max_prompt_length"),
           checks=(*_COMMON, rc.has_reward_source, rc.reward_weights_match_sources, *_GUARD_CHECKS)),
    Recipe("online_dpo", "online DPO: two sampled answers per prompt, a reward model / function picks the chosen one "
           "(trl OnlineDPOTrainer)", f"{_DEC}:OnlineDPORecipeConfig", "decoder", rows="prompt",
           sequences_per_example=2, unread=(*_SHAPED, "max_prompt_length", "reward_model_path", "model_init_kwargs"),
           checks=(*_COMMON, rc.has_reward_source, rc.reward_weights_match_sources, rc.betas_positive,
                   *_GUARD_CHECKS)),
    Recipe("distill", "knowledge distillation: a student learns a teacher's next-token distributions on SFT data "
           "(trl GKDTrainer)", "finetune_kit.config_distill:DistillRecipeConfig", "decoder", rows="sft",
           unread=_DISTILL_UNREAD, checks=(*_COMMON, rc.distill_has_teacher, rc.student_config_trains_whole)),
    Recipe("sft_vision", "supervised fine-tuning of a vision-language model (SmolVLM, LLaVA, Qwen2-VL) on image + chat "
           "rows (LoRA on the language model, or full)", "finetune_kit.config_vision_chat:VisionSFTRecipeConfig",
           "vision-language", unread=_SFT_VISION_UNREAD, checks=(*_COMMON, rc.sampling_without_lengths),
           data_check="finetune_kit.tasks.vision_chat:chat_splits",
           length_check="finetune_kit.tasks.vision_chat:check_lengths"),
    Recipe("text_classification", "sequence classification or regression with a BERT-family encoder",
           f"{_TASK}:TextClassificationConfig", "encoder", unread=_ENCODER_UNREAD, checks=_CLASSIFIER_CHECKS,
           data_check="finetune_kit.tasks.classification:labelled_splits"),
    Recipe("token_classification", "token classification (NER, tagging) with a BERT-family encoder",
           f"{_TASK}:TokenClassificationConfig", "encoder",
           unread=(*_ENCODER_UNREAD, "column_mapping", "split_seed"), checks=_COMMON,
           data_check="finetune_kit.tasks.tokens:tagged_splits"),
    Recipe("question_answering", "extractive question answering on SQuAD-format data",
           f"{_TASK}:QuestionAnsweringConfig", "encoder", unread=(*_ENCODER_UNREAD, "column_mapping"),
           checks=(*_COMMON, rc.stride_below_window, rc.null_calibration_in_range),
           data_check="finetune_kit.tasks.qa:question_splits"),
    Recipe("masked_lm", "continued masked-LM pretraining of a BERT-family encoder",
           f"{_TASK}:MaskedLMConfig", "encoder", unread=(*_ENCODER_UNREAD, "column_mapping"),
           checks=(*_COMMON, rc.mlm_probability_in_range), data_check="finetune_kit.tasks.mlm:text_splits",
           length_check="finetune_kit.tasks.mlm:check_blocks"),
    Recipe("seq2seq", "seq2seq fine-tuning of an encoder-decoder model (T5, BART, Marian, mT5): translation, "
           "summarization, text-to-text; generation-based evaluation",
           "finetune_kit.config_seq2seq:Seq2SeqRecipeConfig", "encoder-decoder", unread=_SEQ2SEQ_UNREAD,
           checks=(*_COMMON, rc.translation_languages_paired), data_check="finetune_kit.tasks.seq2seq:pair_splits",
           length_check="finetune_kit.tasks.seq2seq:check_lengths"),
    Recipe("image_classification", "image classification with a ViT or a timm model (folders or a CSV / JSON of paths)",
           f"{_TASK}:ImageClassificationConfig", "vision",
           unread=(*_ENCODER_UNREAD, "column_mapping", "eval_dataset_name", "tokenizer_name_or_path"),
           checks=(*_COMMON, rc.classifier_splits_in_range),
           data_check="finetune_kit.tasks.images:labelled_image_splits"),
    # Local image files only (no hub datasets): a row is an image and its caption, read by caption_column.
    Recipe("clip", "image-text contrastive fine-tuning of a dual encoder (CLIP, SigLIP), zero-shot classification "
           "scored before and after", "finetune_kit.config_clip:CLIPRecipeConfig", "image-text",
           unread=(*_ENCODER_UNREAD, "column_mapping", "tokenizer_name_or_path"),
           checks=(*_COMMON, rc.caption_template_names_label),
           data_check="finetune_kit.tasks.image_text:image_text_splits",
           length_check="finetune_kit.tasks.image_text:check_lengths"),
]


def refused_key(recipe: Recipe, key: str, training_keys: set[str]) -> str | None:
    """Why `recipe` refuses a key the user set, or None: a key it would accept and then ignore."""
    if key in recipe.unread:
        return f"key '{key}' does nothing in the {recipe.name} recipe; remove it"
    if recipe.training_reads is not None and key in training_keys and key not in recipe.training_reads:
        return (f"key '{key}' does nothing in the {recipe.name} recipe (its training loop reads only "
                f"{', '.join(recipe.training_reads)}); remove it")
    return None


def configs_by_recipe() -> dict[str, list[str]]:
    """The shipped configs of each recipe, each file read once."""
    mapping: dict[str, list[str]] = {}
    for name in shipped_configs():
        mapping.setdefault(recipe_named_by(CONFIGS_DIR / f"{name}.yaml"), []).append(name)
    return mapping


def names() -> list[str]:
    return [r.name for r in RECIPES]


def get(name: str) -> Recipe:
    for recipe in RECIPES:
        if recipe.name == name:
            return recipe
    raise UserError(f"unknown recipe '{name}'; available: {', '.join(names())} (`finetune-kit recipes` lists them).")


def for_family(family: str) -> list[str]:
    return [r.name for r in RECIPES if r.family == family]


def for_config_type(config_type: type) -> Recipe | None:
    return next((r for r in RECIPES if r.config.endswith(f":{config_type.__name__}")
                 and r.config_type() is config_type), None)


def recipe_named_by(value: str | Path) -> str | None:
    """The recipe a config names: its `recipe:` key, else the longest recipe name its file name starts with."""
    path = config_path(value)
    named = read_yaml_config(path).get(RECIPE_KEY)
    if named is not None:
        if not isinstance(named, str) or named not in names():
            raise ConfigError(f"{path}: key '{RECIPE_KEY}' must name a recipe ({', '.join(names())}), got {named!r}.")
        return named
    stem = path.stem
    return max((n for n in names() if stem == n or stem.startswith(n + "_")), key=len, default=None)


def require_recipe_key(row: Recipe, named, config_path: str) -> None:
    """A config that names its recipe (`recipe: dpo`) is refused by any other recipe."""
    if named != row.name:
        raise ConfigError(f"config file {config_path} is for recipe '{named}' (key '{RECIPE_KEY}'), not '{row.name}': "
                          f"run `finetune-kit train {named} --config {config_path}`, or change the key.")


def choose(explicit: str | None, argv: list[str], default: str | None = None) -> Recipe:
    """The recipe to run: the one named, else the one the config names (`recipe:` key, then file-name prefix).

    The config file is read here, before the recipe's module (and trl / transformers) is imported: a missing file,
    bad YAML or a key given twice is answered in well under a second."""
    row = get(explicit) if explicit else None
    config = config_argument(argv)
    if config:
        read_yaml_config(config)
    if row:
        precheck_keys(row, argv)
        return row
    named = recipe_named_by(config) if config else None
    if named:
        precheck_keys(get(named), argv)
        return get(named)
    if default:
        print(f"recipe: {default} (the config does not name one: add `{RECIPE_KEY}: <name>` to it, or pass the "
              "recipe's name)")
        return get(default)
    raise UserError(f"which recipe? Name it (`finetune-kit train sft --config ...`) or add `{RECIPE_KEY}: <name>` to "
                    f"the config; recipes: {', '.join(names())}.")


# Every key each recipe accepts: its part, how the command line converts it, its default and choices; and the keys
# of its training part. Written by `python -m finetune_kit.recipes` from the parser transformers builds for the config
# type, and checked against it by a test: the preflight (finetune_kit/preflight.py) names unknown, refused and
# out-of-range keys before trl / transformers are imported (~7 s on a small CPU), in well under a second.
KEYS_FILE = Path(__file__).resolve().parent / "keys.json"


def write_key_index() -> dict:
    import dataclasses
    import json

    from finetune_kit.config import _parser_for, _plain, config_parts, mapping_keys, non_nullable_keys

    index = {}
    for row in RECIPES:
        parts, mappings = config_parts(row.config_type()), mapping_keys(row.config_type())
        required = non_nullable_keys(row.config_type())
        part_of = {f.name: part for part, cls in parts.items() for f in dataclasses.fields(cls)}
        fields = {}
        for action in _parser_for(row.config_type())._actions:
            name = action.dest
            if name not in part_of or name in fields or action.option_strings[0] != f"--{name}":
                continue
            kind = getattr(action.type, "__name__", "")
            kind = ("raw" if name in mappings else "bool" if kind == "string_to_bool" else "choice"
                    if action.choices is not None else kind if kind in ("int", "float", "str") else "raw")
            fields[name] = [part_of[name], kind, action.nargs == "+", _plain(action.default),
                            [str(c) for c in action.choices] if action.choices is not None else None,
                            name not in required]  # nullable
        training = {f.name for f in dataclasses.fields(parts["training"])} if "training" in parts else set()
        index[row.name] = {"fields": dict(sorted(fields.items())), "training": sorted(training)}
    # One key a line: a changed key is a one-line diff.
    lines = [f'"{name}": {{"training": {json.dumps(entry["training"])}, "fields": {{\n' + ",\n".join(
        f"{json.dumps(key)}: {json.dumps(spec)}" for key, spec in entry["fields"].items()) + "}}"
        for name, entry in sorted(index.items())]
    KEYS_FILE.write_text("{\n" + ",\n".join(lines) + "\n}\n")
    return index


def key_index(row: Recipe) -> dict | None:
    """The row's entry of keys.json; None for a recipe added since it was written (the full parser answers)."""
    import json

    return json.loads(KEYS_FILE.read_text()).get(row.name) if KEYS_FILE.is_file() else None


def precheck_keys(row: Recipe, argv: list[str]) -> None:
    """Unknown and refused keys, from the YAML and the command line, named before the recipe imports anything."""
    from finetune_kit.yaml_config import unknown_key_message

    index = key_index(row)
    if index is None:
        return
    known, training = set(index["fields"]), set(index["training"])
    for key, where in keys_in(argv):
        plain = key[3:] if key.startswith("no_") and key[3:] in known else key  # argparse's --no_<flag> form
        if plain not in known:
            raise ConfigError(unknown_key_message(key, sorted(known), where))
        if (problem := refused_key(row, plain, training)) is not None:
            raise ConfigError(f"{problem} ({where}).")


def launch(script: str) -> None:
    """Run the recipe a repository launcher (`recipes/<name>.py`) is named after, as `finetune-kit train` does."""
    import sys

    from finetune_kit.errors import run_cli
    from finetune_kit.preflight import preflight

    row = get(Path(script).stem)

    def main(argv: list[str]) -> None:
        preflight(row, argv)
        row.load().main(argv)

    run_cli(main, sys.argv[1:])
