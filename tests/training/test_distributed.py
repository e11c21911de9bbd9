"""The stock Trainer trains every method: losses include the auxiliary terms and are reported correctly under
2-process DDP (gloo) and gradient accumulation, and no parameter goes without a gradient."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REDUCING_PLANS, REUSE_PLANS

SCRIPT = Path(__file__).parents[1] / "scripts" / "train_methods.py"
PLANS = {name: {"token_reduction": plan} for name, plan in REDUCING_PLANS.items()}
PLANS["skipat"] = REUSE_PLANS["skipat"]
RANDOM_IN_TRAINING = {"dynamicvit"}  # Gumbel noise differs between processes


def run(tmp_path, name, launcher, per_device, accumulation, plans=PLANS):
    plans_file, output = tmp_path / "plans.json", tmp_path / f"{name}.json"
    plans_file.write_text(json.dumps(plans))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parents[2]))
    command = launcher + [str(SCRIPT), str(plans_file), str(output), str(per_device), str(accumulation)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert output.exists(), result.stderr[-3000:]  # checked from the file: torchrun can abort at exit
    return json.loads(output.read_text())


@pytest.mark.slow
def test_every_method_trains_under_ddp_with_the_same_reported_loss(tmp_path):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531"]
    distributed = run(tmp_path, "ddp", torchrun, per_device=2, accumulation=2)
    single = run(tmp_path, "single", [sys.executable], per_device=4, accumulation=2)
    assert distributed["_world_size"] == 2 and single["_world_size"] == 1
    for name in PLANS:
        assert len(distributed[name]) == 2, f"{name} did not log two steps under DDP"
        tolerance = 0.15 if name in RANDOM_IN_TRAINING else 2e-4
        for ddp_loss, single_loss in zip(distributed[name], single[name]):
            assert ddp_loss == pytest.approx(single_loss, rel=tolerance), name


@pytest.mark.slow
def test_gradient_accumulation_reports_the_same_loss_as_one_big_batch(tmp_path):
    plans = {name: PLANS[name] for name in ("cropr", "evit", "skipat")}
    accumulated = run(tmp_path, "accumulated", [sys.executable], per_device=2, accumulation=4, plans=plans)
    one_batch = run(tmp_path, "one-batch", [sys.executable], per_device=8, accumulation=1, plans=plans)
    for name in plans:
        assert accumulated[name] == pytest.approx(one_batch[name], rel=2e-4), name
