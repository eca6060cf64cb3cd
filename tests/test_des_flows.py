"""FlowNetwork: exact simulated times in tiny hand-computable topologies.

Link figures are GB/s (1e9 B/s); sizes are chosen so every answer is a round
number of seconds that can be checked by hand.
"""
import pytest
import simpy

from inf2sim.des.flows import FlowNetwork
from inf2sim.des.kernel import Kernel
from inf2sim.topology import Link, Topology

GB = 1e9


def link(name, up=0.0, down=0.0, latency_us=0.0):
    return Link(name, up, down, latency_us)


def run(topo, flows, env=None):
    """flows: name -> (start_s, src, dst, nbytes, req_bytes). Returns name -> finish_s."""
    env = simpy.Environment() if env is None else env
    net = FlowNetwork(env, topo)
    done = {}

    def launch(name, src, dst, nbytes, req):
        ev = net.start(src, dst, nbytes, req)
        ev.callbacks.append(lambda _e: done.__setitem__(name, env.now))

    for name, (t0, src, dst, nbytes, req) in flows.items():
        if t0 == 0:
            launch(name, src, dst, nbytes, req)
        else:
            env.timeout(t0).callbacks.append(lambda _e, a=(name, src, dst, nbytes, req): launch(*a))
    env.run()
    assert net.active == 0
    return done, net


def approx(x):
    return pytest.approx(x, rel=1e-12, abs=1e-15)


def one_link():
    t = Topology()
    t.add("rc", None)
    t.add("a", "rc", link("a", up=1.0, down=2.0, latency_us=10.0))
    return t


def test_one_flow_takes_bytes_over_bandwidth_plus_latency():
    done, net = run(one_link(), {"f": (0, "a", "rc", 3 * GB, 0), "g": (0, "rc", "a", 3 * GB, 0)})
    assert done["f"] == approx(3.0 + 10e-6)  # up: 1 GB/s
    assert done["g"] == approx(1.5 + 10e-6)  # down: 2 GB/s, a separate direction
    assert net.bytes_by_link == {"a": 6 * GB}
    assert net.bytes_by_dir == {("a", "up"): 3 * GB, ("a", "down"): 3 * GB}
    assert net.busy_s()["a"] == approx(3.0)  # busy while any direction carries a flow


def test_same_node_and_empty_flows_take_no_time():
    done, _ = run(one_link(), {"same": (0, "a", "a", GB, 0), "empty": (0, "a", "rc", 0, 0)})
    assert done == {"same": 0.0, "empty": 0.0}


def test_two_flows_share_a_link_then_the_survivor_speeds_up():
    t = Topology()
    t.add("rc", None)
    t.add("a", "rc", link("a", up=1.0))
    # f alone for 1 s (1 GB sent, 2 GB left); then 0.5 GB/s each: g's 1 GB ends at t=3,
    # f has 1 GB left and finishes alone at 1 GB/s: t=4.
    done, net = run(t, {"f": (0, "a", "rc", 3 * GB, 0), "g": (1, "a", "rc", 1 * GB, 0)})
    assert done["g"] == approx(3.0)
    assert done["f"] == approx(4.0)
    assert net.busy_s()["a"] == approx(4.0)


def test_three_bottlenecks_get_max_min_fair_rates():
    # sw (10 GB/s up) is shared by flows from a (4), b (100), d (1).
    # Max-min: f4 is held to 1 by d; f1, f2 split a's 4 -> 2 each; f3 gets the
    # rest of sw: 10 - 1 - 2 - 2 = 5. Sizes make all four finish at t=1 exactly.
    t = Topology()
    t.add("rc", None)
    t.add("sw", "rc", link("sw", up=10.0))
    t.add("a", "sw", link("a", up=4.0))
    t.add("b", "sw", link("b", up=100.0))
    t.add("d", "sw", link("d", up=1.0))
    flows = {
        "f1": (0, "a", "rc", 2 * GB, 0),
        "f2": (0, "a", "rc", 2 * GB, 0),
        "f3": (0, "b", "rc", 10 * GB, 0),
        "f4": (0, "d", "rc", 1 * GB, 0),
    }
    done, net = run(t, flows)
    assert done["f1"] == approx(1.0) and done["f2"] == approx(1.0) and done["f4"] == approx(1.0)
    # f3 sent 5 GB by t=1, then has sw to itself (10 GB/s): 5 GB more in 0.5 s.
    assert done["f3"] == approx(1.5)
    assert net.bytes_by_link["sw"] == 15 * GB


def raid0(n_ssds):
    t = Topology()
    t.add("rc", None)
    t.add("dram", "rc", link("dram", up=400.0, down=400.0))
    t.add("ssd_sw", "rc", link("ssd_sw", up=25.0, down=25.0))
    for i in range(n_ssds):
        t.add(f"ssd{i}", "ssd_sw", link(f"ssd{i}", up=7.0, down=7.0))
        t.add(f"ssd{i}.nand", f"ssd{i}", Link(f"ssd{i}.nand", 6.9, 4.1, 0.0, (4096.0, 1 << 30), (6.9, 6.9), (4.1, 4.1)))
    return t


def test_raid0_scales_linearly_then_saturates_at_the_uplink():
    stripe = 6.9 * GB  # one second of one drive
    throughput = []
    for n in range(1, 9):
        flows = {f"r{i}": (0, f"ssd{i}.nand", "dram", stripe, 1 << 20) for i in range(n)}
        done, _ = run(raid0(n), flows)
        end = max(done.values())
        throughput.append(n * stripe / end / GB)
    for n, gbps in enumerate(throughput, start=1):
        assert gbps == pytest.approx(min(6.9 * n, 25.0), rel=1e-9)
    assert throughput[:3] == pytest.approx([6.9, 13.8, 20.7])
    assert throughput[3:] == pytest.approx([25.0] * 5)


def media():
    t = Topology()
    t.add("rc", None)
    t.add("x", "rc", link("x", up=100.0, down=100.0))
    # read 1 GB/s at 4 KiB, 3 GB/s at 1 MiB; interpolated in log(request size).
    t.add("x.nand", "x", Link("x.nand", 3.0, 3.0, 0.0, (4096.0, 1048576.0), (1.0, 3.0), (1.0, 3.0)))
    return t


def test_media_link_rate_follows_the_request_size_curve():
    done, _ = run(media(), {"small": (0, "x.nand", "rc", GB, 4096)})
    assert done["small"] == approx(1.0)
    done, _ = run(media(), {"big": (0, "x.nand", "rc", 3 * GB, 1 << 20)})
    assert done["big"] == approx(1.0)
    done, _ = run(media(), {"mid": (0, "x.nand", "rc", 2 * GB, 64 * 1024)})  # log-midpoint: 2 GB/s
    assert done["mid"] == approx(1.0)


def test_media_link_shares_the_curve_at_the_largest_request():
    # Capacity is the 1 MiB point (3 GB/s); the 4 KiB flow is capped at its own
    # point (1 GB/s) and the 1 MiB flow takes the other 2. After `small` ends at
    # t=1, `big` has 2 GB left at 3 GB/s.
    done, _ = run(media(), {"big": (0, "x.nand", "rc", 4 * GB, 1 << 20), "small": (0, "x.nand", "rc", GB, 4096)})
    assert done["small"] == approx(1.0)
    assert done["big"] == approx(1.0 + 2.0 / 3.0)
    # Two small-request flows share the 4 KiB point.
    done, _ = run(media(), {"a": (0, "x.nand", "rc", GB, 4096), "b": (0, "x.nand", "rc", GB, 4096)})
    assert done == {"a": approx(2.0), "b": approx(2.0)}


def test_large_request_joining_speeds_up_a_small_request_stream():
    # Two 4 KiB flows share 1 GB/s (0.5 each) until t=1; a 1 MiB flow joins and
    # raises the drive's capacity to 3 GB/s: the small ones get their cap (1 each),
    # the big one the remaining 1. Small: 0.5 GB left at 1 GB/s -> t=1.5.
    flows = {
        "a": (0, "x.nand", "rc", GB, 4096),
        "b": (0, "x.nand", "rc", GB, 4096),
        "big": (1, "x.nand", "rc", 2 * GB, 1 << 20),
    }
    done, _ = run(media(), flows)
    assert done["a"] == approx(1.5) and done["b"] == approx(1.5)
    # big: 0.5 GB by t=1.5, then alone at 3 GB/s: 1.5 GB in 0.5 s.
    assert done["big"] == approx(2.0)


def test_many_flows_at_one_instant_are_batched_and_exact():
    t = Topology()
    t.add("rc", None)
    t.add("a", "rc", link("a", up=1.0))
    flows = {f"f{i}": (0, "a", "rc", (i + 1) * 0.1 * GB, 0) for i in range(10)}
    done, _ = run(t, flows)
    # Equal shares; each ending hands its share to the rest: flow i ends when
    # sum_{j<=i} size_j + (9 - i) * size_i bytes have crossed at 1 GB/s.
    for i in range(10):
        size_i = (i + 1) * 0.1
        sent = sum((j + 1) * 0.1 for j in range(i + 1)) + (9 - i) * size_i
        assert done[f"f{i}"] == pytest.approx(sent, rel=1e-9)


def test_large_request_that_leaves_the_drive_slack_frees_the_small_streams():
    # As above, but the big flow is held to 0.5 GB/s by its destination link: the
    # drive (3 GB/s now) no longer limits anyone, so both small flows run at their
    # own 1 GB/s cap from t=1: 0.5 GB left -> t=1.5.
    t = media()
    t.add("y", "rc", link("y", down=0.5))
    flows = {
        "a": (0, "x.nand", "rc", GB, 4096),
        "b": (0, "x.nand", "rc", GB, 4096),
        "big": (1, "x.nand", "y", GB, 1 << 20),
    }
    done, _ = run(t, flows)
    assert done["a"] == approx(1.5) and done["b"] == approx(1.5)
    assert done["big"] == approx(3.0)


# ----------------------------------------------- against a from-scratch reference
def reference_finish_times(topo, flows):
    """Brute force: after every start or finish, refill the rates of *all* active
    flows over *all* their links (no incremental state, no slack pruning)."""
    path = {n: topo.path(f[1], f[2]) for n, f in flows.items()}

    def solo(n):
        return min(topo.links[l].gbps(d, flows[n][4]) for l, d in path[n])

    def maxmin(active):
        caps = {}
        for n in active:
            for key in path[n]:
                lk = topo.links[key[0]]
                reqs = [flows[m][4] for m in active if key in path[m]]
                caps[key] = lk.gbps(key[1], max(reqs)) if lk.is_media else lk.gbps(key[1])
        rate, frozen_sum = {}, dict.fromkeys(caps, 0.0)
        while len(rate) < len(active):
            free = [n for n in active if n not in rate]
            level = min(solo(n) for n in free)
            for key, cap in caps.items():
                k = sum(1 for n in free if key in path[n])
                if k:
                    level = min(level, (cap - frozen_sum[key]) / k)
            for n in free:
                full = any((caps[k] - frozen_sum[k]) / sum(1 for m in free if k in path[m]) <= level * (1 + 1e-12)
                           for k in path[n])
                if solo(n) <= level * (1 + 1e-12) or full:
                    rate[n] = min(level, solo(n))
            for n in rate:
                if n in free:
                    for k in path[n]:
                        frozen_sum[k] += rate[n]
        return rate

    t, left, out = 0.0, {}, {}
    todo = sorted(flows, key=lambda n: flows[n][0])
    while todo or left:
        while todo and flows[todo[0]][0] <= t:
            n = todo.pop(0)
            left[n] = flows[n][3] / GB
        if not left:
            t = flows[todo[0]][0]
            continue
        rate = maxmin(list(left))
        t_next = min(t + left[n] / rate[n] for n in left)
        if todo:
            t_next = min(t_next, flows[todo[0]][0])
        for n in list(left):
            left[n] -= rate[n] * (t_next - t)
            if left[n] <= 1e-12 * flows[n][3] / GB:
                del left[n]
                out[n] = t_next + topo.latency_s(flows[n][1], flows[n][2])
        t = t_next
    return out


def random_tree(rng, n_nodes):
    t = Topology()
    t.add("rc", None)
    nodes = ["rc"]
    for i in range(n_nodes):
        name = f"n{i}"
        t.add(name, rng.choice(nodes), link(name, rng.choice([1, 2, 3, 5, 8]), rng.choice([1, 2, 4, 6]), rng.choice([0, 1, 2])))
        nodes.append(name)
    for i in range(3):  # drives with a request-size curve under random nodes
        name = f"n{rng.randrange(n_nodes)}.nand"
        if name not in t.parent:
            t.add(name, name[:-5], Link(name, 4, 2, 0.0, (4096.0, 1 << 20), (1.0, 4.0), (0.5, 2.0)))
            nodes.append(name)
    return t, nodes


@pytest.mark.parametrize("seed", range(12))
def test_random_scenarios_match_a_brute_force_reference(seed):
    import random

    rng = random.Random(seed)
    topo, nodes = random_tree(rng, 7)
    flows = {}
    for i in range(14):
        src, dst = rng.sample(nodes, 2)
        t0 = rng.choice([0, 0, 0.5, 1.0, 1.25, 2.0])  # repeats exercise same-instant batching
        flows[f"f{i}"] = (t0, src, dst, rng.choice([1, 2, 3, 5]) * GB // 2, rng.choice([4096, 65536, 1 << 20]))
    done, _ = run(topo, flows)
    ref = reference_finish_times(topo, flows)
    assert done.keys() == ref.keys()
    for n in flows:
        assert done[n] == pytest.approx(ref[n], rel=1e-9), n


@pytest.mark.parametrize("seed", range(4))
def test_kernel_and_plain_simpy_give_the_same_times(seed):
    """The DES runs FlowNetwork on a Kernel (plain queue entries); on a plain simpy
    Environment it schedules Events instead: same order, so identical times."""
    import random

    rng = random.Random(100 + seed)
    topo, nodes = random_tree(rng, 6)
    flows = {}
    for i in range(16):
        src, dst = rng.sample(nodes, 2)
        flows[f"f{i}"] = (rng.choice([0, 0, 0.5, 1.0]), src, dst, rng.choice([1, 2, 4]) * GB // 2,
                          rng.choice([4096, 1 << 20]))
    plain, _ = run(topo, flows)
    fast, _ = run(topo, flows, Kernel())
    assert plain == fast


def test_kernel_entries_interleave_with_events_in_scheduling_order():
    from inf2sim.des.flows import LATE

    env, log = Kernel(), []
    env.timeout(1.0).callbacks.append(lambda _e: log.append("event1"))
    env.call_in(1.0, log.append, "late", LATE)  # after every ordinary entry of its instant
    env.call_in(1.0, log.append, "entry1")
    env.timeout(1.0).callbacks.append(lambda _e: log.append("event2"))
    env.call_in(0.5, log.append, "entry0")
    env.run()
    assert log == ["entry0", "event1", "entry1", "event2", "late"]
    assert env.now == 1.0
    env.call_in(1.0, env.stop)
    env.call_in(2.0, log.append, "after the stop")
    assert env.run_until_stopped() is True and env.now == 2.0 and log[-1] == "late"
    assert env.run_until_stopped() is False and log[-1] == "after the stop"  # ran dry


def test_a_duplex_cap_is_shared_by_both_directions_only_when_both_run():
    """gpu link 4 GB/s each way, 6 GB/s both ways at once (LinkSpec.duplex_gbps): alone a copy
    runs at 4; an upload and a download together get 3 each; the survivor then speeds up."""
    from inf2sim.specs import LinkSpec
    from inf2sim.topology import _duplex

    t = Topology()
    t.add("rc", None)
    t.add("dram", "rc", link("dram", up=100.0, down=100.0))
    t.add("gpu", "rc", link("gpu", up=4.0, down=4.0))
    _duplex(t, "gpu", LinkSpec(4.0, 4.0, 0.0, duplex_gbps=6.0))
    assert ("gpu_duplex", "up") in t.path("dram", "gpu") and ("gpu_duplex", "up") in t.path("gpu", "dram")
    done, _ = run(t, {"alone": (0, "dram", "gpu", 8 * GB, 0)})
    assert done["alone"] == approx(2.0)
    done, _ = run(t, {"h2d": (0, "dram", "gpu", 6 * GB, 0), "d2h": (0, "gpu", "dram", 12 * GB, 0)})
    assert done["h2d"] == approx(2.0)  # 3 GB/s while both run
    assert done["d2h"] == approx(2.0 + 6.0 / 4.0)  # 6 GB left at 4 GB/s once alone
    t2 = Topology()
    t2.add("rc", None)
    t2.add("dram", "rc", link("dram", up=100.0, down=100.0))
    t2.add("gpu", "rc", link("gpu", up=4.0, down=4.0))
    _duplex(t2, "gpu", LinkSpec(4.0, 4.0, 0.0))  # 0: independent directions
    done, _ = run(t2, {"h2d": (0, "dram", "gpu", 6 * GB, 0), "d2h": (0, "gpu", "dram", 12 * GB, 0)})
    assert done["h2d"] == approx(1.5) and done["d2h"] == approx(3.0)



def shared_disk(by_requests=True, solo_gbps=(8.0, 8.0)):
    """Two drives (files) on one disk, each alone reading / writing at solo_gbps[i]; the disk
    serves 4 GB/s of 1 MiB requests and 0.5 GB/s of 4 KiB ones, reads and writes alike."""
    t = Topology()
    t.add("rc", None)
    for d, solo in zip(("d0", "d1"), solo_gbps):
        t.add(d, "rc", link(d, up=100.0, down=100.0))
        t.add(f"{d}.nand", d, Link(f"{d}.nand", solo, solo, 0.0, (4096.0, 1048576.0), (solo, solo), (solo, solo)))
    t.add("disk", "rc", Link("disk", 4.0, 4.0, 0.0, (4096.0, 1048576.0), (0.5, 4.0), (0.5, 4.0), by_requests))
    t.shared.update({"d0.nand": "disk", "d1.nand": "disk"})
    return t


def test_disk_by_requests_gives_each_stream_one_request_per_round():
    """A 4 KiB write stream beside a 1 MiB read stream: a round is one 1 MiB request (262 us
    at 4 GB/s) and one 4 KiB request (8.2 us at 0.5 GB/s), so each stream moves one request
    per round. Max-min by bytes, reads and writes apart, would run each at its own curve."""
    big, small = 1 << 20, 4096
    round_s = big / 4e9 + small / 0.5e9
    flows = {"load": (0, "d0.nand", "rc", 10 * big, big), "spill": (0, "rc", "d1.nand", 10 * small, small)}
    done, _ = run(shared_disk(), flows)
    assert done["spill"] == pytest.approx(10 * round_s, rel=1e-9)  # both: 10 rounds
    assert done["load"] == pytest.approx(10 * round_s, rel=1e-9)
    done, _ = run(shared_disk(by_requests=False), flows)
    assert done == {"spill": approx(10 * small / 0.5e9), "load": approx(10 * big / 4e9)}
    # streams of one size split the curve evenly, as max-min sharing does
    two = {"a": (0, "d0.nand", "rc", 4 * GB, big), "b": (0, "d1.nand", "rc", 4 * GB, big)}
    assert run(shared_disk(), two)[0] == {"a": approx(2.0), "b": approx(2.0)}
    assert run(shared_disk(by_requests=False), two)[0] == {"a": approx(2.0), "b": approx(2.0)}


def test_disk_by_requests_gives_what_a_capped_stream_leaves_to_the_others():
    """A 1 MiB stream whose drive caps it at 2 GB/s (below its round share, ~3.9 GB/s) uses
    half of the disk's time (2 of 4 GB/s); the 4 KiB stream beside it gets the other half
    of its 0.5 GB/s: 0.25 GB/s. Alone, the small stream has the whole disk."""
    big, small = 1 << 20, 4096
    done, _ = run(shared_disk(solo_gbps=(2.0, 8.0)), {"small": (0, "d1.nand", "rc", GB // 2, small)})
    assert done["small"] == pytest.approx(1.0, rel=1e-9)
    done, _ = run(shared_disk(solo_gbps=(2.0, 8.0)), {"load": (0, "d0.nand", "rc", 4 * GB, big),
                                                       "small": (0, "d1.nand", "rc", GB // 4, small)})
    assert done["small"] == pytest.approx(1.0, rel=1e-9)
    assert done["load"] == pytest.approx(2.0, rel=1e-9)
