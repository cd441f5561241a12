"""Accuracy and macro / micro precision, recall and F1 (scikit-learn does the math). Local evaluate module.

Single-label: predictions and references are class ids. Multi-label (config_name="multilabel"): each is a 0/1
vector per example, and accuracy is the exact-match ratio.
"""

import datasets
import evaluate
from sklearn.metrics import accuracy_score, precision_recall_fscore_support


class Classification(evaluate.Metric):
    def _info(self):
        if self.config_name == "multilabel":
            features = {"predictions": datasets.Sequence(datasets.Value("int32")),
                        "references": datasets.Sequence(datasets.Value("int32"))}
        else:
            features = {"predictions": datasets.Value("int32"), "references": datasets.Value("int32")}
        return evaluate.MetricInfo(description=__doc__, citation="", inputs_description=__doc__,
                                   features=datasets.Features(features))

    def _compute(self, predictions, references):
        result = {"accuracy": float(accuracy_score(references, predictions))}
        for average in ("macro", "micro"):
            p, r, f, _ = precision_recall_fscore_support(references, predictions, average=average, zero_division=0)
            result.update({f"precision_{average}": float(p), f"recall_{average}": float(r), f"f1_{average}": float(f)})
        return result
