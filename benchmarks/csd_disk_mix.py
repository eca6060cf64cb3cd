"""The emulated CSDs' flash I/O as the engine mixes it, against the calibration's curves.

    python benchmarks/csd_disk_mix.py --dir /tmp/inf2-mix --csds 4 --rows 320 --prompts 512,1536

`ans` decode on emulated CSDs (`inf2hw.csd.worker`): every CSD process loads its rows' K,V
history (`KvFiles.read_rows`: one O_DIRECT pread per row for K and one for V, of
stored tokens x head_dim x 2 bytes) and then spills the step's new token
(`KvFiles.write_rows` of one token: a read-modify-write of a 4 KiB block per row, per K and
V). The calibration (`inf2hw.calibrate_io`) times reads with N processes at once and
writes with N processes at once, never the two mixed. Here, with `--csds` processes on
one disk, each owning one KV file in the engine's layout (written first as the prompt's
store), medians over `--steps`:

- `reads`: every process loads at once (the calibration's shared-read case, at the
  engine's request size and file layout);
- `spills`: every process spills at once (the calibration's shared-RMW case);
- `spill_beside_reads`: process 0 spills while the others load (what a CSD that finished
  its load first meets);
- `calibration`: the calibration's own shared-read and shared-write benchmark
  (`calibrate_io._streams`, quick budget) at the same request sizes, in the same call.

Prints one JSON object: per prompt length, ms per load / spill and GB/s (1e9 B/s).

    python benchmarks/csd_disk_mix.py --model benchmarks/results/h100_s8/csd_disk_mix.json

reads such a result and prints what the DES's shared-disk model (`inf2sim/des/disks.py`,
one request of each stream per round) predicts for a spill beside the other CSDs' loads
and for those loads, from the calibration's two aggregate rates measured in the same
call, and from the 4-loads-at-once rate measured there instead of the calibration's.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time

import numpy as np

from inf2hw import calibrate_io
from inf2hw.csd.kvfile import KvFiles, KvGeometry, aligned_buffer

HEAD_DIM, ITEM = 128, 2  # fp16, OPT-13B's head_dim


def _worker(idx, directory, rows, prompt, steps, role, barrier):
    """One CSD's process: store the prompt, then per step load and/or spill as `role` says
    (load | spill | both), in lock step with the others on `barrier`. Returns (load s, spill s)."""
    geom = KvGeometry(rows, 1, prompt + steps + 1, HEAD_DIM, ITEM)
    kv = KvFiles(directory, idx, 1, geom, direct=True)
    k = np.random.default_rng(idx).integers(0, 255, (rows, prompt * geom.token_bytes), dtype=np.uint8)
    kv.write_rows(0, 0, 0, 0, k, k)
    os.fsync(kv.fds[0])
    kd, vd = aligned_buffer(rows * geom.region_bytes), aligned_buffer(rows * geom.region_bytes)
    one = np.random.default_rng(idx).integers(0, 255, (rows, geom.token_bytes), dtype=np.uint8)
    loads, spills = [], []
    n = prompt
    for _ in range(steps):
        barrier.wait(60)
        if role in ("load", "both"):
            t0 = time.perf_counter()
            kv.read_rows(0, 0, 0, rows, n, memoryview(kd), memoryview(vd))
            loads.append(time.perf_counter() - t0)
        if role in ("spill", "both"):
            t0 = time.perf_counter()
            kv.write_rows(0, 0, 0, n, one, one)
            spills.append(time.perf_counter() - t0)
            n += 1
    kv.close()
    return loads, spills


def _run(directory, csds, rows, prompt, steps, roles):
    return calibrate_io.in_processes(_worker, [(i, directory, rows, prompt, steps, roles[i]) for i in range(csds)],
                                     pass_barrier=True)


def _ms(xs):
    return round(statistics.median(xs) * 1e3, 2) if xs else None


def model(path: str) -> dict:
    """The shared-disk model's times (ms) for `spill_beside_reads` from a result of this script."""
    from inf2sim.des.disks import DiskShare
    from inf2sim.topology import Link

    res = json.loads(open(path).read())
    out = {}
    for key, r in res.items():
        if not key.startswith("p"):
            continue
        req, csds, rows = int(r["req_KiB"] * 1024), res["csds"], res["rows"]
        load_b, spill_b = r["load_MB"] * 1e6, 2 * rows * HEAD_DIM * ITEM
        for src, read_gbps in (("calibration", r["calibration_shared_read_gbps"]),
                               ("measured_loads", csds * r["reads_per_csd_gbps"])):
            wr = r["calibration_shared_rmw256_gbps"]
            disk = DiskShare(Link("disk", read_gbps, wr, 0.0, (256.0, float(req)), (read_gbps, read_gbps), (wr, wr), True))
            flows = [type("F", (), {"solo_Bps": float("inf")})() for _ in range(csds)]
            disk.add(flows[0], "down", 256, int(spill_b))  # the spill: 256 B payload per read-modify-write
            for f in flows[1:]:
                disk.add(f, "up", req, int(load_b))
            caps = dict(disk.caps())
            out[f"{key}_{src}"] = {"spill_ms": round(spill_b / caps[flows[0]] * 1e3, 1),
                                   "loads_ms": round(load_b / caps[flows[1]] * 1e3, 1)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="", help="a result of this script: print the shared-disk model's times")
    ap.add_argument("--dir", default="/tmp/inf2-mix")
    ap.add_argument("--csds", type=int, default=4)
    ap.add_argument("--rows", type=int, default=320, help="K,V rows per CSD (OPT-13B, batch 32, 4 CSDs: 320)")
    ap.add_argument("--prompts", default="512,1536")
    ap.add_argument("--steps", type=int, default=6)
    a = ap.parse_args()
    if a.model:
        print(json.dumps(model(a.model)))
        return
    os.makedirs(a.dir, exist_ok=True)
    out = {"csds": a.csds, "rows": a.rows, "head_dim": HEAD_DIM, "dtype": "fp16", "steps": a.steps}
    try:
        for prompt in [int(x) for x in a.prompts.split(",")]:
            load_bytes = 2 * a.rows * prompt * HEAD_DIM * ITEM
            res = {"load_MB": round(load_bytes / 1e6, 1), "req_KiB": prompt * HEAD_DIM * ITEM / 1024}
            got = _run(a.dir, a.csds, a.rows, prompt, a.steps, ["load"] * a.csds)
            ls = [x for g in got for x in g[0]]
            res["reads_ms"] = _ms(ls)
            res["reads_per_csd_gbps"] = round(load_bytes / statistics.median(ls) / 1e9, 3)
            got = _run(a.dir, a.csds, a.rows, prompt, a.steps, ["spill"] * a.csds)
            res["spills_ms"] = _ms([x for g in got for x in g[1]])
            got = _run(a.dir, a.csds, a.rows, prompt, a.steps, ["spill"] + ["load"] * (a.csds - 1))
            res["spill_beside_reads_ms"] = _ms(got[0][1])
            res["reads_beside_spill_ms"] = _ms([x for g in got[1:] for x in g[0]])
            got = _run(a.dir, a.csds, a.rows, prompt, a.steps, ["both"] * a.csds)
            res["lockstep_load_ms"] = _ms([x for g in got for x in g[0]])
            res["lockstep_spill_ms"] = _ms([x for g in got for x in g[1]])
            # the calibration's own benchmark, same request sizes, plain files (quick budget)
            paths = calibrate_io.make_files(os.path.join(a.dir, "cal"), a.csds, 128 << 20)
            try:
                req = prompt * HEAD_DIM * ITEM
                _, rd = calibrate_io._streams(paths, "read", "direct", req, 0.08, 32 << 20)
                _, wr = calibrate_io._streams(paths, "write", "direct", 256, 0.08, 32 << 20)
                res["calibration_shared_read_gbps"] = round(rd, 3)
                res["calibration_shared_rmw256_gbps"] = round(wr, 5)
                res["calibration_reads_ms"] = round(load_bytes / (rd / a.csds) / 1e6, 2)
                res["calibration_spills_ms"] = round(2 * a.rows * 256 / (wr / a.csds) / 1e6, 2)
            finally:
                shutil.rmtree(os.path.join(a.dir, "cal"), ignore_errors=True)
            out[f"p{prompt}"] = res
            print(json.dumps({f"p{prompt}": res}), flush=True)
    finally:
        shutil.rmtree(a.dir, ignore_errors=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
