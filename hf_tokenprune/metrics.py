"""Metrics through `evaluate` where it can load, with numpy as the fallback.

``evaluate.load("accuracy")`` fetches its script from the Hub, so offline it fails unless cached. hf_tokenprune ships
its own metric modules (``hf_tokenprune/metric_modules/``) and loads them by path, which works offline; when
`evaluate` is not installed or a module cannot load, the same number is computed with numpy.
"""

import functools
import logging
from pathlib import Path
from typing import Any

import numpy as np

METRIC_MODULES = Path(__file__).resolve().parent / "metric_modules"
logger = logging.getLogger(__name__)


@functools.cache
def load_metric(name: str) -> Any:
    """The `evaluate` metric ``name`` from hf_tokenprune's own modules, or None if it cannot load."""
    path = METRIC_MODULES / f"{name}.py"
    try:
        import evaluate

        return evaluate.load(str(path))
    except Exception as error:  # no evaluate, or a module that does not load here: numpy does the same job
        logger.info("evaluate metric %s not loaded (%s); computing it with numpy.", path, error)
        return None


def accuracy(predictions: Any, labels: Any) -> float:
    """Top-1 accuracy of logits (or a tuple whose first item is the logits) against integer labels."""
    logits = predictions[0] if isinstance(predictions, (tuple, list)) else predictions
    predicted = np.asarray(logits).argmax(axis=-1).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    metric = load_metric("accuracy")
    if metric is not None:
        return float(metric.compute(predictions=predicted, references=labels)["accuracy"])
    return float((predicted == labels).mean())
