"""The seq2seq demo: a small T5 built from a config learns to write dates given in eight formats as ISO 8601.

"Friday, March 5, 2021", "5 Mar 2021", "05.03.2021", "the 5th of March 2021", ... -> "2021-03-05". Every format
is unambiguous (dotted dates are day first, as in German; slashed ones year first), so each answer can be checked
exactly. Dates run from 1950 to 2049; the test and validation dates are drawn first and never appear in training,
in any format, so a right test answer is a date the model never saw.

No pretrained T5 or T5 tokenizer loads offline, so `data` also writes, beside the rows:
- `tokenizer/`: a byte-level BPE (Hugging Face `tokenizers`) trained on the training rows, saved as a transformers
  tokenizer. Byte-level, so any text encodes and decodes back exactly (no unknown token); trained, so month names
  and years become a few tokens; `</s>` appended to every sequence, `<pad>` id 0, as T5's tokenizer does.
- `t5-from-config/`: a T5 (2 + 2 layers, d_model 128, ~1M parameters) with random weights and that tokenizer: a
  checkpoint folder like any other, so training, `predict`, `inspect` and scoring load it the usual way.

    python -m finetune_kit.demo_seq2seq data --out data/generated/dates
    python -m finetune_kit.demo_seq2seq score --model data/generated/dates/t5-from-config \
        --test data/generated/dates/test.jsonl
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
from pathlib import Path

FIRST, LAST = dt.date(1950, 1, 1), dt.date(2049, 12, 31)
SPLITS = {"test": 500, "validation": 200}  # dates drawn first; every other date of the range is a training date
SPECIAL = ["<pad>", "</s>", "<unk>"]  # T5's ids: pad 0 (also the decoder start), end of sequence 1
MODEL_SIZES = {"d_model": 128, "d_ff": 512, "d_kv": 32, "num_heads": 4, "num_layers": 2, "num_decoder_layers": 2}


def _ordinal(day: int) -> str:
    return f"{day}{'th' if 10 <= day % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(day % 10, 'th')}"


MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")  # spelled out: strftime's %B follows the machine's locale
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def _month(d: dt.date, short: bool = False) -> str:
    return MONTHS[d.month - 1][:3] if short else MONTHS[d.month - 1]


FORMATS = {
    "month_day_year": lambda d: f"{_month(d)} {d.day}, {d.year}",
    "day_month_year": lambda d: f"{d.day} {_month(d)} {d.year}",
    "short_month": lambda d: f"{_month(d, True)} {d.day}, {d.year}",
    "day_short_month": lambda d: f"{d.day} {_month(d, True)} {d.year}",
    "weekday": lambda d: f"{WEEKDAYS[d.weekday()]}, {_month(d)} {d.day}, {d.year}",
    "slashed_ymd": lambda d: f"{d.year}/{d.month:02d}/{d.day:02d}",
    "dotted_dmy": lambda d: f"{d.day:02d}.{d.month:02d}.{d.year}",
    "ordinal": lambda d: f"the {_ordinal(d.day)} of {_month(d)} {d.year}",
}


def split_dates(seed: int = 0) -> dict[str, list[dt.date]]:
    days = [FIRST + dt.timedelta(days=i) for i in range((LAST - FIRST).days + 1)]
    random.Random(seed).shuffle(days)
    out, start = {}, 0
    for name, size in SPLITS.items():
        out[name], start = days[start:start + size], start + size
    out["train"] = days[start:]
    return out


def rows_for(dates: list[dt.date], rng: random.Random) -> list[dict]:
    """One row per date, in a format drawn at random."""
    names = list(FORMATS)
    rows = []
    for date in dates:
        fmt = rng.choice(names)
        rows.append({"source": FORMATS[fmt](date), "target": date.isoformat(), "format": fmt})
    return rows


def train_tokenizer(texts: list[str], vocab_size: int = 400):
    """A byte-level BPE trained on `texts`, as a transformers tokenizer that ends every sequence with </s>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                             special_tokens=[("</s>", SPECIAL.index("</s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def t5_from_config(tokenizer, out: Path, seed: int = 0, **sizes) -> Path:
    """A T5 with random weights sized by MODEL_SIZES (or `sizes`), saved with `tokenizer` as a checkpoint folder."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    config = T5Config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id,
                      **{**MODEL_SIZES, **sizes})
    T5ForConditionalGeneration(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def make_dataset(out: Path, seed: int = 0) -> dict[str, int]:
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    rows = {name: rows_for(dates, rng) for name, dates in split_dates(seed).items()}
    for name, part in rows.items():
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    tokenizer = train_tokenizer([text for r in rows["train"] for text in (r["source"], r["target"])])
    tokenizer.save_pretrained(out / "tokenizer")
    t5_from_config(tokenizer, out / "t5-from-config", seed=seed)
    return {name: len(part) for name, part in rows.items()}


def score(model_path: str, test_path: Path, num_beams: int = 1) -> dict:
    """Greedy (or beam) outputs for every test row: exact match overall and per format, and the share that are a
    valid ISO date at all."""
    from finetune_kit.models import load_for_inference
    from finetune_kit.tasks.seq2seq import generate_texts

    rows = [json.loads(line) for line in test_path.read_text().splitlines() if line.strip()]
    model, tokenizer = load_for_inference(model_path, merge=True)
    outputs = generate_texts(model, tokenizer, [r["source"] for r in rows], max_new_tokens=16, num_beams=num_beams,
                             do_sample=False)
    results = [dict(r, output=o, correct=o == r["target"]) for r, o in zip(rows, outputs)]
    by_format = {fmt: round(sum(r["correct"] for r in results if r["format"] == fmt)
                            / max(1, sum(r["format"] == fmt for r in results)), 3) for fmt in FORMATS}
    return {"model": model_path, "rows": len(results),
            "exact_match": round(sum(r["correct"] for r in results) / len(results), 4),
            "valid_iso_date": round(sum(_is_iso(r["output"]) for r in results) / len(results), 4),
            "exact_match_by_format": by_format, "examples": results[:10]}


def _is_iso(text: str) -> bool:
    try:
        return dt.date.fromisoformat(text).isoformat() == text
    except ValueError:
        return False


def _figures(result: dict) -> str:
    return (f"exact match {result['exact_match']:.3f} on {result['rows']} held-out dates, valid ISO dates "
            f"{result['valid_iso_date']:.3f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m finetune_kit.demo_seq2seq", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    data = commands.add_parser("data", help="generate the dates, the tokenizer and the untrained T5")
    data.add_argument("--out", type=Path, required=True)
    data.add_argument("--seed", type=int, default=0)
    sc = commands.add_parser("score", help="exact match of a model on the held-out dates")
    sc.add_argument("--model", required=True)
    sc.add_argument("--test", type=Path, required=True)
    sc.add_argument("--num_beams", type=int, default=1)
    sc.add_argument("--save", type=Path, help="write the result as JSON")
    sc.add_argument("--before", type=Path, help="a saved earlier result to compare with")
    args = parser.parse_args(argv)

    if args.command == "data":
        counts = make_dataset(args.out, seed=args.seed)
        print(f"wrote {counts['train']} training, {counts['validation']} validation and {counts['test']} test rows, "
              f"tokenizer/ and t5-from-config/ to {args.out}")
        return
    result = score(args.model, args.test, args.num_beams)
    for r in result["examples"]:
        print(f"  [{'ok' if r['correct'] else '--'}] {r['source']!r:36} -> {r['output']!r} (want {r['target']})")
    if args.before:
        before = json.loads(args.before.read_text())
        result["before"] = {k: before[k] for k in ("model", "exact_match", "valid_iso_date", "exact_match_by_format")}
        print(f"before: {_figures(before)}")
    print(f"{'after' if args.before else 'score'}: {_figures(result)}")
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    from finetune_kit.errors import run_cli

    run_cli(main)
