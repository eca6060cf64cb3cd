"""inf2sim.rates: roofline service times from a hand-written profile."""
from dataclasses import replace

import pytest

from inf2sim import rates
from inf2sim.plan import Attention, DenseCompute, Transfer
from inf2sim.specs import ChassisSpec, CpuSpec, CsdSpec, FpgaSpec, GpuSpec, HardwareProfile, HostSpec, LinkSpec, StorageSpec
from inf2sim.topology import build_topology

HW = HardwareProfile(
    name="round",
    gpu=GpuSpec(fp16_tflops=100, fp32_tflops=10, mem_gbps=1000, gemm_efficiency=0.5,
                attention_efficiency=0.25, launch_us=10, link=LinkSpec(20, 10, 5)),
    cpu=CpuSpec(attention_gbps=20, gemm_gflops=1000, op_overhead_us=50),
    host=HostSpec(dram=LinkSpec(400, 400, 0), ipc_us=20),
    ssd_count=0,
    csd_count=2,
    chassis=ChassisSpec(uplink=LinkSpec(16, 16, 1), port=LinkSpec(8, 8, 1), csds_per_port=2),
    csd=CsdSpec(host_link=LinkSpec(4, 4, 1), internal_link=LinkSpec(4, 4, 1),
                ssd=StorageSpec(req_kib=[4, 1024], read_gbps=[1, 2], write_gbps=[0.5, 1]),
                fpga=FpgaSpec(clock_mhz=300, macs=128, block_tokens=128, pipeline_depth=40)),
)


def dense(device="gpu", flops=0.0, nbytes=0):
    return DenseCompute("d", (), 0, 0, 0, "mlp", device=device, flops=flops, nbytes=nbytes)


def attn(device, rows=(0, 4), tokens=(0, 1000), kv_bytes=0, flops=0.0, stored_len=1000, group=1):
    return Attention("a", (), 1, 0, 0, "attn", device=device, rows=rows, tokens=tokens,
                     stored_len=stored_len, group=group, head_dim=128, flops=flops, kv_bytes=kv_bytes)


def test_gpu_dense_is_a_roofline_plus_launch():
    # compute bound: 1e12 FLOP / (100e12 * 0.5) = 20 ms; memory 1e9 B / 1e12 B/s = 1 ms
    assert rates.compute_seconds(dense(flops=1e12, nbytes=10**9), HW) == pytest.approx(0.020 + 10e-6)
    # memory bound: 1e9 FLOP -> 20 us; 1e10 B -> 10 ms
    assert rates.compute_seconds(dense(flops=1e9, nbytes=10**10), HW) == pytest.approx(0.010 + 10e-6)
    # fp32 uses the fp32 peak: 1e12 / (10e12 * 0.5) = 0.2 s
    assert rates.compute_seconds(dense(flops=1e12), HW, dtype_bytes=4) == pytest.approx(0.2 + 10e-6)


def test_gpu_attention_reads_kv_at_the_attention_efficiency():
    # 1e9 B / (1000e9 * 0.25) = 4 ms, above the FLOP time of 1e9 / 50e12
    op = attn("gpu", kv_bytes=10**9, flops=1e9)
    assert rates.compute_seconds(op, HW) == pytest.approx(0.004 + 10e-6)
    # derived sizes when the scheduler leaves them 0: 4 rows x 1000 pos x 128 x 2 (K,V) x 2 B
    assert rates.attention_kv_bytes(attn("gpu")) == 4 * 1000 * 128 * 2 * 2
    assert rates.attention_flops(attn("gpu", group=2)) == 4.0 * 4 * 2 * 1000 * 128


def test_cpu_times_attention_by_kv_scan_and_dense_by_gemm_rate():
    assert rates.compute_seconds(attn("cpu", kv_bytes=2 * 10**9), HW) == pytest.approx(0.1 + 50e-6)
    assert rates.compute_seconds(dense("cpu", flops=1e12), HW) == pytest.approx(1.0 + 50e-6)


def test_fpga_attention_uses_the_kernel_model_plus_host_round_trip():
    op = attn("csd1.fpga", tokens=(0, 1000), stored_len=990)
    assert rates.attention_shape(op) == (4, 990, 10)  # 990 stored + 10 tail positions
    from inf2sim.accel import attention_seconds

    expect = attention_seconds(HW.csd.fpga, 4, 990, 1, 128, 10) + 20e-6
    assert rates.compute_seconds(op, HW) == pytest.approx(expect)
    assert rates.compute_seconds(op, HW) > rates.ipc_s("csd1.fpga", HW)


def test_bad_ops_and_devices_are_rejected():
    with pytest.raises(ValueError):
        rates.compute_seconds(dense("csd0.fpga", flops=1.0), HW)
    with pytest.raises(ValueError):
        rates.compute_seconds(attn("tpu"), HW)
    with pytest.raises(TypeError):
        rates.compute_seconds(Transfer("t", (), 0, 0, 0, "kv", src="dram", dst="gpu", nbytes=1), HW)
    no_gpu = HardwareProfile(name="nogpu")
    with pytest.raises(ValueError, match="fp16_tflops"):
        rates.compute_seconds(dense(flops=1.0), no_gpu)


def test_transfer_alone_is_bottleneck_plus_path_latency():
    topo = build_topology(HW)
    # dram -> csd0.fpga: dram 400, chassis 16, port 8, csd0 4, fpga link 4 -> 4 GB/s;
    # latency 0 + 1 + 1 + 1 + 1 us
    assert rates.transfer_seconds_alone(topo, "dram", "csd0.fpga", 4 * 10**9) == pytest.approx(1.0 + 4e-6)
    # P2P read at 4 KiB: the flash curve (1 GB/s) is the bottleneck; media latency 0
    assert rates.transfer_seconds_alone(topo, "csd0.ssd", "csd0.fpga", 10**9, 4096) == pytest.approx(1.0 + 1e-6)
    assert rates.transfer_seconds_alone(topo, "gpu", "gpu", 10**9) == 0.0


def test_measured_attention_curves_replace_the_rates():
    """Calibrated curves (K+V KiB -> us beyond the fixed cost) are interpolated, and
    extrapolated along their end segments; without them the rates apply."""
    from dataclasses import replace

    hw = replace(HW, cpu=replace(HW.cpu, attention_kib=[1000.0, 3000.0], attention_us=[100.0, 500.0]),
                 gpu=replace(HW.gpu, decode_attention_kib=[1000.0, 2000.0], decode_attention_us=[10.0, 30.0]),
                 csd=replace(HW.csd, attend_kib=[100.0, 200.0], attend_us=[40.0, 60.0]))
    kib = 2000 * 1024  # half-way along the cpu curve: 300 us + op_overhead 50 us
    assert rates.compute_seconds(attn("cpu", kv_bytes=kib), hw) == pytest.approx(350e-6)
    assert rates.compute_seconds(attn("cpu", kv_bytes=5000 * 1024), hw) == pytest.approx(950e-6)  # beyond the end
    assert rates.compute_seconds(attn("gpu", kv_bytes=3000 * 1024, tokens=(0, 1000)), hw) == pytest.approx(60e-6)
    # GQA: measured at 4 query heads per KV row; 2 heads lie a third of the way from 1 to 4
    gqa = replace(hw, gpu=replace(hw.gpu, decode_attention_gqa_us=[40.0, 90.0]))
    assert rates.compute_seconds(attn("gpu", kv_bytes=kib, group=4), gqa) == pytest.approx(100e-6)
    assert rates.compute_seconds(attn("gpu", kv_bytes=kib, group=2), gqa) == pytest.approx((30 + 20 + 10) * 1e-6)  # + launch
    # the emulated CSD's curve is sized by accel.kv_bytes: 4 rows x 1000 tokens x 128 x 4 B = 2000 KiB
    assert rates.compute_seconds(attn("csd0.fpga"), hw) == pytest.approx((40 + 20 * 1900 / 100 + 20) * 1e-6)
    # and its GQA curve (4 query heads per K,V row) the same way as the GPU's
    csd4 = replace(hw, csd=replace(hw.csd, attend_gqa_us=[70.0, 90.0]))
    assert rates.compute_seconds(attn("csd0.fpga", group=4), csd4) == pytest.approx((70 + 20 * 1900 / 100 + 20) * 1e-6)
    assert rates.compute_seconds(attn("csd0.fpga", group=1), csd4) == pytest.approx((40 + 20 * 1900 / 100 + 20) * 1e-6)
    assert rates.compute_seconds(attn("cpu", kv_bytes=kib), HW) == pytest.approx(kib / 20e9 + 50e-6)
    # token-major K,V (FlexGen's drive reads) use their own curve where the profile has one
    tok = replace(hw, cpu=replace(hw.cpu, tokens_attention_kib=[1000.0, 3000.0], tokens_attention_us=[200.0, 1000.0]))
    from dataclasses import replace as _r
    op = _r(attn("cpu", kv_bytes=kib), kv_layout="tokens")
    assert rates.compute_seconds(op, tok) == pytest.approx(650e-6)
    assert rates.compute_seconds(op, hw) == pytest.approx(350e-6)  # no such curve: the rows one


def test_bad_attention_curve_is_a_one_line_error():
    from inf2sim.config import default_config, specs_from_config
    from inf2sim.specs import SpecError

    with pytest.raises(SpecError, match="cpu.attention_kib"):
        specs_from_config(default_config(model="opt-125m", **{"hardware.cpu.attention_kib": [2.0, 1.0],
                                                              "hardware.cpu.attention_us": [1.0, 2.0]}))


def test_lm_head_streams_at_its_own_rate():
    from dataclasses import replace

    head = DenseCompute("h", (), 0, 0, 0, "head", device="gpu", flops=1e6, nbytes=10**9)
    assert rates.compute_seconds(head, HW) == pytest.approx(1e-3 + 10e-6)  # mem_gbps 1000
    hw = replace(HW, gpu=replace(HW.gpu, head_mem_gbps=500))
    assert rates.compute_seconds(head, hw) == pytest.approx(2e-3 + 10e-6)
    assert rates.compute_seconds(dense(flops=1e6, nbytes=10**9), hw) == pytest.approx(1e-3 + 10e-6)


def test_prefill_score_cost_follows_the_measured_curve_over_score_size():
    """A prefill's score term is n = rows*group*q_len*ctx elements at score_ns(n): the
    measured curve over the fp32 score matrix's size, linear between points and held
    beyond its ends."""
    from dataclasses import replace

    from inf2sim.config import default_config, specs_from_config
    from inf2sim.specs import SpecError

    g = replace(HW.gpu, attention_score_ns=50.0, attention_score_mib=[1.0, 3.0], attention_score_mib_ns=[10.0, 30.0])
    mib = 2**20 // 4  # elements per MiB of fp32
    assert rates.score_ns(g, mib // 2) == 10.0 and rates.score_ns(g, 2 * mib) == pytest.approx(20.0)
    assert rates.score_ns(g, 100 * mib) == 30.0
    assert rates.score_ns(replace(g, attention_score_mib=[], attention_score_mib_ns=[]), 2 * mib) == 50.0
    hw = replace(HW, gpu=g)

    def prefill(p):
        return Attention("a", (), 0, 0, 0, "attn", device="gpu", rows=(0, 8), tokens=(0, p), stored_len=p, q_len=p,
                         group=1, head_dim=128, flops=1.0, kv_bytes=1)

    flat = replace(hw, gpu=replace(g, attention_score_mib=[], attention_score_mib_ns=[], attention_score_ns=0.0))
    n = 8 * 256 * 256  # 2 MiB of scores: half-way along the curve
    assert rates.compute_seconds(prefill(256), hw) == pytest.approx(rates.compute_seconds(prefill(256), flat) + n * 20e-9)
    # a fused kernel (attention_score_head_dim > 0): the curve is keyed by one head's matrix
    # (256 x 256 = 0.25 MiB: held at the first point, 10 ns) and scaled by head_dim / 64
    fused = replace(hw, gpu=replace(g, attention_score_head_dim=64))
    assert rates.compute_seconds(prefill(256), fused) == pytest.approx(
        rates.compute_seconds(prefill(256), flat) + n * 10e-9 * 128 / 64)
    with pytest.raises(SpecError, match="attention_score_mib"):
        specs_from_config(default_config(model="opt-125m", **{"hardware.gpu.attention_score_mib": [4.0, 1.0],
                                                              "hardware.gpu.attention_score_mib_ns": [1.0, 2.0]}))


def test_a_fused_prefill_streams_kv_at_the_stream_rate_not_the_decode_efficiency():
    """attention_efficiency is measured on the decode path; a fused prompt kernel reads K,V
    once at gpu.mem_gbps. With the scores free and the flops negligible, the op is its K,V
    bytes over mem_gbps when fused, over mem_gbps x attention_efficiency when not."""
    g = replace(HW.gpu, mem_gbps=100.0, attention_efficiency=0.25, attention_score_ns=0.0,
                attention_score_mib=[], attention_score_mib_ns=[], decode_attention_kib=[], decode_attention_us=[])
    p, rows, d = 256, 64, 128
    op = Attention("a", (), 0, 0, 0, "attn", device="gpu", rows=(0, rows), tokens=(0, p), stored_len=p, q_len=p,
                   group=1, head_dim=d, flops=1.0, kv_bytes=1)
    kv = rates.attention_kv_bytes(op, 2)
    fused = replace(HW, gpu=replace(g, attention_score_head_dim=d))
    plain = replace(HW, gpu=replace(g, attention_score_head_dim=0))
    assert rates.work_seconds(op, fused, 2) == pytest.approx(kv / 100e9)
    assert rates.work_seconds(op, plain, 2) == pytest.approx(kv / 25e9)


def test_cpu_attention_with_gqa_interpolates_between_the_measured_group_curves():
    """cpu.attention_us is measured with 1 query head per K,V row, attention_gqa_us with 4 on
    the same grid: a G=4 op takes the second curve, G=2 a third of the way, G=1 the first;
    without a GQA curve every group takes the first (the old model)."""
    kib, us1, us4 = [1024.0, 4096.0], [100.0, 400.0], [160.0, 640.0]
    cpu = replace(HW.cpu, attention_kib=kib, attention_us=us1, attention_gqa_us=us4)
    hw = replace(HW, cpu=cpu)

    def op(group):
        return Attention("a", (), 0, 0, 0, "attn", device="cpu", rows=(0, 8), tokens=(0, 64), stored_len=64,
                         q_len=1, group=group, head_dim=128, flops=1.0, kv_bytes=1)

    kv = rates.attention_kv_bytes(op(1), 2)
    t1 = rates.curve_seconds(kib, us1, kv)
    t4 = rates.curve_seconds(kib, us4, kv)
    assert rates.work_seconds(op(1), hw, 2) == pytest.approx(t1)
    assert rates.work_seconds(op(4), hw, 2) == pytest.approx(t4)
    assert rates.work_seconds(op(2), hw, 2) == pytest.approx(t1 + (t4 - t1) / 3)
    old = replace(HW, cpu=replace(cpu, attention_gqa_us=[]))
    assert rates.work_seconds(op(4), old, 2) == pytest.approx(t1)


def test_compute_scale_slows_only_the_host_cores_devices():
    """host.compute_scale (inf2 validate's speed probe) multiplies every compute op of
    host.core_devices, fixed cost included; other devices keep their times."""
    from dataclasses import replace

    slow = replace(HW, host=replace(HW.host, compute_scale=1.5))
    for op in (attn("cpu", kv_bytes=4 << 20), attn("csd0.fpga")):
        assert rates.compute_seconds(op, slow) == pytest.approx(1.5 * rates.compute_seconds(op, HW))
    g = dense(flops=1e12)
    assert rates.compute_seconds(g, slow) == pytest.approx(rates.compute_seconds(g, HW))  # gpu: not a core device
    cores = replace(slow, host=replace(slow.host, core_devices=["gpu", "cpu", "fpga"]))
    assert rates.compute_seconds(g, cores) == pytest.approx(1.5 * rates.compute_seconds(g, HW))
