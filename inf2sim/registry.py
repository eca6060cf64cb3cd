"""Policy registry: a policy is a plan-builder class registered under a name.

Called by `inf2sim.config` (to validate `policy.name`) and `inf2sim.scheduler.build_plan`.
Register your own with

    @register_policy("my_policy")
    class MyPolicy(PlanBuilder): ...

and select it with `policy.name=my_policy` (or a conf/policy/my_policy.yaml).
"""
from __future__ import annotations

from typing import Dict, List, Type

_POLICIES: Dict[str, type] = {}


def register_policy(name: str):
    def deco(cls: Type) -> Type:
        _POLICIES[name] = cls
        cls.policy_name = name
        return cls

    return deco


def _load_builtins() -> None:
    from . import policies  # noqa: F401  (registers the built-in policies)


def known_policies() -> List[str]:
    _load_builtins()
    return sorted(_POLICIES)


def get_policy(name: str) -> type:
    _load_builtins()
    if name not in _POLICIES:
        from .specs import SpecError

        raise SpecError(f"policy.name={name!r} is not known; choose one of {', '.join(sorted(_POLICIES))}")
    return _POLICIES[name]
