"""Shared fixtures: small specs built from the real conf/ files."""
import pytest

from inf2sim.config import default_config, specs_from_config


@pytest.fixture
def spec_of():
    def make(**overrides):
        return specs_from_config(default_config(**overrides))

    return make
