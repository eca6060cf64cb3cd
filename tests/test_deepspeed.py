"""The DeepSpeed ZeRO-Inference-like baseline: valid DAGs, the history copy's bytes, GPU-only compute, oom."""
import pytest

from inf2sim.plan import Attention, Transfer, check_dag
from inf2sim.scheduler import build_plan
from inf2sim.simulate import simulate_spec

SMALL = {"model": "opt-6.7b", "workload.batch": 8, "workload.prompt_len": 64, "workload.gen_len": 6,
         "sim.trace": False}


def _plan(spec_of, **kw):
    r = spec_of(policy="deepspeed", **{**SMALL, **kw})
    return r, *build_plan(r.model, r.workload, r.hardware, r.policy)


@pytest.mark.parametrize("micro_batches", [1, 2])
def test_builds_a_valid_dag(spec_of, micro_batches):
    _, plan, _ = _plan(spec_of, **{"workload.num_micro_batches": micro_batches})
    done = set()
    for st in plan.steps():
        check_dag(st, done)
        done |= {o.name for o in st.ops}
    assert plan.num_steps == 6


def test_history_copy_is_4sh_per_sequence_per_layer(spec_of):
    r, plan, b = _plan(spec_of, **{"workload.num_micro_batches": 2})
    md, wl, step = r.model, r.workload, 3
    st = next(plan.steps([step]))
    s = wl.prompt_len + step - 1  # the history: the new token's k,v are computed on the GPU
    h2d = [o for o in st.ops if isinstance(o, Transfer) and o.what == "kv"]
    assert all(o.src == "dram" and o.dst == "gpu" for o in h2d)
    assert len(h2d) == md.num_layers * wl.num_micro_batches
    assert sum(o.nbytes for o in h2d) == 4 * s * md.hidden * wl.batch * md.num_layers
    assert b.history_bytes(step) == 4 * s * md.hidden * wl.micro_batch
    new = [o for o in st.ops if isinstance(o, Transfer) and o.what == "kv_new"]
    assert all(o.src == "gpu" and o.dst == "dram" for o in new)
    assert sum(o.nbytes for o in new) == 4 * md.hidden * wl.batch * md.num_layers


def test_everything_computes_on_the_gpu_and_nothing_touches_storage(spec_of):
    _, plan, _ = _plan(spec_of)
    for st in plan.steps([0, 1, 4]):
        assert {o.device for o in st.ops if hasattr(o, "device")} == {"gpu"}
        ends = {e for o in st.ops if isinstance(o, Transfer) for e in (o.src, o.dst)}
        assert ends <= {"gpu", "dram"}
        att = [o for o in st.ops if isinstance(o, Attention)]
        if st.step:
            assert all(o.stored_len == st.ctx_len - 1 and o.tokens == (0, st.ctx_len) for o in att)


def test_decode_is_no_faster_than_the_history_copy_over_the_gpu_link(spec_of):
    r, plan, b = _plan(spec_of)
    m = simulate_spec(r)
    assert m.status == "ok"
    hist = sum(b.history_bytes(s) for s in range(1, r.workload.gen_len)) * r.model.num_layers
    assert m.time_s["decode"] >= hist / (r.hardware.gpu.link.down_gbps * 1e9)
    assert m.bound_tok_s >= m.throughput["total_tok_s"]


def test_oom_when_the_kv_cache_does_not_fit_host_memory(spec_of):
    r = spec_of(policy="deepspeed", **{**SMALL, "workload.batch": 16, "workload.prompt_len": 2048,
                                       "hardware.host.memory_gb": 16})
    m = simulate_spec(r)
    assert m.status == "oom" and m.oom.startswith("host: needs")
    ok = simulate_spec(spec_of(policy="deepspeed", **{**SMALL, "workload.batch": 16, "workload.prompt_len": 2048}))
    assert ok.status == "ok"
