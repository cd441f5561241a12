"""ROUGE-1 / 2 / L / Lsum F-measures averaged over examples, Google's rouge_score package doing the math. Local
evaluate module with the hub's "rouge" result keys. rougeLsum splits summaries into sentences at newlines (put one
sentence per line for it to differ from rougeL). rouge_score's tokenizer keeps only ASCII letters and digits, so
scores of other scripts are meaningless: read chrF there."""

import datasets
import evaluate
from rouge_score import rouge_scorer

TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


class Rouge(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(description=__doc__, citation="", inputs_description=__doc__,
                                   features=datasets.Features({"predictions": datasets.Value("string"),
                                                               "references": datasets.Value("string")}))

    def _compute(self, predictions, references, use_stemmer: bool = False):
        scorer = rouge_scorer.RougeScorer(list(TYPES), use_stemmer=use_stemmer)
        scores = [scorer.score(ref, pred) for pred, ref in zip(predictions, references)]
        return {t: sum(s[t].fmeasure for s in scores) / max(len(scores), 1) for t in TYPES}
