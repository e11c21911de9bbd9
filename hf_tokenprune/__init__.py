"""hf_tokenprune: faster Vision Transformers for Hugging Face transformers, by spending less on tokens that carry
little (token skipping, pruning, merging) and on attention that repeats itself (attention reuse).

The package is laid out by purpose:

- ``models/``: the remote-code island, the config and model classes and the methods (copied into checkpoints);
- ``families``: the family table; ``plans``, ``flops``, ``data``, ``visualization``, ``paths``: shared pieces;
- ``training/``, ``measure/``, ``sharing/``: training with the Trainer, measuring speed and choosing plans, sharing
  on the Hub and exporting;
- ``commands/``: the ``hf-tokenprune`` command line, which uses the library and is never used by it.

Importing the package is cheap (``hf-tokenprune --help`` needs neither torch nor transformers). The public names
(every class of the family table's island files, and the method registries) load on first use, and that first use
registers the TokenPrune classes with transformers' Auto classes (`register`), so that
``AutoModelForImageClassification.from_pretrained(folder)`` needs no remote code. Nothing else in transformers is
changed: no import hooks, no patched classes.
"""

import importlib

__version__ = "0.1.0"

# Names of the method registries (``models/token_reduction.py``, ``models/attention_reuse.py``).
_METHOD_NAMES = {
    "REDUCTION_METHODS": "token_reduction",
    "TokenReduction": "token_reduction",
    "TokenState": "token_reduction",
    "Paper": "token_reduction",
    "FEATURES": "token_reduction",
    "register_reduction": "token_reduction",
    "ATTENTION_REUSE_METHODS": "attention_reuse",
    "AttentionReuse": "attention_reuse",
    "register_attention_reuse": "attention_reuse",
}
# Functions of the tools offered at the top level (name -> the subpackage that exports it).
_TOOL_NAMES = {"convert_official_checkpoint": "convert"}
_public: dict[str, str] | None = None  # name -> defining module, filled by `register`


def register() -> None:
    """Registers every family's config with ``AutoConfig`` and its model classes with the Auto classes they serve
    (the ``auto_map`` its saved folders carry), from the family table. Idempotent; the first use of a public name
    runs it. A family added with `hf_tokenprune.families.register_family` registers when this runs next."""
    global _public
    import transformers

    from .families import FAMILIES

    names: dict[str, str] = {}
    for row in FAMILIES.values():
        config = row.config_class()
        transformers.AutoConfig.register(config.model_type, config, exist_ok=True)
        for auto, model_class in row.auto_mapping().items():
            getattr(transformers, auto).register(config, model_class, exist_ok=True)
        names.update(row.public_names())
    names.update({name: f"{__name__}.models.{module}" for name, module in _METHOD_NAMES.items()})
    importlib.import_module(f"{__name__}.models.methods")  # every built-in method registers
    _public = names


def __getattr__(name: str):
    if name == "__all__":
        return sorted([*_names(), *_TOOL_NAMES])
    if name in _TOOL_NAMES:
        return getattr(importlib.import_module(f"{__name__}.{_TOOL_NAMES[name]}"), name)
    # Public names are classes and constants (capitalised) or the registries' functions; a lower-case name is a
    # submodule that is not imported yet, or no name at all: no need to load the models to say so.
    if (name[:1].isupper() or name in _METHOD_NAMES) and name in _names():
        return getattr(importlib.import_module(_public[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _names() -> dict[str, str]:
    if _public is None:
        register()
    return _public


def __dir__() -> list[str]:
    return sorted([*globals(), *_names(), *_TOOL_NAMES])
