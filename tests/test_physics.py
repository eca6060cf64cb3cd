"""The physics the studies rest on, pinned at the plan level (no timing, no numbers
from a profile): what the write-back period, the X-cache and the two partitions
change in the ops `inf2sim.scheduler.build_plan` emits.

- write-back at c: c x fewer KV write ops (Spill, what=kv_new) than c = 1 over the
  same decode steps, each c x larger, the same bytes in all;
- X-cache at alpha (MHA): the CSDs read exactly the KV of the alpha*batch cooperative
  sequences less, the closed form alpha*B*(P+s-1)*layers*2*kv_dim*dtype at step s;
- rows and sequence partitions: every position of every KV row is attended exactly
  once per decode step (stored on one CSD, or in the host tail, or on the GPU).
Small shapes (2-layer OPT-125M-sized blocks): the file runs in about a second.
"""
from __future__ import annotations

from collections import defaultdict

import pytest

from inf2sim.plan import Attention, Spill, Transfer
from inf2sim.scheduler import build_plan

TINY = {"model": "opt-125m", "model.num_layers": 2, "workload.batch": 8, "workload.prompt_len": 64,
        "workload.num_micro_batches": 1, "hardware.csd_count": 2}


def _plan(spec_of, **kw):
    s = spec_of(**{**TINY, **kw})
    return build_plan(s.model, s.workload, s.hardware, s.policy), s


def _kv_spills(plan, steps):
    return [op for st in plan.steps(steps) for op in st.ops if isinstance(op, Spill) and op.what == "kv_new"]


@pytest.mark.parametrize("c", [2, 4, 8])
def test_write_back_divides_kv_write_ops_by_c(spec_of, c):
    steps = list(range(1, 9))  # 8 decode steps: a multiple of every c here
    (p1, _), s = _plan(spec_of, policy="ans_wb", **{"policy.wb.c": 1, "workload.gen_len": 9})
    (pc, _), _ = _plan(spec_of, policy="ans_wb", **{"policy.wb.c": c, "workload.gen_len": 9})
    ops1, opsc = _kv_spills(p1, steps), _kv_spills(pc, steps)
    assert ops1 and len(ops1) == c * len(opsc)
    assert sum(o.nbytes for o in ops1) == sum(o.nbytes for o in opsc)  # same bytes, fewer larger requests
    row_bytes = s.model.head_dim * s.model.dtype_bytes
    assert {o.req_bytes for o in ops1} == {row_bytes} and {o.req_bytes for o in opsc} == {c * row_bytes}
    assert {o.step % c for o in opsc} == {0}  # a spill follows every c-th step only


def _csd_read_bytes(plan, step):
    st = next(plan.steps([step]))
    return sum(op.nbytes for op in st.ops if isinstance(op, Transfer) and op.what == "kv"
               and op.src.startswith("csd") and op.src.endswith(".ssd"))


@pytest.mark.parametrize("alpha", [0.25, 0.5, 1.0])
@pytest.mark.parametrize("step", [1, 2, 5])
def test_x_cache_saves_the_kv_of_alpha_batch_sequences(spec_of, alpha, step):
    kw = {"policy.xcache.alpha": alpha, "policy.xcache.where": "host", "workload.gen_len": 6}
    (p0, _), s = _plan(spec_of, policy="ans_xcache", **{**kw, "policy.xcache.alpha": 0.0})
    (pa, b), _ = _plan(spec_of, policy="ans_xcache", **kw)
    md, wl = s.model, s.workload
    assert md.num_kv_heads == md.num_heads  # MHA: X (h values) is smaller than K+V (2h)
    stored = wl.prompt_len + step - 1  # c = 1: every earlier token is on the CSDs
    closed_form = alpha * wl.batch * stored * md.num_layers * md.kv_bytes_per_token_layer()
    full = _csd_read_bytes(p0, step)
    assert full == wl.batch * stored * md.num_layers * md.kv_bytes_per_token_layer()
    assert full - _csd_read_bytes(pa, step) == pytest.approx(closed_form, abs=0)
    assert b.layout.x_seqs == alpha * wl.batch


@pytest.mark.parametrize("partition", ["rows", "sequence"])
@pytest.mark.parametrize("policy, c, variant", [("ans", 1, "v1"), ("inf2", 2, "v1"), ("inf2", 3, "v2")])
def test_partitions_attend_every_position_of_every_row_once(spec_of, partition, policy, c, variant):
    gen = 8
    (plan, b), s = _plan(spec_of, policy=policy, **{
        "policy.partition": partition, "policy.wb.c": c, "policy.wb.variant": variant, "policy.xcache.alpha": 0.25,
        "hardware.csd_count": 3, "workload.gen_len": gen})
    lay, P = b.layout, s.workload.prompt_len
    stored = defaultdict(list)  # (csd, layer, row) -> positions written to that CSD's flash
    for st in plan.steps():
        if st.step >= 1:
            ctx = P + st.step
            for L in range(s.model.num_layers):
                seen = defaultdict(int)  # (row, position) -> times attended
                for op in st.ops:
                    if op.layer != L:
                        continue
                    if isinstance(op, Attention) and op.device.startswith("csd"):
                        i = int(op.device[3:].split(".")[0])
                        down = next(o for o in st.ops if o.name == op.name.replace(f"attn.csd{i}", f"down.csd{i}"))
                        for r in range(*op.rows):
                            own = stored[(i, L, r)]
                            assert len(own) == op.stored_len  # the op reads what the plan stored there
                            for t in own + list(range(*down.tokens)):  # stored + host tail shipped with q
                                seen[(r, t)] += 1
                    elif isinstance(op, Attention) and op.device == "gpu":  # cooperative X-cache rows
                        for r in range(*op.rows):
                            for t in range(*op.tokens):
                                seen[(r, t)] += 1
                want = {(r, t): 1 for r in range(lay.rows_total) for t in range(ctx)}
                assert dict(seen) == want, f"step {st.step} layer {L}"
        for op in st.ops:  # what this step stores becomes visible to later steps
            if op.what in ("kv", "kv_new") and isinstance(op, (Transfer, Spill)) and op.dst.startswith("csd") \
                    and op.dst.endswith(".ssd"):
                i = int(op.dst[3:].split(".")[0])
                for r in range(*op.rows):
                    stored[(i, op.layer, r)].extend(range(*op.tokens))
