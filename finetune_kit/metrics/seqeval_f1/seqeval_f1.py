"""Entity-level precision, recall and F1 for BIO-tagged sequences (seqeval does the math). Local evaluate module."""

import datasets
import evaluate
from seqeval.metrics import accuracy_score, classification_report


class SeqevalF1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__, citation="", inputs_description=__doc__,
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("string")),
                                        "references": datasets.Sequence(datasets.Value("string"))}))

    def _compute(self, predictions, references):
        report = classification_report(references, predictions, output_dict=True, zero_division=0)
        overall = report["micro avg"]
        result = {"precision": overall["precision"], "recall": overall["recall"], "f1": overall["f1-score"],
                  "accuracy": accuracy_score(references, predictions)}
        for entity, scores in report.items():
            if not entity.endswith("avg"):
                result[f"{entity}_f1"] = scores["f1-score"]
        return {k: float(v) for k, v in result.items()}
