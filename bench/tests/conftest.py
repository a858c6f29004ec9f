"""The benchmark's own tests (its floors against NumPyro, the roofline's byte counts), run with the
library's (``testpaths`` in pyproject.toml), under the same rule as ``tests/conftest.py``: a silent
broadcast between ranks is a bug, except in a test marked ``allow_rank_promotion``."""

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture(autouse=True)
def _allow_rank_promotion(request):
    if request.node.get_closest_marker("allow_rank_promotion") is None:
        yield
        return
    with jax.numpy_rank_promotion("allow"):
        yield
