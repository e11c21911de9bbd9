"""Static shapes: torch.compile(fullgraph=True) runs every method and gives the eager logits.

The methods whose operations differ (merging, ranking with a fused token, a predictor, a scorer with a rejoin,
parking with a representative token) go through the default (inductor) backend; the methods made of the same
operations (SkipViT, SuperViT, the tests' random keep), the variants and restore_tokens go through ``aot_eager``,
which traces the same full graph (no data-dependent shapes, no graph break) without the slow code generation, to keep
the suite fast on a 2-core machine.
"""

import pytest
import torch
from conftest import ALL_REDUCING, REDUCING_PLANS, REUSE_PLANS, pruned_model

INDUCTOR = ("cropr", "dynamicvit", "evit", "evo_vit", "tome")
CASES = [
    (name, restore, "inductor" if name in INDUCTOR and not restore else "aot_eager")
    for name in sorted(ALL_REDUCING)
    for restore in (False, True)
    if restore or name in REDUCING_PLANS or name not in INDUCTOR
]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(REUSE_PLANS))
def test_compile_fullgraph_with_attention_reuse(stock_model, pixels, name):
    torch._dynamo.reset()
    model = pruned_model(stock_model, **REUSE_PLANS[name])
    with torch.no_grad():
        eager = model(pixels)
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")(pixels)
    torch.testing.assert_close(compiled.logits, eager.logits, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name, restore, backend", CASES)
def test_compile_fullgraph_matches_eager(stock_model, pixels, name, restore, backend):
    torch._dynamo.reset()
    model = pruned_model(stock_model, token_reduction=ALL_REDUCING[name], restore_tokens=restore)
    with torch.no_grad():
        eager = model(pixels)
        compiled = torch.compile(model, fullgraph=True, backend=backend)(pixels)
    torch.testing.assert_close(compiled.logits, eager.logits, atol=1e-5, rtol=1e-4)
    assert compiled.token_counts == eager.token_counts
