"""The simpy engine: fluid flows on the PCIe tree, compute-device queues, and the
`DesBackend` that times plans on them (see inf2sim/des/backend.py)."""
from .backend import DesBackend
from .devices import ComputeDevice, CpuDevice, Device, FpgaDevice, GpuDevice, make_device
from .flows import Deferred, Flow, FlowNetwork
from .kernel import Kernel

__all__ = [
    "DesBackend",
    "Device",
    "ComputeDevice",
    "GpuDevice",
    "CpuDevice",
    "FpgaDevice",
    "make_device",
    "FlowNetwork",
    "Flow",
    "Deferred",
    "Kernel",
]
