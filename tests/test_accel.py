"""The kernel cycle model (inf2sim.accel): exact cycles in hand-computable cases, linear scaling
in context length and rows, GQA group behaviour, the measured-rate override, and that every
loop it models is a labelled loop of the C++ kernel. Pure Python; no compiler needed."""
from __future__ import annotations

import glob
import os

import pytest

from inf2sim import accel
from inf2sim.specs import FpgaSpec, SpecError

HILOS = FpgaSpec(clock_mhz=296.0, macs=128, block_tokens=128, pipeline_depth=0)


def test_one_block_design_point_exact_cycles():
    # d=128, group 1, one full 128-token block, no pipeline fill:
    # load  = q 4 beats + K 128 tok * 4 beats + V 128 * 4          = 1028
    # comp  = clear 128 + q 1 + init 8 + kwrite 128 + qk 128+1 + softmax 1+128+1 + vwrite 128 + pv 1+128 + out 1 = 782
    # store = 8 beats (128 floats) + 1 lse word                     = 9
    assert accel.row_cycles(128, 128, 1, 0, 128, 128, 0) == {"load": 1028, "compute": 782, "store": 9, "row": 1037}


def test_pipeline_depth_is_paid_once_per_loop_invocation():
    # fills: load 3 (q, K, V), compute 9 pipelined loops, store 1 (one head)
    assert accel.row_cycles(128, 128, 1, 0, 128, 128, 10) == {"load": 1058, "compute": 872, "store": 19,
                                                             "row": 1077}


def test_cycles_scale_linearly_in_context_and_rows():
    c = [accel.kernel_cycles(n * 128, 128, 1) for n in range(1, 9)]
    steps = {b - a for a, b in zip(c, c[1:])}
    assert steps == {1024}  # one more block = 512 K beats + 512 V beats (load-bound)
    assert accel.kernel_cycles(1000, 128, 5, n_rows=6) == 6 * accel.kernel_cycles(1000, 128, 5, n_rows=1)
    # a partial last block costs only its valid tokens' beats
    assert accel.kernel_cycles(300, 128, 1) - accel.kernel_cycles(256, 128, 1) == 44 * 8


def test_gqa_group_behaviour():
    g1 = accel.row_cycles(4096, 128, 1)
    g5 = accel.row_cycles(4096, 128, 5)
    assert g5["load"] - g1["load"] == 4 * 4  # the K/V blocks are read once for all heads; only q grows
    assert g5["compute"] > 3 * g1["compute"] and g5["compute"] > g5["load"]  # one 128-lane array: compute-bound
    r1 = accel.kv_consume_gbps(HILOS, 4096, 1, 128)
    r5 = accel.kv_consume_gbps(HILOS, 4096, 5, 128)
    assert r5 < 0.5 * r1
    # HILOS replicates the MAC array per head of the group: back to the load-bound rate
    r5x = accel.kv_consume_gbps(FpgaSpec(clock_mhz=296.0, macs=5 * 128), 4096, 5, 128)
    assert r5x == pytest.approx(r1, rel=0.01)


def test_rate_gbps_overrides_the_cycle_model():
    spec = FpgaSpec(clock_mhz=0.0, macs=0, rate_gbps=2.0)
    kv = accel.kv_bytes(4, 1000, 128)
    assert kv == 4 * 1000 * 128 * 4
    assert accel.attention_seconds(spec, 4, 1000, 5, 128) == kv / 2e9
    assert accel.kv_consume_gbps(spec, 1000, 5, 128, rows=4) == pytest.approx(2.0)
    # v2 tail: fp32 scores per head instead of tail K
    assert accel.kv_bytes(1, 0, 128, group=5, n_tail=16, tail_mode=2) == 16 * (256 + 20)


def test_design_point_outruns_the_ssd():
    gbps = accel.kv_consume_gbps(HILOS, 4096, 1, 128)
    assert gbps == pytest.approx(64 * 296e6 / 1e9, rel=0.01)  # one 64-byte beat per cycle
    assert gbps > 3.0
    assert "not the bottleneck" in accel.design_point_report(HILOS)
    assert accel.attention_seconds(HILOS, 1, 4096, 1, 128) == accel.kernel_cycles(4096, 128, 1) / 296e6


def test_tail_blocks():
    v2 = accel.loop_trips(1000, 128, 5, n_tail=16, tail_mode=2)
    assert v2["load"]["ld_tscore"] == 5 * 16 and v2["compute"]["p1_ts_tok"] == 5 * 128
    v1 = accel.loop_trips(1000, 128, 5, n_tail=16, tail_mode=1)
    assert v1["load"]["ld_tscore"] == 0 and v1["compute"]["p1_kwrite"] == 1000 + 16
    assert accel.loop_trips(1000, 128, 5, n_tail=16, tail_mode=0)["compute"]["p2_vwrite"] == 1000


def test_bad_inputs_raise_spec_error():
    with pytest.raises(SpecError, match="clock_mhz"):
        accel.attention_seconds(FpgaSpec(), 1, 128, 1, 128)
    with pytest.raises(SpecError, match="head_dim"):
        accel.kernel_cycles(128, 256, 1)
    with pytest.raises(SpecError, match="group"):
        accel.kernel_cycles(128, 128, 9)


def test_every_modelled_loop_is_labelled_in_the_cpp_kernel():
    hls_inc = os.path.join(os.path.dirname(__file__), "..", "hls", "include", "inf2_attn")
    src = "".join(open(p).read() for p in glob.glob(os.path.join(hls_inc, "*.h")))
    for labels in accel.LOOP_TERMS.values():
        for label in labels:
            assert f"{label}:" in src and f"INF2_TRIP({label})" in src, label
