"""sim.fidelity=fast (sampled decode windows) stays within 2% of full on total throughput."""
import pytest

from inf2sim import simulate

BASE = {"model": "opt-6.7b", "workload.batch": 16, "workload.prompt_len": 512, "workload.gen_len": 33,
        "hardware.csd_count": 4}


@pytest.mark.parametrize("policy, extra", [
    ("flexgen_ssd", {}),
    ("ans", {}),
    ("ans_wb", {"policy.wb.c": 4}),
    ("inf2_v2", {"workload.gen_len": 65}),
    ("ans", {"policy.partition": "sequence", "hardware.csd_count": 3}),
])
def test_fast_within_2_percent_of_full(policy, extra):
    full = simulate(policy=policy, **{**BASE, **extra, "sim.fidelity": "full"})
    fast = simulate(policy=policy, **{**BASE, **extra, "sim.fidelity": "fast"})
    assert fast.extra["simulated_steps"] < full.extra["simulated_steps"]
    err = abs(fast.throughput["total_tok_s"] / full.throughput["total_tok_s"] - 1)
    assert err <= 0.02, (policy, err)
