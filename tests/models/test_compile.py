"""Static shapes: torch.compile(fullgraph=True) runs every method and gives the eager logits.

What static shapes promise is one full graph: every method, variant and restore_tokens goes through ``aot_eager``,
which traces the same full graph (no data-dependent shapes, no graph break) as the default backend, without its slow
code generation (tens of seconds per model on a 2-core machine with a cold cache). ToMe, whose merge runs the index
operations every method shares (row gathers, row adds, scatters), the ones code generation could get wrong, also runs
through the default (inductor) backend.
"""

import pytest
import torch
from conftest import ALL_REDUCING, REUSE_PLANS, pruned_model

INDUCTOR = ("tome",)  # its merge runs every row operation the methods share (index_select, index_add, scatter)
SAME_GRAPH = {"evo_vit-none": "evo_vit (its default)", "tome-list": "tome (r per layer, parsed to the same list)"}
# Every method and variant with restore_tokens=True (the reduction and the restore after it, through aot_eager); the
# methods whose index operations code generation could get wrong also without the restore, through inductor.
CASES = [(name, True, "aot_eager") for name in sorted(ALL_REDUCING) if name not in SAME_GRAPH]
CASES += [(name, False, "inductor") for name in INDUCTOR]


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
