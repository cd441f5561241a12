"""Exact match: the share of predictions equal to their reference after stripping surrounding whitespace. Local
evaluate module with the hub's "exact_match" result key (0-1). The metric of tasks with one right answer (a date
in ISO form, a normalised code); BLEU / ROUGE give partial credit where this gives none."""

import datasets
import evaluate


class ExactMatch(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(description=__doc__, citation="", inputs_description=__doc__,
                                   features=datasets.Features({"predictions": datasets.Value("string"),
                                                               "references": datasets.Value("string")}))

    def _compute(self, predictions, references):
        hits = sum(p.strip() == r.strip() for p, r in zip(predictions, references))
        return {"exact_match": hits / max(len(predictions), 1)}
