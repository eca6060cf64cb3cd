"""EMULATION of the subset of XRT's Python bindings (pyxrt) that inf2hw.csd.smartssd uses.

This is not XRT and talks to no FPGA. `inf2hw.csd.smartssd.SmartSsdCsd(..., pyxrt_module=pyxrt_emu)`
and tests/test_smartssd.py use it so the SmartSSD backend's own code (xclbin loading, buffer
objects, O_DIRECT pread into a P2P mapping, kernel launch, read-back) runs end to end on a host
without XRT. The "kernel" executes the g++ build of the real HLS source (hls/build/libinf2attn.so,
through inf2hw.csd.hls_kernel), so results are real numbers, computed on the host CPU.

Emulated, following pyxrt's pybind11 source (XRT src/python/pybind11/src/pyxrt.cpp):
  device(bdf | index)        .load_xclbin(xclbin | path) -> uuid, .register_xclbin(xclbin) -> uuid
  xclbin(path)               .get_uuid(); ANY existing file is accepted and NO bitstream is loaded:
                             the emulated xclbin always holds one kernel, `inf2_attention`, and one
                             memory bank (group 0) standing in for the SmartSSD's 4 GB DDR4
  hw_context(device, uuid)   needs the uuid registered or loaded on that device
  kernel(ctx, name) | kernel(device, uuid, name)   .group_id(arg) -> 0 for the pointer arguments
  kernel(*args) -> run       like pyxrt: each argument is tried as a bo, then as an int; anything
                             else (a Python float, None, a bo given for a scalar) is DROPPED SILENTLY
                             and the kernel sees 0 there. Float scalars must be bit-cast to int32.
  run                        .wait() / .wait(timeout_ms) -> ert_cmd_state, .state()
  bo(device, nbytes, flags, group)   flags bo.normal or bo.p2p (others raise); .map() -> writable
                             memoryview (page aligned, numpy-readable), .sync(dir[, size, offset]),
                             .write(buffer, seek), .read(size, skip) -> int8 ndarray, .size(), .address()
  xclBOSyncDirection, ert_cmd_state enums; XCL_BO_FLAGS_NONE.

Memory model, kept faithful so host-code mistakes show up: a normal bo has a host copy (what map(),
write() and read() touch) and a device copy (what the kernel touches); only sync() moves bytes
between them. A p2p bo is one buffer, the device memory itself, mapped into the host (as the
SmartSSD's PCIe BAR is), so an O_DIRECT pread into map() lands where the kernel reads and sync() is
a no-op. Stricter than hardware: a run whose arguments break the kernel ABI (inf2_attention.h) or
whose buffers are too small ends in ERT_CMD_STATE_ERROR (reason in `run.error`) instead of reading
out of bounds. Sizes in bytes.
"""
from __future__ import annotations

import ctypes
import enum
import hashlib
import mmap
import os
import re
import threading
from typing import List, Optional

import numpy as np

EMULATION = True
XCL_BO_FLAGS_NONE = 0
DEVICE_DRAM_BYTES = 4 << 30  # one SmartSSD's FPGA DDR4 (REFERENCE.md)
_BDF = re.compile(r"^([0-9a-fA-F]{4}:)?[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$")
_PTR, _INT = "ptr", "int"
# The emulated xclbin's only kernel: inf2_attention(q, k, v, tail_k, tail_v, tail_scores, scratch,
# out, lse, n_rows, ctx_len, row_stride_tokens, n_tail, group, head_dim, tail_mode).
KERNEL_ARGS = {"inf2_attention": [_PTR] * 9 + [_INT] * 7}


class xclBOSyncDirection(enum.Enum):
    XCL_BO_SYNC_BO_TO_DEVICE = 0
    XCL_BO_SYNC_BO_FROM_DEVICE = 1
    XCL_BO_SYNC_BO_GMIO_TO_AIE = 2
    XCL_BO_SYNC_BO_AIE_TO_GMIO = 3


class ert_cmd_state(enum.Enum):
    ERT_CMD_STATE_NEW = 1
    ERT_CMD_STATE_QUEUED = 2
    ERT_CMD_STATE_COMPLETED = 4
    ERT_CMD_STATE_ERROR = 5
    ERT_CMD_STATE_ABORT = 6
    ERT_CMD_STATE_SUBMITTED = 7
    ERT_CMD_STATE_TIMEOUT = 8
    ERT_CMD_STATE_NORESPONSE = 9


class uuid:
    def __init__(self, hex32: str):
        self._hex = hex32

    def to_string(self) -> str:
        h = self._hex
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"

    def __eq__(self, other) -> bool:
        return isinstance(other, uuid) and other._hex == self._hex

    def __hash__(self) -> int:
        return hash(self._hex)


class xclbin:
    """Any existing file; its uuid is a hash of its bytes. No bitstream is parsed or loaded."""

    def __init__(self, path: str):
        if not os.path.isfile(path):
            raise RuntimeError(f"pyxrt_emu: xclbin file not found: {path}")
        with open(path, "rb") as f:
            self._uuid = uuid(hashlib.sha1(f.read()).hexdigest()[:32])
        self.path = path

    def get_uuid(self) -> uuid:
        return self._uuid


class device:
    def __init__(self, bdf="0"):
        if isinstance(bdf, str) and not bdf.isdigit() and not _BDF.match(bdf):
            raise RuntimeError(f"pyxrt_emu: no device with BDF {bdf!r} (expected e.g. 0000:3b:00.1)")
        self.bdf = str(bdf)
        self._uuids: List[uuid] = []
        self._loaded: Optional[uuid] = None
        self._next_address = 0x40000000  # emulated device-physical addresses, for bo.address()
        self._used_bytes = 0

    def _as_xclbin(self, xb) -> xclbin:
        return xb if isinstance(xb, xclbin) else xclbin(str(xb))

    def register_xclbin(self, xb) -> uuid:
        u = self._as_xclbin(xb).get_uuid()
        if u not in self._uuids:
            self._uuids.append(u)
        return u

    def load_xclbin(self, xb) -> uuid:
        u = self.register_xclbin(xb)
        self._loaded = u
        return u

    def get_xclbin_uuid(self) -> Optional[uuid]:
        return self._loaded

    def _alloc(self, nbytes: int) -> int:
        if self._used_bytes + nbytes > DEVICE_DRAM_BYTES:
            raise RuntimeError(f"pyxrt_emu: device {self.bdf}: out of device memory allocating {nbytes} bytes "
                               f"({self._used_bytes} of {DEVICE_DRAM_BYTES} in use)")
        addr = self._next_address
        self._used_bytes += nbytes
        self._next_address += (nbytes + 4095) // 4096 * 4096
        return addr


class hw_context:
    def __init__(self, dev: device, u: uuid):
        if u not in dev._uuids:
            raise RuntimeError(f"pyxrt_emu: xclbin {u.to_string()} is not registered on device {dev.bdf}")
        self.device, self.uuid = dev, u


class _Buffer:
    """Page-aligned anonymous memory with a numpy view and its address (for ctypes)."""

    def __init__(self, nbytes: int):
        self.mm = mmap.mmap(-1, max(nbytes, 1))
        self.np = np.frombuffer(self.mm, dtype=np.uint8)[:nbytes]
        self.addr = self.np.ctypes.data


class bo:
    class flags(enum.Enum):
        normal = 0
        cacheable = 1 << 24
        device_only = 1 << 28
        host_only = 1 << 29
        p2p = 1 << 30
        svm = 1 << 27

    def __init__(self, dev: device, nbytes: int, flags: "bo.flags", group: int):
        if flags not in (bo.flags.normal, bo.flags.p2p):
            raise ValueError(f"pyxrt_emu: bo flags {flags} are not emulated (normal and p2p are)")
        if int(group) != 0:
            raise RuntimeError(f"pyxrt_emu: memory group {group} does not exist (the emulated xclbin has bank 0)")
        if nbytes <= 0:
            raise RuntimeError("pyxrt_emu: a buffer object needs a positive size")
        self._size, self._flags = int(nbytes), flags
        self._addr = dev._alloc(self._size)
        self._device = _Buffer(self._size)
        self._host = self._device if flags == bo.flags.p2p else _Buffer(self._size)

    def size(self) -> int:
        return self._size

    def address(self) -> int:
        return self._addr

    def map(self) -> memoryview:
        return memoryview(self._host.mm)[: self._size]

    def write(self, buffer, seek: int) -> None:
        data = np.frombuffer(memoryview(buffer).cast("B"), dtype=np.uint8)
        self._check(seek, data.size)
        self._host.np[seek: seek + data.size] = data

    def read(self, size: int, skip: int) -> np.ndarray:
        self._check(skip, size)
        return self._host.np[skip: skip + size].view(np.int8).copy()

    def sync(self, direction: xclBOSyncDirection, size: Optional[int] = None, offset: int = 0) -> None:
        size = self._size - offset if size is None else size
        self._check(offset, size)
        if self._host is self._device:
            return  # p2p: the host mapping is the device memory
        if direction == xclBOSyncDirection.XCL_BO_SYNC_BO_TO_DEVICE:
            self._device.np[offset: offset + size] = self._host.np[offset: offset + size]
        elif direction == xclBOSyncDirection.XCL_BO_SYNC_BO_FROM_DEVICE:
            self._host.np[offset: offset + size] = self._device.np[offset: offset + size]
        else:
            raise RuntimeError(f"pyxrt_emu: sync direction {direction} is not emulated")

    def _check(self, offset: int, size: int) -> None:
        if offset < 0 or size < 0 or offset + size > self._size:
            raise RuntimeError(f"pyxrt_emu: range [{offset}, {offset + size}) outside a {self._size}-byte bo")


for _f in bo.flags:  # pybind11's export_values(): bo.normal, bo.p2p, ...
    setattr(bo, _f.name, _f)


class kernel:
    def __init__(self, *args):
        if len(args) == 2 and isinstance(args[0], hw_context):
            ctx, name = args
            self._device = ctx.device
        elif len(args) in (3, 4) and isinstance(args[0], device):
            dev, u, name = args[:3]
            if dev._loaded != u:
                raise RuntimeError(f"pyxrt_emu: xclbin {u.to_string()} is not loaded on device {dev.bdf}")
            self._device = dev
        else:
            raise TypeError("pyxrt_emu: kernel(hw_context, name) or kernel(device, uuid, name)")
        if name not in KERNEL_ARGS:
            raise RuntimeError(f"pyxrt_emu: no compute unit matching {name!r} (the emulated xclbin has "
                               f"{sorted(KERNEL_ARGS)})")
        self.name = name
        self._kinds = KERNEL_ARGS[name]

    def group_id(self, arg: int) -> int:
        if not 0 <= arg < len(self._kinds) or self._kinds[arg] != _PTR:
            raise RuntimeError(f"pyxrt_emu: argument {arg} of {self.name} is not a global memory argument")
        return 0

    def __call__(self, *args) -> "run":
        values: list = [None if k == _PTR else 0 for k in self._kinds]
        dropped = []
        for i, a in enumerate(args):
            kind = self._kinds[i] if i < len(self._kinds) else None
            if kind == _PTR and isinstance(a, bo):
                values[i] = a
            elif kind == _INT and not isinstance(a, bo) and hasattr(a, "__index__"):
                values[i] = ctypes.c_int32(a.__index__() & 0xFFFFFFFF).value  # set_arg<int>: 4 bytes
            else:
                dropped.append(i)  # pyxrt swallows the failed casts: the argument is never set
        return run(self.name, values, dropped)


class run:
    """One execution, started at construction on a thread (kernel(...) starts it, as pyxrt does)."""

    def __init__(self, name: str, values: list, dropped: List[int]):
        self.args, self.dropped, self.error = values, dropped, None
        self._state = ert_cmd_state.ERT_CMD_STATE_SUBMITTED
        self._thread = threading.Thread(target=self._execute, name=f"pyxrt_emu-{name}", daemon=True)
        self._thread.start()

    def _execute(self) -> None:
        try:
            _run_inf2_attention(self.args)
            self._state = ert_cmd_state.ERT_CMD_STATE_COMPLETED
        except Exception as exc:  # reported through the run state, as a device error would be
            self.error = str(exc)
            self._state = ert_cmd_state.ERT_CMD_STATE_ERROR

    def wait(self, timeout_ms: int = 0) -> ert_cmd_state:
        self._thread.join(None if not timeout_ms else timeout_ms / 1000.0)
        return self._state if not self._thread.is_alive() else ert_cmd_state.ERT_CMD_STATE_TIMEOUT

    def state(self) -> ert_cmd_state:
        return self._state


def _run_inf2_attention(values: list) -> None:
    """Check the arguments against the ABI of inf2_attention.h, then call the g++-built kernel."""
    from inf2hw.csd import hls_kernel

    lib = hls_kernel.load_library()
    cfg = hls_kernel.kernel_config()
    ptrs, (n_rows, ctx, stride, n_tail, group, d, mode) = values[:9], values[9:]
    if not (1 <= d <= cfg["max_head_dim"] and 1 <= group <= cfg["max_group"] and 0 <= n_tail <= cfg["max_tail"]
            and 0 <= ctx <= stride and mode in (0, 1, 2) and n_rows >= 0):
        raise RuntimeError(f"kernel arguments break the ABI: n_rows={n_rows} ctx_len={ctx} row_stride_tokens={stride} "
                           f"n_tail={n_tail} group={group} head_dim={d} tail_mode={mode}")
    tail = mode != 0 and n_tail > 0
    need = {0: n_rows * group * d * 2, 1: n_rows * stride * d * 2, 2: n_rows * stride * d * 2,
            3: n_rows * n_tail * d * 2 if mode == 1 else 0, 4: n_rows * n_tail * d * 2 if mode else 0,
            5: n_rows * group * n_tail * 4 if mode == 2 else 0,
            6: 4 * lib.inf2_attention_scratch_floats(ctx, n_tail, group, mode) if n_rows else 0,
            7: n_rows * group * d * 4, 8: n_rows * group * 4}
    names = ("q", "k", "v", "tail_k", "tail_v", "tail_scores", "scratch", "out", "lse")
    for i, nbytes in need.items():
        if nbytes and (ptrs[i] is None or ptrs[i].size() < nbytes):
            have = "no buffer" if ptrs[i] is None else f"{ptrs[i].size()} bytes"
            raise RuntimeError(f"kernel argument {names[i]} needs {nbytes} bytes, got {have}")
    if n_rows == 0:
        return
    addr = [None if p is None else ctypes.c_void_p(p._device.addr) for p in ptrs]
    if not tail:
        addr[3] = addr[4] = addr[5] = None
    lib.inf2_attention(*addr, n_rows, ctx, stride, n_tail, group, d, mode)
