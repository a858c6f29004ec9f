"""The model and data of the two-process test (imported by the workers and by the test)."""

from __future__ import annotations

import numpy as np
import numpyro
import numpyro.distributions as dist

N, STEPS = 32, 60


def model(x, y):
    """A global latent and a local one in the sharded plate."""
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample("z", dist.Normal(mu, 1.0))
        numpyro.sample("y", dist.Normal(z + x, 0.5), obs=y)


def data() -> tuple[np.ndarray, np.ndarray]:
    """The full data, built alike on every process."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=N).astype(np.float32)
    return x, (1.0 + x + 0.5 * rng.normal(size=N)).astype(np.float32)
