"""Sharing hf_tokenprune models: on the Hub with a model card, and exported for deployment.

- `model_card`: the card of a model of any family (method, paper, plan, FLOPs, accuracy, measured speed, pictures);
- `hub`: `push_to_hub` (model, remote code, processor, then the card pinned to the model's commit) and the checks
  before anything is uploaded;
- `export`: ONNX or ``torch.export`` at a fixed resolution with a dynamic batch, checked against PyTorch.

The Trainer's push goes through `hf_tokenprune.training.TokenPruneTrainer`, which uses these pieces.
"""

from .._lazy import lazy_names

# Public name -> the module that defines it (loaded on first use).
_NAMES = {
    "ExportReport": "export",
    "audit_onnx_graph": "export",
    "check_shareable": "hub",
    "describe": "model_card",
    "export_model": "export",
    "push_to_hub": "hub",
    "results_from_folder": "hub",
    "run_exported": "export",
    "write_model_card": "model_card",
}
__getattr__, __dir__ = lazy_names(__name__, _NAMES)
__all__ = sorted(_NAMES)
