"""DesBackend: exact times of hand-written step plans, and its speed on a plan of
realistic shape (`pytest -m slow tests/test_des_backend.py -s` prints ops/s)."""
import time

import pytest
from inf2sim.config import _to_spec, load_group
from inf2sim.des import DesBackend
from inf2sim.driver import drive
from inf2sim.plan import Attention, DenseCompute, Spill, StepPlan, Transfer
from inf2sim.specs import ChassisSpec, CpuSpec, CsdSpec, GpuSpec, HardwareProfile, HostSpec, LinkSpec, StorageSpec

GB = 10**9
MiB = 1 << 20

# Round numbers: GPU 1 TFLOP/s, its link 1 GB/s; one CSD whose flash reads at
# 1 GB/s and writes at 0.5 GB/s; every other link faster; no latencies.
TINY = HardwareProfile(
    name="tiny",
    gpu=GpuSpec(fp16_tflops=1, mem_gbps=1000, gemm_efficiency=1, attention_efficiency=1, link=LinkSpec(1, 1, 0)),
    cpu=CpuSpec(attention_gbps=1, gemm_gflops=1),
    host=HostSpec(dram=LinkSpec(100, 100, 0)),
    ssd_count=0,
    csd_count=1,
    chassis=ChassisSpec(uplink=LinkSpec(4, 4, 0), port=LinkSpec(4, 4, 0), csds_per_port=2),
    csd=CsdSpec(host_link=LinkSpec(2, 2, 0), internal_link=LinkSpec(2, 2, 0),
                ssd=StorageSpec(req_kib=[4, 1024], read_gbps=[1, 1], write_gbps=[0.5, 0.5])),
)


def xfer(name, src, dst, nbytes, deps=(), step=0, req=0):
    return Transfer(name, tuple(deps), step, 0, 0, "kv", src=src, dst=dst, nbytes=nbytes, req_bytes=req)


def gemm(name, tflop, deps=(), step=0, device="gpu"):
    return DenseCompute(name, tuple(deps), step, 0, 0, "mlp", device=device, flops=tflop * 1e12)


def spill(name, nbytes, deps=(), step=0):
    return Spill(name, tuple(deps), step, 0, 0, "kv_new", dst="csd0.ssd", nbytes=nbytes, req_bytes=MiB)


def step(s, *ops):
    return StepPlan(s, "decode", 1, 1, tuple(ops))


def times(spans):
    """name -> (start_s, end_s), compared to hand-computed values up to float round-off."""
    return {sp.name: pytest.approx((sp.start_s, sp.end_s), rel=1e-12) for sp in spans}


def test_steps_with_deps_queues_spills_and_skipped_steps():
    be = DesBackend(TINY)
    got0 = be.execute(step(
        0,
        xfer("t0", "dram", "gpu", GB),             # 0..1 at the GPU link's 1 GB/s
        gemm("c1", 0.5),                           # no deps: 0..0.5
        gemm("c0", 1.0, deps=["t0"]),              # after t0: 1..2
        gemm("c2", 0.5, deps=["t0"]),              # ready at 1, queues behind c0: 2..2.5
        spill("sp", 3 * GB // 2),                  # 1.5 GB at 0.5 GB/s write: 0..3, off the critical path
    ))
    assert times(got0) == {
        "t0": (0.0, 1.0), "c1": (0.0, 0.5), "c0": (1.0, 2.0), "c2": (2.0, 2.5)}
    assert be.now_s == pytest.approx(2.5)

    got1 = be.execute(step(
        1,
        gemm("c3", 1.0, deps=["c2"], step=1),                                  # 2.5..3.5
        xfer("r", "csd0.ssd", "csd0.fpga", GB, deps=["sp"], step=1, req=MiB),  # waits for the spill: 3..4
    ))
    assert times(got1) == {"sp": (0.0, 3.0), "c3": (2.5, 3.5), "r": (3.0, 4.0)}
    assert be.now_s == pytest.approx(4.0)

    # Step 2 was skipped (fast fidelity): a dep on one of its ops counts as done.
    got3 = be.execute(step(
        3,
        xfer("x", "gpu", "dram", GB, deps=["s2.never_run"], step=3),  # 4..5
        spill("sp2", GB, step=3),                                     # 4..6, drained by finish()
    ))
    assert times(got3) == {"x": (4.0, 5.0)}
    rest = be.finish()
    assert times(rest) == {"sp2": (4.0, 6.0)}
    assert be.now_s == pytest.approx(6.0)

    sp = next(s for s in got1 if s.name == "sp")
    assert (sp.kind, sp.resource, sp.step, sp.nbytes) == ("Spill", "dram->csd0.ssd", 0, 3 * GB // 2)
    c3 = next(s for s in got1 if s.name == "c3")
    assert (c3.kind, c3.resource, c3.what) == ("DenseCompute", "gpu", "mlp")
    assert next(s for s in got0 if s.name == "t0").resource == "dram->gpu"

    assert be.bytes_by_link["gpu"] == 2 * GB
    assert be.bytes_by_link["csd0.nand"] == 3 * GB // 2 + GB + GB
    assert be.bytes_by_link_dir[("csd0.nand", "down")] == 3 * GB // 2 + GB
    assert be.bytes_by_link_dir[("dram", "up")] == GB + 3 * GB // 2 + GB
    busy = be.busy_s
    assert busy["gpu"] == pytest.approx(3.0)          # device: summed service time
    assert busy["link:gpu"] == pytest.approx(2.0)     # 0..1 and 4..5
    assert busy["link:csd0.nand"] == pytest.approx(6.0)


def test_transfers_share_links_inside_a_step():
    be = DesBackend(TINY)
    got = be.execute(step(0, xfer("a", "dram", "gpu", GB), xfer("b", "dram", "gpu", GB),
                          xfer("local", "gpu", "gpu", GB), xfer("empty", "dram", "gpu", 0)))
    assert times(got) == {
        "a": (0.0, 2.0), "b": (0.0, 2.0), "local": (0.0, 0.0), "empty": (0.0, 0.0)}


@pytest.mark.parametrize("slots, ends", [(1, (1.0, 2.0)), (2, (1.0, 1.0))])
def test_cpu_slots(slots, ends):
    be = DesBackend(TINY, cpu_slots=slots)
    ops = [Attention(f"a{i}", (), 0, 0, 0, "attn", device="cpu", rows=(0, 1), tokens=(0, 1), kv_bytes=GB)
           for i in range(2)]
    got = be.execute(step(0, *ops))
    assert tuple(sorted(s.end_s for s in got)) == pytest.approx(ends)
    assert be.busy_s["cpu"] == pytest.approx(2.0)


def test_bad_plans_are_rejected():
    with pytest.raises(ValueError, match="unknown op"):
        DesBackend(TINY).execute(step(0, gemm("c", 1.0, deps=["nope"])))
    be = DesBackend(TINY)
    be.execute(step(0, gemm("c", 0.1)))
    with pytest.raises(ValueError, match="already used"):
        be.execute(step(1, gemm("c", 0.1, step=1)))
    with pytest.raises(ValueError, match="not in hardware"):
        DesBackend(TINY).execute(step(0, xfer("t", "dram", "csd5.fpga", GB)))
    with pytest.raises(ValueError, match="csd_count"):
        DesBackend(TINY).execute(step(0, Attention("a", (), 0, 0, 0, "attn", device="csd3.fpga", rows=(0, 1), tokens=(0, 8))))
    with pytest.raises(RuntimeError, match="cannot finish"):
        DesBackend(TINY).execute(step(0, gemm("p", 0.1, deps=["q"]), gemm("q", 0.1, deps=["p"])))


# ----------------------------------------------------------------- speed
def paper_a100() -> HardwareProfile:
    # no public "load one hardware profile" helper yet; this is what the config loader does
    return _to_spec(HardwareProfile, load_group("hardware", "paper_a100"), "hardware")


def ans_like_steps(num_steps, layers=48, csds=16, spill_every=4):
    """The shape of an attention-near-storage decode step (OPT-30B-ish sizes):
    per layer a weight prefetch, QKV on the GPU, q down to every CSD, a P2P KV
    read and attention on each CSD, outputs up, the post-attention block on the
    GPU; every `spill_every` steps each CSD gets a write-back. ~70 ops/layer."""
    for s in range(num_steps):
        ops = []
        for l in range(layers):
            p = f"s{s}.l{l}"
            prev = f"s{s}.l{l - 1}" if l else f"s{s - 1}.l{layers - 1}"
            w_deps = (f"{prev}.qkv",) if (l or s) else ()
            ops.append(xfer(f"{p}.w", "dram", "gpu", 1_200_000_000 // 4, deps=w_deps, step=s))
            post_prev = (f"{prev}.post",) if (l or s) else ()
            ops.append(DenseCompute(f"{p}.qkv", (f"{p}.w",) + post_prev, s, l, 0, "qkv", device="gpu",
                                    flops=2 * 32 * 7168 * 3 * 7168, nbytes=3 * 7168 * 7168 * 2))
            ops.append(xfer(f"{p}.qd", "gpu", "dram", 3 * 32 * 7168 * 2, deps=[f"{p}.qkv"], step=s))
            outs = []
            for i in range(csds):
                ops.append(xfer(f"{p}.q{i}", "dram", f"csd{i}.fpga", 3 * 2 * 7168 * 2, deps=[f"{p}.qd"], step=s))
                kv_deps = (f"{prev}.a{i}",) if (l or s) else ()
                kv = 2 * 4 * 56 * 600 * 128 * 2 // csds
                ops.append(xfer(f"{p}.kv{i}", f"csd{i}.ssd", f"csd{i}.fpga", kv, deps=kv_deps, step=s, req=MiB))
                ops.append(Attention(f"{p}.a{i}", (f"{p}.q{i}", f"{p}.kv{i}"), s, l, 0, "attn", device=f"csd{i}.fpga",
                                     rows=(0, 2 * 56 // csds), tokens=(0, 600), stored_len=596, kv_bytes=kv))
                ops.append(xfer(f"{p}.o{i}", f"csd{i}.fpga", "dram", 2 * 56 // csds * 128 * 2, deps=[f"{p}.a{i}"], step=s))
                outs.append(f"{p}.o{i}")
                if s % spill_every == spill_every - 1:
                    ops.append(Spill(f"{p}.sp{i}", (f"{p}.qd",), s, l, 0, "kv_new", dst=f"csd{i}.ssd",
                                     nbytes=spill_every * 2 * 7168 * 2 * 2, req_bytes=0))
            ops.append(xfer(f"{p}.ad", "dram", "gpu", 32 * 7168 * 2, deps=outs, step=s))
            ops.append(DenseCompute(f"{p}.post", (f"{p}.ad", f"{p}.qkv"), s, l, 0, "post", device="gpu",
                                    flops=2 * 32 * 7168 * 9 * 7168, nbytes=9 * 7168 * 7168 * 2))
        yield StepPlan(s, "decode", 600 + s, 1, tuple(ops))


def _scheduled_run(policy, record=True, record_max_step=None):
    from inf2sim.scheduler import build_plan
    from inf2sim.simulate import resolve

    spec = resolve(model="opt-1.3b", policy=policy, **{"workload.batch": 8, "workload.prompt_len": 128,
                                                        "workload.gen_len": 6, "hardware.csd_count": 3,
                                                        "policy.wb.c": 2, "policy.xcache.alpha": 0.5})
    plan, _ = build_plan(spec.model, spec.workload, spec.hardware, spec.policy)
    be = DesBackend(spec.hardware, record=record, record_max_step=record_max_step)
    ends = {}
    spans = drive(plan.steps(), be, lambda st, _sp: ends.setdefault(st.step, be.now_s))
    return be, spans, ends[0]


@pytest.mark.parametrize("policy", ["inf2", "flexgen_ssd"])
def test_counters_give_the_span_metrics(policy):
    """simulate() reads busy fractions and kv_io_share from the backend's counters,
    not from spans: the same numbers as `fill_span_metrics` over every span."""
    from inf2sim.metrics import Metrics, fill_span_metrics

    be, spans, prefill_s = _scheduled_run(policy)
    assert len(spans) == be.ops_done
    m = Metrics()
    fill_span_metrics(m, spans, prefill_s, be.now_s, {f"link:{k}": v for k, v in be.link_busy_s.items()})
    devices = {k: v for k, v in m.busy_frac.items() if not k.startswith("link:")}
    assert devices == pytest.approx({k: v / be.now_s for k, v in be.device_busy_union_s.items()}, rel=1e-12)
    assert m.kv_io_share > 0
    assert m.kv_io_share == pytest.approx(be.kv_io_s / (be.now_s - prefill_s), rel=1e-12)


def test_recording_is_optional_and_can_stop_after_a_step():
    full, spans, _ = _scheduled_run("inf2")
    bare, none, _ = _scheduled_run("inf2", record=False)
    first, some, _ = _scheduled_run("inf2", record_max_step=1)
    assert none == [] and {s.step for s in some} == {0, 1}
    assert sorted((s.name, s.start_s, s.end_s) for s in some) == sorted(
        (s.name, s.start_s, s.end_s) for s in spans if s.step <= 1)
    for be in (bare, first):  # recording never changes the simulation
        assert (be.now_s, be.kv_io_s, be.ops_done, be.bytes_by_link_dir) == (
            full.now_s, full.kv_io_s, full.ops_done, full.bytes_by_link_dir)


def test_realistic_shape_runs_to_completion():
    hw = paper_a100()
    steps = list(ans_like_steps(4, layers=4))
    spans = drive(steps, DesBackend(hw))
    assert len(spans) == sum(len(s.ops) for s in steps)
    assert all(sp.end_s >= sp.start_s for sp in spans)


@pytest.mark.slow
@pytest.mark.parametrize("record", [True, False])
def test_speed_on_a_realistic_plan(record):
    """Times only the backend (execute + finish); steps are built lazily, as the
    driver does, so the plan is never all in memory."""
    hw = paper_a100()
    be = DesBackend(hw, record=record)
    n_ops, n_spans, wall = 0, 0, 0.0
    for st in ans_like_steps(120):
        n_ops += len(st.ops)
        t0 = time.perf_counter()
        n_spans += len(be.execute(st))
        wall += time.perf_counter() - t0
    t0 = time.perf_counter()
    n_spans += len(be.finish())
    wall += time.perf_counter() - t0
    print(f"\nDesBackend record={record}: {n_ops} ops in {wall:.2f} s = {n_ops / wall:,.0f} ops/s; "
          f"simulated {be.now_s:.2f} s")
    assert n_ops >= 390_000 and n_spans == (n_ops if record else 0)


@pytest.mark.parametrize("io_threads, want", [(0, {"load": (0.0, 1.0), "sp": (0.0, 0.5)}),
                                               (1, {"load": (0.0, 1.0), "sp": (1.0, 1.5)})])
def test_csd_flash_io_threads_serialise_its_moves(io_threads, want):
    """A load (1 GB at 1 GB/s) and a spill (0.25 GB at 0.5 GB/s) on one CSD's flash: with no
    limit they run at once on the flash's read and write sides; a CSD that serves one flash
    command at a time (the emulated CSD's I/O thread) runs the spill after the load."""
    from dataclasses import replace

    be = DesBackend(replace(TINY, csd=replace(TINY.csd, io_threads=io_threads)))
    got = be.execute(step(0, xfer("load", "csd0.ssd", "csd0.fpga", GB, req=MiB), spill("sp", GB // 4)))
    assert times(got + be.finish()) == want


def test_shared_host_cores_stretch_concurrent_compute():
    """On one shared core, a 1 s dense op and a 0.5 s CPU op that start together progress at
    half speed: the short one ends at 1 s, the long one finishes its last 0.5 s alone (1.5 s).
    Devices not listed in core_devices keep their own cores."""
    from dataclasses import replace

    ops = (gemm("g", 1.0), gemm("c", 0.5e-3, device="cpu"))
    alone = DesBackend(TINY).execute(step(0, *ops))
    assert times(alone) == {"g": (0.0, 1.0), "c": (0.0, 0.5)}
    shared = replace(TINY, host=replace(TINY.host, shared_cores=1, core_devices=["gpu", "cpu"]))
    assert times(DesBackend(shared).execute(step(0, *ops))) == {"g": (0.0, 1.5), "c": (0.0, 1.0)}
    two = replace(TINY, host=replace(TINY.host, shared_cores=2, core_devices=["gpu", "cpu"]))
    assert times(DesBackend(two).execute(step(0, *ops))) == {"g": (0.0, 1.0), "c": (0.0, 0.5)}
    only_cpu = replace(TINY, host=replace(TINY.host, shared_cores=1, core_devices=["cpu"]))
    assert times(DesBackend(only_cpu).execute(step(0, *ops))) == {"g": (0.0, 1.0), "c": (0.0, 0.5)}


@pytest.mark.parametrize("engines, want", [(0, {"w": (0.0, 1.5), "x": (0.0, 1.0), "o": (0.0, 1.0)}),
                                           (1, {"w": (0.0, 1.0), "x": (1.0, 1.5), "o": (0.0, 1.0)})])
def test_gpu_copy_engines_serve_one_direction_in_order(engines, want):
    """Two copies into the GPU (1 GB and 0.5 GB on a 1 GB/s link) and one out of it: sharing
    the link they progress together; with one copy engine per direction the second copy in
    waits for the first, and the copy out runs beside them."""
    from dataclasses import replace

    be = DesBackend(replace(TINY, gpu=replace(TINY.gpu, copy_engines=engines)))
    got = be.execute(step(0, xfer("w", "dram", "gpu", GB), xfer("x", "dram", "gpu", GB // 2),
                          xfer("o", "gpu", "dram", GB)))
    assert times(got + be.finish()) == want


@pytest.mark.parametrize("weights_first", [True, False])
def test_an_empty_copy_into_the_gpu_waits_for_earlier_weight_copies_not_the_copy_engine(weights_first):
    """o_h2d when every row attended on the GPU moves no bytes: it takes no copy-engine slot
    (it does not wait behind the X load queued there), but, recorded on the weights' copy
    stream, it ends after the weight copy sent before it (1 GB at 1 GB/s); with no weight
    copy in flight it ends at once."""
    from dataclasses import replace

    def move(name, what, nbytes):
        return Transfer(name, (), 0, 0, 0, what, src="dram", dst="gpu", nbytes=nbytes)

    be = DesBackend(replace(TINY, gpu=replace(TINY.gpu, copy_engines=1)))
    ops = [move("w", "weights", GB)] if weights_first else []
    ops += [move("x", "x", GB // 2), move("o", "attn_out", 0)]
    want = {"w": (0.0, 1.0), "x": (1.0, 1.5), "o": (1.0, 1.0)} if weights_first else {"x": (0.0, 0.5), "o": (0.0, 0.0)}
    assert times(be.execute(step(0, *ops)) + be.finish()) == want


@pytest.mark.parametrize("io_threads, want", [(0, {"r0": (0.0, 1.0), "r1": (0.0, 1.0)}),
                                               (1, {"r0": (0.0, 1.0), "r1": (1.0, 2.0)})])
def test_drive_io_threads_serve_moves_over_all_drives_in_order(io_threads, want):
    """Reads of 1 GB from two drives (1 GB/s media each, a 4 GB/s uplink): with no limit they
    run at once; a host that serves one drive command at a time (the engine's drive I/O
    pool, `ssd.io_threads`) runs the second after the first, though it is another drive."""
    from dataclasses import replace

    ssd = StorageSpec(link=LinkSpec(4, 4, 0), req_kib=[4, 1024], read_gbps=[1, 1], write_gbps=[1, 1],
                      io_threads=io_threads)
    hw = replace(TINY, ssd_count=2, ssd=ssd, ssd_uplink=LinkSpec(4, 4, 0))
    be = DesBackend(hw)
    got = be.execute(step(0, xfer("r0", "ssd0", "dram", GB), xfer("r1", "ssd1", "dram", GB)))
    assert times(got + be.finish()) == want


@pytest.mark.parametrize("core_moves, want", [([], {"r": (0.0, 1.0), "g": (0.0, 1.0)}),
                                               (["ssd"], {"r": (0.0, 1.0), "g": (0.0, 1.5)})])
def test_page_cache_drive_moves_take_a_share_of_the_host_cores(core_moves, want):
    """A 1 s dense op on the one shared core beside a 1 s drive read: when drive moves are
    copies on the host's cores (`host.core_moves`), the op runs at half speed while the read
    is in flight (0.5 s of work by t=1) and alone after; the read keeps its link's speed."""
    from dataclasses import replace

    ssd = StorageSpec(link=LinkSpec(4, 4, 0), req_kib=[4, 1024], read_gbps=[1, 1], write_gbps=[1, 1])
    host = replace(TINY.host, shared_cores=1, core_devices=["gpu", "cpu"], core_moves=core_moves)
    hw = replace(TINY, ssd_count=1, ssd=ssd, ssd_uplink=LinkSpec(4, 4, 0), host=host)
    be = DesBackend(hw)
    assert times(be.execute(step(0, xfer("r", "ssd0", "dram", GB), gemm("g", 1.0)))) == want


def test_moves_waiting_at_a_csd_start_in_issue_order():
    """One CSD serving one flash command at a time: load l0 (1 GB at 1 GB/s) runs from 0;
    spill sp2 waits from 0, spill sp and load l1 (behind a 0.5 s copy) from 0.5. When l0
    ends they go as the engine sends them: sp2 first (sent at 0), then of the two sent at
    0.5 the load (a prefetch), then the spill (0.25 GB at 0.5 GB/s each)."""
    from dataclasses import replace

    be = DesBackend(replace(TINY, csd=replace(TINY.csd, io_threads=1)))
    ops = (xfer("l0", "csd0.ssd", "csd0.fpga", GB, req=MiB), xfer("x", "dram", "gpu", GB // 2),
           spill("sp", GB // 4, deps=("x",)), spill("sp2", GB // 4),
           xfer("l1", "csd0.ssd", "csd0.fpga", GB, deps=("x",), req=MiB))
    got = times(be.execute(step(0, *ops)) + be.finish())
    assert (got["sp2"], got["l1"], got["sp"]) == ((1.0, 1.5), (1.5, 2.5), (2.5, 3.0))


def test_a_dep_on_the_same_csd_counts_as_met_once_sent():
    """The engine sends a command whose deps are commands to the same in-order CSD at once:
    spill sp (deps: load l0, on csd0) is sent at 0, load l1 (behind a 0.5 s copy) at 0.5.
    Both wait for l0 to end at 1.0; then sp goes first, though l1 is a prefetch and was
    ready here first."""
    from dataclasses import replace

    be = DesBackend(replace(TINY, csd=replace(TINY.csd, io_threads=1)))
    ops = (xfer("l0", "csd0.ssd", "csd0.fpga", GB, req=MiB), xfer("x", "dram", "gpu", GB // 2),
           spill("sp", GB // 4, deps=("l0",)), xfer("l1", "csd0.ssd", "csd0.fpga", GB, deps=("x",), req=MiB))
    got = times(be.execute(step(0, *ops)) + be.finish())
    assert (got["sp"], got["l1"]) == ((1.0, 1.5), (1.5, 2.5))


def test_emulated_csds_attending_together_slow_each_other_by_the_calibrated_ratio():
    """Two CSDs whose attends take 1 s alone and 1.5x that when both run (`attend_together`):
    started together both end at 1.5 s; with the second starting at 0.5 s (behind a copy),
    the first runs alone for 0.5 s, then both at 1/1.5 until it ends at 1.25 s, and the
    second finishes its last 0.5 s alone (1.75 s). Without the ratio each takes 1 s."""
    from dataclasses import replace

    csd = replace(TINY.csd, attend_kib=[1024, 4096], attend_us=[1e6, 1e6], attend_together=[1.5, 1.5],
                  together_count=2)
    hw = replace(TINY, csd_count=2, csd=csd)

    def att(name, i, deps=()):
        return Attention(name, tuple(deps), 0, 0, 0, "attn", device=f"csd{i}.fpga", rows=(0, 1), tokens=(0, 1024),
                         stored_len=1024, head_dim=128)

    assert times(DesBackend(hw).execute(step(0, att("a0", 0), att("a1", 1)))) == {"a0": (0.0, 1.5), "a1": (0.0, 1.5)}
    got = times(DesBackend(hw).execute(step(0, att("a0", 0), xfer("x", "dram", "gpu", GB // 2), att("a1", 1, ["x"]))))
    assert (got["a0"], got["a1"]) == ((0.0, 1.25), (0.5, 1.75))
    plain = replace(hw, csd=replace(csd, attend_together=[], together_count=0))
    assert times(DesBackend(plain).execute(step(0, att("a0", 0), att("a1", 1)))) == {"a0": (0.0, 1.0), "a1": (0.0, 1.0)}


def test_cpu_attention_slows_while_a_host_gpu_copy_runs():
    """`cpu.beside_dma_kib_ratio` 1.5: a CPU attention of 1 s alone (1 GB at 1 GB/s) beside a
    0.5 s host -> GPU copy does 1/3 s of its work in the first 0.5 s, the rest at full speed:
    it ends at 0.5 + 2/3 s. A second one after the copy, and every one without the ratio,
    takes 1 s."""
    from dataclasses import replace

    def att(name, deps=()):
        return Attention(name, tuple(deps), 0, 0, 0, "attn", device="cpu", rows=(0, 1), tokens=(0, 1), kv_bytes=GB)

    hw = replace(TINY, cpu=replace(TINY.cpu, beside_dma_kib=[1, 1e9], beside_dma_kib_ratio=[1.5, 1.5]))
    ops = (att("a"), xfer("w", "dram", "gpu", GB // 2), att("b", ["w"]))
    got = times(DesBackend(hw, cpu_slots=2).execute(step(0, *ops)))
    assert (got["a"], got["w"], got["b"]) == ((0.0, 0.5 + 2 / 3), (0.0, 0.5), (0.5, 1.5))
    plain = times(DesBackend(TINY, cpu_slots=2).execute(step(0, *ops)))
    assert plain["a"] == (0.0, 1.0)
