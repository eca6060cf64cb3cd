"""Turn composed configuration (Hydra/OmegaConf) into validated frozen specs.

Called by the CLI (`inf2sim.cli`) and by `inf2sim.simulate` when given dicts or
DictConfigs. The dataclasses of `inf2sim.specs` are the structured-config schemas:
an unknown key, a wrong type or a bad value ends in `SpecError` with one line
naming the field (e.g. `hardware.csd_count`) and what is allowed.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .specs import HardwareProfile, ModelSpec, Policy, SimOptions, SpecError, Workload, validate

CONF_DIR = Path(os.environ.get("INF2_CONF_DIR", Path(__file__).resolve().parent.parent / "conf"))


def _group_names(group: str):
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml") if not p.stem.startswith("_"))


def _writable(node: Any) -> None:
    """Frozen dataclasses make read-only nodes; merging user data needs them writable."""
    if isinstance(node, DictConfig):
        node._set_flag("readonly", None)
        for k in node.keys():
            _writable(node._get_node(k))


def _to_spec(schema_cls, data: Any, prefix: str):
    schema = OmegaConf.structured(schema_cls)
    _writable(schema)
    try:
        merged = OmegaConf.merge(schema, data if data is not None else {})
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or getattr(e, "key", None) or ""
        msg = str(e).splitlines()[0]
        raise SpecError(f"{prefix}.{key}: {msg}" if key else f"{prefix}: {msg}") from None


def load_group(group: str, name: str) -> DictConfig:
    """Read conf/<group>/<name>.yaml, with a one-line error listing what exists."""
    path = CONF_DIR / group / f"{name}.yaml"
    if not path.exists():
        raise SpecError(f"{group}={name!r} is not known; choose one of {', '.join(_group_names(group))}")
    cfg = OmegaConf.load(path)
    if "defaults" in cfg:
        bases = [d for d in cfg.pop("defaults") if d != "_self_"]
        cfg = OmegaConf.merge(*[OmegaConf.load(CONF_DIR / group / f"{b}.yaml") for b in bases], cfg)
    return cfg  # type: ignore[return-value]


@dataclass(frozen=True)
class RunSpec:
    model: ModelSpec
    workload: Workload
    hardware: HardwareProfile
    policy: Policy
    sim: SimOptions


def _section(cfg: Any, key: str, group: Optional[str]):
    """A config section given as a mapping, or as a name of a conf/<group> file."""
    v = cfg.get(key) if isinstance(cfg, (Mapping, DictConfig)) else None
    if isinstance(v, str) and group:
        return load_group(group, v)
    return v


def specs_from_config(cfg: Any) -> RunSpec:
    """Validate a composed config with sections model, workload, hardware, policy, sim."""
    model = _to_spec(ModelSpec, _section(cfg, "model", "model"), "model")
    workload = _to_spec(Workload, _section(cfg, "workload", "workload"), "workload")
    hardware = _to_spec(HardwareProfile, _section(cfg, "hardware", "hardware"), "hardware")
    policy = _to_spec(Policy, _section(cfg, "policy", "policy"), "policy")
    sim = _to_spec(SimOptions, _section(cfg, "sim", None), "sim")
    from .registry import known_policies

    if policy.name not in known_policies():
        raise SpecError(f"policy.name={policy.name!r} is not known; choose one of {', '.join(known_policies())}")
    if sim.fidelity not in ("full", "fast"):
        raise SpecError(f"sim.fidelity={sim.fidelity!r} is not allowed; choose one of full, fast")
    validate(model, workload, hardware, policy)
    return RunSpec(model, workload, hardware, policy, sim)


def default_config(**overrides: Any) -> DictConfig:
    """The built-in defaults as a DictConfig (what `inf2` with no arguments runs),
    with `overrides` as dotted keys, e.g. default_config(**{"hardware.csd_count": 4})."""
    cfg = OmegaConf.create(
        {
            "model": load_group("model", "opt-30b"),
            "workload": load_group("workload", "default"),
            "hardware": load_group("hardware", "paper_a100"),
            "policy": load_group("policy", "ans"),
            "sim": {},
        }
    )
    for k, v in overrides.items():
        group, _, rest = k.partition(".")
        if not rest and isinstance(v, str) and group in ("model", "workload", "hardware", "policy"):
            cfg[group] = load_group(group, v)
        else:
            OmegaConf.update(cfg, k, v, force_add=True)
    return cfg
