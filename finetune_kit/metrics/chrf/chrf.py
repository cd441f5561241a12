"""Corpus chrF (character n-gram F-score; chrF++ with word_order=2), the sacrebleu package doing the math. Local
evaluate module with the hub's "chrf" result keys (score 0-100, char_order, word_order, beta); one reference per
prediction. Kinder than BLEU to short outputs and rich morphology."""

import datasets
import evaluate
from sacrebleu.metrics import CHRF


class Chrf(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(description=__doc__, citation="", inputs_description=__doc__,
                                   features=datasets.Features({"predictions": datasets.Value("string"),
                                                               "references": datasets.Value("string")}))

    def _compute(self, predictions, references, char_order: int = 6, word_order: int = 0, beta: int = 2):
        chrf = CHRF(char_order=char_order, word_order=word_order, beta=beta)
        return {"score": chrf.corpus_score(predictions, [references]).score, "char_order": char_order,
                "word_order": word_order, "beta": beta}
