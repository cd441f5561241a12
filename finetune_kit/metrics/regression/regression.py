"""Pearson and Spearman correlation and mean squared error for regression targets. Local evaluate module."""

import datasets
import evaluate
from scipy.stats import pearsonr, spearmanr


class Regression(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(description=__doc__, citation="", inputs_description=__doc__,
                                   features=datasets.Features({"predictions": datasets.Value("float32"),
                                                               "references": datasets.Value("float32")}))

    def _compute(self, predictions, references):
        mse = sum((p - r) ** 2 for p, r in zip(predictions, references)) / len(references)
        return {"pearson": float(pearsonr(references, predictions)[0]),
                "spearman": float(spearmanr(references, predictions)[0]), "mse": float(mse)}
