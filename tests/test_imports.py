"""The dependency rule of DESIGN.md: inf2sim top-level modules import only the
standard library, numpy/scipy and omegaconf; inf2sim.des adds simpy; inf2hw never
imports inf2sim.des. Checked on module-level imports (function-level imports of
hydra/tqdm in the CLI layer and of the DES in `simulate` are the documented exceptions)."""
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STDLIB = set(sys.stdlib_module_names)


def _module_imports(path):
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, 0
        elif isinstance(node, ast.ImportFrom):
            yield (node.module or ""), node.level


def _check(files, allowed):
    bad = []
    for f in files:
        for mod, level in _module_imports(f):
            top = mod.split(".")[0]
            if level > 0:
                if "des" in mod.split(".") and f.parent.name != "des":
                    bad.append((f.name, mod))
                continue
            if top not in STDLIB and top not in allowed and top != "__future__":
                bad.append((f.name, mod))
    return bad


def test_inf2sim_top_level_is_pure():
    files = [f for f in (ROOT / "inf2sim").rglob("*.py") if "des" not in f.relative_to(ROOT / "inf2sim").parts]
    assert _check(files, {"numpy", "scipy", "omegaconf", "inf2sim"}) == []


def test_des_adds_only_simpy():
    assert _check((ROOT / "inf2sim" / "des").rglob("*.py"), {"numpy", "scipy", "omegaconf", "simpy", "inf2sim"}) == []


def test_inf2hw_never_imports_the_des():
    for f in (ROOT / "inf2hw").rglob("*.py"):
        src = f.read_text()
        assert "inf2sim.des" not in src and "inf2sim import des" not in src, f
