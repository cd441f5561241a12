"""The clip recipe's config: a dual-encoder checkpoint (CLIP, SigLIP), image + caption data, the caption template
that turns a label into text, and the held-out labelled images of the zero-shot evaluation.

Its own module beside config_tasks.py: the only recipe whose rows hold an image and a text together.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from finetune_kit.config import DataArguments, ModelArguments, RunArguments, TrainerArguments

TEXT_PADDINGS = ("auto", "longest", "max_length")
TOWERS = ("none", "vision", "text")


@dataclass
class ImageTextArguments:
    """Which fields hold the image and the caption, how a label becomes a caption, and the zero-shot images."""

    image_column: str = field(default="image", metadata={
        "help": "CSV / JSON(L): field with the image path (relative paths are read from the file's folder)."})
    caption_column: str = field(default="caption", metadata={"help": "CSV / JSON(L): field with the caption."})
    label_column: str = field(default="label", metadata={
        "help": "A CSV / JSON(L) zero_shot_dataset_name: field with the class label of each image."})
    caption_template: str = field(default="a photo of a {label}.", metadata={
        "help": "The text of a label: the caption of every image of an image folder root/<label>/*, and the one "
                "prompt per class of the zero-shot evaluation. Underscores in a label read as spaces."})
    zero_shot_dataset_name: str | None = field(default=None, metadata={
        "help": "Held-out labelled images (a folder root/<label>/*, or a CSV / JSON(L) with image_column and "
                "label_column), classified zero-shot before and after training. Unset: the validation split of a "
                "training image folder, if there is one."})
    max_length: int | None = field(default=None, metadata={
        "help": "Longest tokenized caption; longer ones are truncated (`check` counts them). Unset: the text "
                "tower's max_position_embeddings (77 for CLIP)."})
    text_padding: str = field(default="auto", metadata={
        "help": "How captions of a batch are padded. auto: max_length for SigLIP (its text tower pools the last "
                "position, as it was trained), longest otherwise.", "choices": TEXT_PADDINGS})
    freeze_tower: str = field(default="none", metadata={
        "help": "Train one tower only: vision keeps the image tower (and its projection) fixed and tunes the text "
                "side to it (LiT); text the reverse.", "choices": TOWERS})


@dataclass
class CLIPRecipeConfig:
    """The clip recipe: image-text contrastive fine-tuning of a dual encoder, zero-shot scored before and after."""

    model: ModelArguments
    data: DataArguments
    task: ImageTextArguments
    training: TrainerArguments
    run: RunArguments
