"""Top-1 accuracy as an `evaluate` metric module that loads offline: ``evaluate.load("path/to/accuracy.py")``.

The Hub's ``evaluate.load("accuracy")`` needs the network the first time; this module ships with hf_tokenprune and
computes the same number (the fraction of predictions equal to their reference).
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Accuracy: the fraction of predicted labels equal to the reference labels."
_INPUTS = """
Args:
    predictions: predicted labels (integers).
    references: true labels (integers).
    normalize: if False, the number of correct predictions instead of the fraction.
Returns:
    {"accuracy": float}
"""


class Accuracy(evaluate.Metric):
    """Top-1 accuracy, as the Hub's ``accuracy`` metric reports it."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_INPUTS,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, normalize=True):
        correct = np.asarray(predictions) == np.asarray(references)
        return {"accuracy": float(correct.mean() if normalize else correct.sum())}
