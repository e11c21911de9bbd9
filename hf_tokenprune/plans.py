"""Benchmark plans: parsing the ``--plans`` list (``null``, a bare ``{"method": ...}`` or the wrapped form with
``token_reduction`` / ``attention_reuse`` / ``label``), the default list (each method at its headline operating
point, which its class declares), and readable labels. Every plan is validated by the config before anything is
timed."""

from dataclasses import dataclass
from typing import Any


@dataclass
class PlanEntry:
    """One benchmarked plan: a label, a token-reduction plan and an attention-reuse plan (either may be None)."""

    label: str
    token_reduction: dict | None = None
    attention_reuse: dict | None = None


def default_plans(base: Any = None) -> list[dict | None]:
    """No reduction, every registered token-reduction method at its headline operating point, and every registered
    attention-reuse method; with a ``base`` config, only those its family runs (SigLIP refuses the methods that need
    a CLS token)."""
    from .models.methods import ATTENTION_REUSE_METHODS, REDUCTION_METHODS

    plans: list[dict | None] = [None]
    plans += [headline_plan(name) for name in sorted(REDUCTION_METHODS)]
    plans += [
        {"token_reduction": None, "attention_reuse": {"method": name, **cls.headline_plan}}
        for name, cls in sorted(ATTENTION_REUSE_METHODS.items())
    ]
    return plans if base is None else [plan for plan in plans if _runs_on(base, plan)]


def headline_plan(method: str) -> dict[str, Any]:
    """A method's headline operating point, as its class declares it (``headline_plan``); layer indices given for
    12 layers are scaled to other depths by the method."""
    from .models.methods import get_reduction_class

    return {"method": method, **get_reduction_class(method).headline_plan}


def _runs_on(base: Any, plan: dict | None) -> bool:
    try:
        plan_config(base, parse_plan_entry(plan))
    except ValueError:  # the defaults are valid plans: only the family refuses one
        return False
    return True


def _short(value: Any) -> str:
    if isinstance(value, (list, tuple)) and value and all(v == value[0] for v in value) and len(value) > 2:
        return _short(value[0])  # a constant per-layer schedule, e.g. ToMe's r
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_short(v) for v in value) + "]"
    return f"{value:g}" if isinstance(value, float) else str(value)


def plan_label(token_reduction: dict | None, attention_reuse: dict | None = None) -> str:
    """A short readable name for a plan: the method and the options that were given."""
    parts = []
    for plan in (token_reduction, attention_reuse):
        if plan:
            options = " ".join(f"{key}={_short(value)}" for key, value in plan.items() if key != "method")
            parts.append(f"{plan['method']} {options}".strip())
    return " + ".join(parts) if parts else "no reduction"


def parse_plan_entry(entry: Any, index: int = 0) -> PlanEntry:
    """Accepts ``null`` (no reduction), a bare token-reduction dict ``{"method": ...}``, or the wrapped form
    ``{"token_reduction": ..., "attention_reuse": ..., "label": ...}``."""
    where = f"plans[{index}]"
    if entry is None:
        return PlanEntry("no reduction")
    if not isinstance(entry, dict):
        raise ValueError(
            f"{where} = {entry!r} must be null, a plan dict with 'method', or a dict with keys "
            "'token_reduction' / 'attention_reuse' / 'label'."
        )
    if "method" in entry:
        return PlanEntry(plan_label(entry), dict(entry), None)
    unknown = sorted(set(entry) - {"token_reduction", "attention_reuse", "label"})
    if unknown or not ({"token_reduction", "attention_reuse"} & set(entry)):
        raise ValueError(
            f"{where} = {entry!r}: unknown key(s) {unknown}; a wrapped entry has 'token_reduction' "
            "and/or 'attention_reuse' (and optionally 'label'); a bare plan has 'method'."
        )
    reduction, reuse = entry.get("token_reduction"), entry.get("attention_reuse")
    return PlanEntry(entry.get("label") or plan_label(reduction, reuse), reduction, reuse)


def plan_config(base: Any, entry: PlanEntry) -> Any:
    """``base`` (a TokenPruneViTConfig) with the entry's plans; the config validates them (ValueError if bad)."""
    data = {**base.to_dict(), "token_reduction": entry.token_reduction, "attention_reuse": entry.attention_reuse}
    return type(base).from_dict(data)


def _default_label(entry: PlanEntry, config: Any) -> str:
    """A bare ``{"method": name}`` is labelled with the operating point its defaults chose (amounts, reused layers)."""
    from .models.methods import get_reduction_class

    reduction, reuse = entry.token_reduction, entry.attention_reuse
    if reduction is not None and set(reduction) == {"method"}:
        runtime = get_reduction_class(reduction["method"]).runtime_options
        canonical = config.token_reduction
        reduction = {"method": reduction["method"], **{k: canonical[k] for k in runtime if "loss" not in k}}
    if reuse is not None and set(reuse) == {"method"}:
        reuse = {"method": reuse["method"], "layers": config.attention_reuse.get("layers")}
    return plan_label(reduction, reuse)


def parse_plans(plans: Any, base: Any, keep_rate: float | None = None) -> list[tuple[PlanEntry, Any]]:
    """Turns a list of plan entries into (entry, validated config) pairs; every error comes before any timing.

    Args:
        plans: a list of entries (see `parse_plan_entry`), or None for `default_plans` of ``base``'s family.
        base: the TokenPruneViTConfig of the model without plans.
        keep_rate: if given, replaces the keep rate of every plan whose method has one.
    """
    from .models.methods import get_reduction_class

    plans = default_plans(base) if plans is None else plans
    if not isinstance(plans, list) or not plans:
        raise ValueError(f"plans = {plans!r} must be a non-empty JSON list of plans.")
    parsed = []
    for index, raw in enumerate(plans):
        entry = parse_plan_entry(raw, index)
        if keep_rate is not None and entry.token_reduction:
            if get_reduction_class(entry.token_reduction.get("method")).uses_keep_rate:
                entry.token_reduction = {**entry.token_reduction, "keep_rate": keep_rate}
                entry.label = plan_label(entry.token_reduction, entry.attention_reuse)
        try:
            config = plan_config(base, entry)
        except ValueError as error:
            raise ValueError(f"plans[{index}] ({entry.label}): {error}") from None
        if entry.label == plan_label(entry.token_reduction, entry.attention_reuse):
            entry.label = _default_label(entry, config)
        parsed.append((entry, config))
    labels = [entry.label for entry, _ in parsed]
    if len(set(labels)) != len(labels):
        raise ValueError(f"plans have repeated labels {labels}; give each a distinct 'label'.")
    return parsed
