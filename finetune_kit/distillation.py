"""Pieces of the distill recipe: a student built from a config, conversations for GKD's collator, and how closely a
student follows its teacher (next-token top-1 agreement and KL over the answer tokens)."""

from __future__ import annotations

import torch
from huggingface_hub.errors import StrictDataclassError

from finetune_kit.errors import ConfigError, DataError, UserError


def student_config(template: str, values: dict, trust_remote_code: bool = False):
    """The config of a new student: `template`'s (architecture, tokenizer and vocabulary) with `values` replacing its
    own (layers, widths, heads), checked by transformers; the head size follows hidden_size / heads unless given.
    No weights are read: a mistake here is named before the data is tokenized or a model loads."""
    from transformers import AutoConfig

    from finetune_kit.models import resolve_checkpoint

    base = AutoConfig.from_pretrained(resolve_checkpoint(template), trust_remote_code=trust_remote_code).to_dict()
    unknown = sorted(set(values) - set(base))
    if unknown:
        raise ConfigError(f"student_config: {template}'s config ({base.get('model_type')}) has no "
                          f"{', '.join(unknown)}; its keys include {', '.join(sorted(base)[:12])}, ...")
    if "head_dim" in base and "head_dim" not in values and {"hidden_size", "num_attention_heads"} & set(values):
        base.pop("head_dim")  # recomputed from the new sizes, not kept from the template's
    try:
        return AutoConfig.for_model(**{**base, **values})
    # Sizes that do not fit together (hidden_size not a multiple of the heads ...): transformers' config validators
    # raise huggingface_hub's StrictDataclassError, which is no ValueError.
    except (ValueError, TypeError, StrictDataclassError) as err:
        raise ConfigError(f"student_config {values}: {template}'s architecture cannot take it "
                          f"({str(err).strip().splitlines()[-1].strip()}).") from None


def require_shared_vocabulary(student, teacher, student_name: str, teacher_name: str) -> None:
    """GKD compares full next-token distributions: one vocabulary, or every position compares different tokens."""
    sizes = student.config.get_text_config().vocab_size, teacher.config.get_text_config().vocab_size
    if sizes[0] != sizes[1]:
        raise UserError(f"student {student_name} has a vocabulary of {sizes[0]} tokens, teacher {teacher_name} of "
                        f"{sizes[1]}: distillation compares next-token distributions, so both need the same tokenizer.")


def as_conversations(dataset, where: str):
    """Rows as GKD's collator reads them (`messages`, the last assistant turn the answer distilled on): conversations
    pass; prompt / completion strings become a user and an assistant turn (rendered by the chat template); text rows
    have no answer to distil on and are refused."""
    if "messages" in dataset.column_names:
        return dataset
    if "completion" in dataset.column_names:
        return dataset.map(lambda row: {"messages": [{"role": "user", "content": row["prompt"]},
                                                     {"role": "assistant", "content": row["completion"]}]},
                           remove_columns=dataset.column_names)
    raise DataError(f"{where}: plain text rows have no answer to distil on; distill takes conversations (messages, "
                    "sharegpt, alpaca) or prompt / completion rows.")


@torch.no_grad()
def agreement(student, teacher, collator, rows, batch_size: int = 8) -> dict:
    """How closely the student follows the teacher on `rows`' answer tokens, teacher-forced (the positions GKD trains
    on: labels not -100): the share of positions where both rank the same next token first, and the mean KL(teacher
    || student) per token, in nats."""
    was_training = student.training
    student.eval()
    teacher.eval()
    device = next(student.parameters()).device
    same = kl = count = 0.0
    for start in range(0, len(rows), batch_size):
        batch = collator([rows[i] for i in range(start, min(start + batch_size, len(rows)))])
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        scored = batch["labels"][:, 1:].to(device) != -100
        s = student(input_ids=ids, attention_mask=mask).logits[:, :-1][scored].float()
        t = teacher(input_ids=ids, attention_mask=mask).logits[:, :-1][scored].float()
        same += (s.argmax(-1) == t.argmax(-1)).sum().item()
        t_log, s_log = t.log_softmax(-1), s.log_softmax(-1)
        kl += (t_log.exp() * (t_log - s_log)).sum().item()
        count += scored.sum().item()
    student.train(was_training)
    return {"top1_agreement": round(same / max(count, 1), 4), "kl_teacher_student": round(kl / max(count, 1), 4),
            "answer_tokens": int(count)}
