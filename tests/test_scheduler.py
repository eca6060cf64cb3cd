"""The scheduler's plans: valid DAGs, byte conservation against closed forms, OOM."""
import pytest

from inf2sim.plan import Attention, Spill, Transfer, check_dag
from inf2sim.scheduler import build_plan
from inf2sim.specs import SpecError
from inf2sim.topology import build_topology, endpoint_node

POLICIES = ["flexgen_ssd", "flexgen_dram", "flexgen_csd", "ans", "ans_wb", "ans_xcache", "inf2", "inf2_v2"]
SMALL = {"model": "opt-6.7b", "workload.batch": 8, "workload.prompt_len": 64, "workload.gen_len": 6,
         "hardware.csd_count": 4}


@pytest.mark.parametrize("policy", POLICIES)
def test_every_policy_builds_a_valid_dag(spec_of, policy):
    r = spec_of(policy=policy, **SMALL)
    plan, _ = build_plan(r.model, r.workload, r.hardware, r.policy)
    done = set()
    for st in plan.steps():
        check_dag(st, done)
        done |= {o.name for o in st.ops}
    assert plan.num_steps == 6


def _step(spec_of, policy, step, **kw):
    r = spec_of(policy=policy, **{**SMALL, **kw})
    plan, b = build_plan(r.model, r.workload, r.hardware, r.policy)
    return r, next(plan.steps([step])), b


def test_flexgen_ssd_reads_4sh_per_sequence_per_layer(spec_of):
    r, st, _ = _step(spec_of, "flexgen_ssd", 3)
    md, wl = r.model, r.workload
    history = wl.prompt_len + 3 - 1  # the new token's k,v come with q; the rest is read
    read = sum(o.nbytes for o in st.ops if isinstance(o, Transfer) and o.what == "kv" and o.dst == "dram")
    assert read == pytest.approx(4 * history * md.hidden * wl.batch * md.num_layers, rel=1e-3)


def test_ans_moves_8h_per_sequence_per_layer_over_the_shared_link(spec_of):
    r, st, _ = _step(spec_of, "ans", 3)
    md, wl = r.model, r.workload
    topo = build_topology(r.hardware)
    crossing = 0
    for o in st.ops:
        if isinstance(o, (Transfer, Spill)):
            src = o.src
            if any(l == "chassis" for l, _ in topo.path(endpoint_node(src), endpoint_node(o.dst))):
                crossing += o.nbytes
    assert crossing == pytest.approx(8 * md.hidden * wl.batch * md.num_layers, rel=1e-3)


def test_ans_rows_cover_every_row_once(spec_of):
    r, st, b = _step(spec_of, "ans", 2, **{"hardware.csd_count": 3})
    att = [o for o in st.ops if isinstance(o, Attention) and o.layer == 0]
    rows = sorted(o.rows for o in att)
    assert rows[0][0] == 0 and rows[-1][1] == b.layout.rows_total
    assert all(a[1] == c[0] for a, c in zip(rows, rows[1:]))


def test_sequence_partition_balances_tokens(spec_of):
    r, st, b = _step(spec_of, "ans", 5, **{"policy.partition": "sequence", "hardware.csd_count": 3})
    att = [o for o in st.ops if isinstance(o, Attention) and o.layer == 0]
    total = sum(o.tokens[1] - o.tokens[0] for o in att)
    assert total == r.workload.prompt_len + 5  # every position attended exactly once
    lens = [o.tokens[1] for o in att]
    assert max(lens) - min(lens) <= 2


def test_dram_policy_reports_oom_with_bytes(spec_of):
    r = spec_of(policy="flexgen_dram", model="opt-175b", **{"workload.batch": 64, "workload.prompt_len": 32768})
    _, b = build_plan(r.model, r.workload, r.hardware, r.policy)
    msg = b.oom()
    assert msg and msg.startswith("host: needs") and "GB" in msg


def test_ans_needs_csds(spec_of):
    with pytest.raises(SpecError, match="hardware.csd_count"):
        r = spec_of(policy="ans", **{"hardware.csd_count": 0})
        build_plan(r.model, r.workload, r.hardware, r.policy)


def test_weights_on_storage_add_storage_reads(spec_of):
    r, st, _ = _step(spec_of, "ans", 1, **{"policy.weights": {"gpu": 0.0, "host": 0.5, "storage": 0.5}})
    w = [o for o in st.ops if isinstance(o, Transfer) and o.what == "weights" and o.dst == "dram"]
    assert w and all(o.src.startswith("ssd") for o in w)


@pytest.mark.parametrize("model", ["opt-6.7b", "llama-tiny"])  # X kept (MHA) and K,V kept (GQA)
def test_xcache_loads_form_one_stream_into_a_ring(spec_of, model):
    """The X loads of a step run in issue order on one copy stream (each waits for the one
    before it) into X_RING GPU buffers (the load of layer L waits for layer L - X_RING's
    consumer), as the engine runs them."""
    from inf2sim.layout import keeps_x
    from inf2sim.policies.ans import X_RING

    r, st, b = _step(spec_of, "inf2", 3, model=model, **{"policy.xcache.alpha": 0.5,
                                                          "workload.num_micro_batches": 2})
    assert b.layout.x_seqs > 0
    loads = [o for o in st.ops if isinstance(o, Transfer) and o.name.endswith(".xload")]
    assert len(loads) == r.model.num_layers * 2
    use = "kv_regen" if keeps_x(r.model) else "attn.gpu"
    for prev, op in zip(loads, loads[1:]):
        assert prev.name in op.deps
    for op in loads:
        ring = f"s3.L{op.layer - X_RING}.m{op.mb}.{use}"
        assert (ring in op.deps) == (op.layer >= X_RING)
