"""inf2sim: the model of the system — specs, plan IR, scheduler, bounds, tuner, DES.

Top-level modules import only the standard library, numpy/scipy and omegaconf;
`inf2sim.des` adds simpy (tests/test_imports.py enforces it). Entry points:
`simulate(...)` (Python API), `build_plan(...)` (the scheduler), `register_policy`.
"""
from .registry import known_policies, register_policy
from .scheduler import PlanBuilder, build_plan
from .simulate import simulate
from .specs import SpecError

__all__ = ["simulate", "build_plan", "PlanBuilder", "register_policy", "known_policies", "SpecError"]
