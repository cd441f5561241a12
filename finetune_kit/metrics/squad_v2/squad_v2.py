"""SQuAD exact match and F1 (v1 and v2: an unanswerable question's gold answer is ""). Local evaluate module.

Answers are compared after SQuAD's normalisation (lower case, no punctuation, no articles, single spaces); each
prediction scores its best match over the gold answers.
"""

import collections
import re
import string

import datasets
import evaluate


def normalize(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def f1(prediction: str, gold: str) -> float:
    pred, ref = normalize(prediction).split(), normalize(gold).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((collections.Counter(pred) & collections.Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


class SquadV2(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(description=__doc__, citation="", inputs_description=__doc__,
                                   features=datasets.Features({"predictions": datasets.Value("string"),
                                                               "references": datasets.Sequence(datasets.Value("string"))}))

    def _compute(self, predictions, references):
        exact, f1s, has_ans, no_ans = [], [], [], []
        for prediction, golds in zip(predictions, references):
            golds = [g for g in golds if normalize(g)] or [""]
            exact.append(max(float(normalize(prediction) == normalize(g)) for g in golds))
            f1s.append(max(f1(prediction, g) for g in golds))
            (no_ans if golds == [""] else has_ans).append(len(exact) - 1)
        result = {"exact": 100 * sum(exact) / len(exact), "f1": 100 * sum(f1s) / len(f1s), "total": len(exact)}
        for name, idx in (("HasAns", has_ans), ("NoAns", no_ans)):
            if idx:
                result[f"{name}_exact"] = 100 * sum(exact[i] for i in idx) / len(idx)
                result[f"{name}_f1"] = 100 * sum(f1s[i] for i in idx) / len(idx)
        return result
