"""gpu.op_curves: measured ops of named model shapes replace the rates model for exactly
those shapes (inf2sim.op_curves), load from YAML, reject malformed curves in one line, and
`inf2hw.calibrate_ops` times the engine's ops into them."""
from dataclasses import replace

import pytest

from inf2sim import rates
from inf2sim.config import default_config, specs_from_config
from inf2sim.plan import Attention, DenseCompute
from inf2sim.scheduler import build_plan
from inf2sim.specs import GpuSpec, HardwareProfile, OpCurve, SpecError

MD = specs_from_config(default_config(model="opt-125m")).model
QKV = OpCurve(what="qkv", model="opt-125m", flops_per_token=MD.dense_flops_per_token("qkv"),
              tokens=[1, 4, 16], us=[100.0, 400.0, 1000.0])
ATT = OpCurve(what="prefill_attention", model="opt-125m", group=1, head_dim=64, tokens=[16, 64], us=[1.0, 10.0])
HW = HardwareProfile(gpu=GpuSpec(fp16_tflops=100, mem_gbps=1000, launch_us=10, op_curves=[QKV, ATT]))


def qkv_op(tokens: int, seqs: int = 1, flops_per_token: float = QKV.flops_per_token) -> DenseCompute:
    return DenseCompute("s0.L0.m0.qkv", (), 0, 0, 0, "qkv", "gpu", flops_per_token * tokens * seqs, 1000,
                        (0, seqs), (0, tokens))


def test_a_matching_dense_op_takes_the_curve_interpolated_in_tokens():
    assert rates.compute_seconds(qkv_op(4), HW) == pytest.approx((400 + 10) * 1e-6)
    assert rates.compute_seconds(qkv_op(1, seqs=4), HW) == pytest.approx((400 + 10) * 1e-6)  # tokens x sequences
    assert rates.compute_seconds(qkv_op(10), HW) == pytest.approx((700 + 10) * 1e-6)  # between 4 and 16
    assert rates.compute_seconds(qkv_op(32), HW) == pytest.approx((2000 + 10) * 1e-6)  # beyond: in proportion


def test_other_shapes_keep_the_rates_model():
    other = qkv_op(4, flops_per_token=QKV.flops_per_token * 1.01)
    assert rates.compute_seconds(other, HW) == pytest.approx(rates.compute_seconds(other, replace(
        HW, gpu=replace(HW.gpu, op_curves=[]))))
    post = replace(qkv_op(4), what="post")
    assert rates.compute_seconds(post, HW) != pytest.approx((400 + 10) * 1e-6)


def test_prefill_attention_curve_is_per_row_and_grows_with_the_prompt_squared():
    def op(p, group=1, head_dim=64):
        return Attention("s0.L0.m0.attn", (), 0, 0, 0, "attn_out", "gpu", rows=(0, 8), tokens=(0, p), stored_len=0,
                         q_len=p, group=group, head_dim=head_dim, flops=1.0, kv_bytes=1)
    assert rates.compute_seconds(op(64), HW) == pytest.approx((8 * 10.0 + 10) * 1e-6)
    assert rates.compute_seconds(op(128), HW) == pytest.approx((8 * 40.0 + 10) * 1e-6)
    assert rates.compute_seconds(op(64, head_dim=128), HW) != pytest.approx((8 * 10.0 + 10) * 1e-6)


DEC = OpCurve(what="decode_attention", model="opt-125m", group=1, head_dim=64, tokens=[128, 512], us=[2.0, 6.0])


def test_cpu_decode_attention_curve_is_per_row_over_the_attended_positions():
    """A one-query attention on the cpu device of the curve's (group, head_dim) over a host
    store takes rows x the per-row curve at its attended positions + op_overhead_us; other
    shapes, token-major K,V (drive reads) and prompt attention keep the KiB curves / rate."""
    from inf2sim.specs import CpuSpec

    cpu = CpuSpec(attention_gbps=1.0, op_overhead_us=5.0, op_curves=[DEC])
    hw = HardwareProfile(gpu=HW.gpu, cpu=cpu)

    def op(n, rows=16, group=1, head_dim=64, layout="rows", q_len=1):
        return Attention("s1.L0.m0.attn", (), 1, 0, 0, "attn_out", "cpu", rows=(0, rows), tokens=(0, n),
                         stored_len=n, q_len=q_len, group=group, head_dim=head_dim, flops=1.0,
                         kv_bytes=2 * rows * n * head_dim * 2, kv_layout=layout)
    assert rates.compute_seconds(op(128), hw) == pytest.approx((16 * 2.0 + 5) * 1e-6)
    assert rates.compute_seconds(op(320, rows=48), hw) == pytest.approx((48 * 4.0 + 5) * 1e-6)  # between the points
    assert rates.compute_seconds(op(1024), hw) == pytest.approx((16 * 12.0 + 5) * 1e-6)  # beyond: in proportion
    plain = replace(hw, cpu=replace(cpu, op_curves=[]))
    for other in (op(128, head_dim=128), op(128, group=4), op(128, layout="tokens")):
        assert rates.compute_seconds(other, hw) == pytest.approx(rates.compute_seconds(other, plain))


def test_a_decode_attention_curve_belongs_to_the_cpu_list_only():
    dec = {"what": "decode_attention", "group": 1, "head_dim": 64, "tokens": [128, 512], "us": [2.0, 6.0]}
    hw = specs_from_config(default_config(model="opt-125m", **{"hardware.cpu.op_curves": [dec]})).hardware
    assert hw.cpu.op_curves[0].what == "decode_attention"
    with pytest.raises(SpecError, match=r"hardware.gpu.op_curves\[0\].what='decode_attention'"):
        specs_from_config(default_config(model="opt-125m", **{"hardware.gpu.op_curves": [dec]}))
    with pytest.raises(SpecError, match=r"hardware.cpu.op_curves\[0\].what='qkv'"):
        specs_from_config(default_config(model="opt-125m", **{"hardware.cpu.op_curves": [
            {"what": "qkv", "flops_per_token": 5.0, "tokens": [1, 2], "us": [1.0, 2.0]}]}))
    with pytest.raises(SpecError, match="head_dim > 0"):
        specs_from_config(default_config(model="opt-125m", **{"hardware.cpu.op_curves": [{**dec, "head_dim": 0}]}))


def test_the_scheduler_ops_match_curves_keyed_by_the_model():
    spec = specs_from_config(default_config(model="opt-125m", workload="tiny", policy="flexgen_dram"))
    plan, _ = build_plan(spec.model, spec.workload, replace(spec.hardware, gpu=replace(spec.hardware.gpu, op_curves=[QKV])),
                         spec.policy)
    from inf2sim.op_curves import find_dense

    step1 = next(plan.steps([1]))
    qkvs = [o for o in step1.ops if isinstance(o, DenseCompute) and o.what == "qkv"]
    assert qkvs and all(find_dense([QKV], o) is QKV for o in qkvs)


def test_curves_load_from_yaml_and_bad_ones_are_one_line_errors():
    hw = specs_from_config(default_config(model="opt-125m", **{"hardware.gpu.op_curves": [
        {"what": "qkv", "flops_per_token": 5.0, "tokens": [1, 2], "us": [1.0, 2.0]}]})).hardware
    assert hw.gpu.op_curves[0].tokens == [1.0, 2.0]
    for bad, msg in (({"what": "mlp", "flops_per_token": 5.0, "tokens": [1], "us": [1.0]}, "what='mlp'"),
                     ({"what": "qkv", "flops_per_token": 5.0, "tokens": [2, 1], "us": [1.0, 2.0]}, "increasing"),
                     ({"what": "qkv", "flops_per_token": 5.0, "tokens": [1, 2], "us": [1.0]}, "equal length"),
                     ({"what": "prefill_attention", "tokens": [1], "us": [1.0]}, "head_dim")):
        with pytest.raises(SpecError, match=msg) as e:
            specs_from_config(default_config(model="opt-125m", **{"hardware.gpu.op_curves": [bad]}))
        assert "hardware.gpu.op_curves[0]" in str(e.value) and "\n" not in str(e.value)


def test_calibrate_ops_times_the_engine_ops_of_a_model():
    from inf2hw import calibrate_ops
    from inf2hw.calibrate import CalibrateOptions, Calibration
    from inf2hw.calibrate_profile import _op_curves

    cal = Calibration(CalibrateOptions(quick=True, models=("llama-tiny",)), "2026-11-27", "m", "cpu")
    cal.put("dense_op_us", 1.0, "test")
    ticks = []
    calibrate_ops.model_ops(cal, "cpu", ["llama-tiny"], True, lambda: ticks.append(1))
    assert len(ticks) == 3 and [c["what"] for c in cal.op_curves] == ["qkv", "post", "head", "prefill_attention"]
    md = calibrate_ops.load_model("llama-tiny", 4)
    assert cal.op_curves[0]["flops_per_token"] == md.dense_flops_per_token("qkv")
    assert cal.op_curves[3]["group"] == md.group_size and cal.op_curves[3]["head_dim"] == md.head_dim
    for c in cal.op_curves:
        assert len(c["tokens"]) == len(c["us"]) >= 4 and all(u >= 0 for u in c["us"])
    # the big prompt costs more than the small one (timings, not constants)
    assert cal.op_curves[1]["us"][-1] > cal.op_curves[1]["us"][0]
    # on a CPU each point has the speed probe beside it; scaled to a reference probe, a point
    # timed while the probe read 10 % slow comes out 10 % faster
    assert all(len(c["probe_ms"]) == len(c["us"]) and min(c["probe_ms"]) > 0 for c in cal.op_curves)
    # one probe pair per timed point: qkv and post are timed together, so counted once
    assert len(cal.near_probes) == sum(len(c["tokens"]) for c in cal.op_curves if c["what"] != "post")
    c0 = cal.op_curves[0]
    ref, us, ps = c0["probe_ms"][0] * 1.1, list(c0["us"]), list(c0["probe_ms"])
    cal.scale_to_probe(ref)
    assert c0["us"] == pytest.approx([u * ref / p for u, p in zip(us, ps)]) and "probe_ms" not in c0
    assert "the probe beside it" in c0["how"]
    lines = _op_curves(cal, "src")
    assert lines[0].startswith("  op_curves:") and all("#" in ln for ln in lines[1:])


def test_unknown_calibrate_model_is_a_one_line_error():
    from omegaconf import OmegaConf

    from inf2hw.loop import calibrate_options

    with pytest.raises(SpecError, match="calibrate.models: model='nope' is not known"):
        calibrate_options(OmegaConf.create({"calibrate": {"models": ["nope"]}}))
    assert calibrate_options(OmegaConf.create({"calibrate": {"models": "opt-125m,llama-110m"}})).models == (
        "opt-125m", "llama-110m")
