"""Fixtures shared by the flow tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def hull(hull_sim):
    """The Hull simulator with the two segments most flow tests sync from (VIP) or leave to (Other).
    A test module with other segments defines its own `hull`."""
    hull_sim.add_segment("s-vip", "VIP")
    hull_sim.add_segment("s-other", "Other")
    return hull_sim
