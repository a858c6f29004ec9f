"""Shared test configuration.

Kept minimal on purpose: every test module in ``tests/`` and ``bench/tests/`` relies on it.
"""

import jax
import pytest

# As equinox does: a silent broadcast between arrays of different rank is a bug.
jax.config.update("jax_numpy_rank_promotion", "raise")


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "allow_rank_promotion: run the test with jax_numpy_rank_promotion='allow'. Only for "
        "tests that reach NumPyro code which is not rank-promotion clean (e.g. "
        "StickBreakingTransform or Distribution.sample on batched values); opt-in, per test.",
    )


@pytest.fixture(autouse=True)
def _allow_rank_promotion(request):
    if request.node.get_closest_marker("allow_rank_promotion") is None:
        yield
        return
    with jax.numpy_rank_promotion("allow"):
        yield


@pytest.fixture
def loop_io(monkeypatch):
    """``loop_io(run_chunk=spy, ...)``: what fit's host loop calls (its seam,
    ``jaxguides.loop.host_loop.IO``), replaced for one test; returns the real one."""
    import dataclasses

    from jaxguides.loop import host_loop

    real = host_loop.IO

    def replace(**changes):
        monkeypatch.setattr(host_loop, "IO", dataclasses.replace(host_loop.IO, **changes))
        return real

    return replace
