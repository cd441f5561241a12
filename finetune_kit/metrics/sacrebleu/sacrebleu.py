"""Corpus BLEU as sacreBLEU computes it (its default 13a tokenization), the sacrebleu package doing the math. Local
evaluate module: the hub's "sacrebleu" result keys (score 0-100, counts, precisions, bp, ...), one reference per
prediction."""

import datasets
import evaluate
import sacrebleu


class Sacrebleu(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(description=__doc__, citation="", inputs_description=__doc__,
                                   features=datasets.Features({"predictions": datasets.Value("string"),
                                                               "references": datasets.Value("string")}))

    def _compute(self, predictions, references):
        bleu = sacrebleu.corpus_bleu(predictions, [references])
        return {"score": bleu.score, "counts": bleu.counts, "totals": bleu.totals, "precisions": bleu.precisions,
                "bp": bleu.bp, "sys_len": bleu.sys_len, "ref_len": bleu.ref_len}
