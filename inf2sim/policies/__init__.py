"""Built-in policies; importing this package registers them (see `inf2sim.registry`)."""
from . import ans, deepspeed, flexgen  # noqa: F401
