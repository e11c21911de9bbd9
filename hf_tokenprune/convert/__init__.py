"""Official checkpoints in transformers form: the authors' trained weights, converted exactly.

- `checkpoint`: reading a checkpoint as the official scripts save it, executing nothing;
- `layouts`: the official key layouts mapped onto our classes (the one place that knows them);
- `sources`: each method's official operating point, evaluation transform and released checkpoints;
- `converter`: `convert_official_checkpoint`, the whole conversion (``hf-tokenprune convert``).
"""

from .._lazy import lazy_names

_NAMES = {
    "PUBLISHED": "sources",
    "SOURCES": "sources",
    "convert_official_checkpoint": "converter",
    "map_weights": "layouts",
    "read_state": "checkpoint",
}
__getattr__, __dir__ = lazy_names(__name__, _NAMES)
__all__ = sorted(_NAMES)
