"""A zoo of small NumPyro models, one per kind of latent support, shared by the
guide, site and NumPyro-equivalence tests.

Each entry of ``MODELS`` is a :class:`Case`: the model, the args it is called
with, the support (name) of its latent sites, and, for subsampled plates, a
``create_plates`` that fixes the subsample rows so that our guide and NumPyro's
see the same rows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro import handlers
from numpyro.distributions import constraints
from numpyro.distributions.transforms import OrderedTransform


@dataclasses.dataclass(frozen=True)
class Case:
    """A model, its args, and (for subsampled plates) a ``create_plates`` fixing the rows.

    ``rank_clean`` is False where NumPyro's own code (not ours) broadcasts
    arrays of different rank for this model -- e.g. ``StickBreakingTransform``
    or ``AffineTransform`` with array params on batched values, or
    ``Distribution.sample(sample_shape)`` as ``init_to_median`` calls it -- so
    the test runs with ``jax_numpy_rank_promotion="allow"`` (see conftest).
    """

    model: Callable[..., Any]
    args: tuple[Any, ...] = ()
    create_plates: Callable[..., Any] | None = None
    rank_clean: bool = True

    @property
    def name(self) -> str:
        return self.model.__name__


# ---- one model per support -----------------------------------------------------------
def real():
    numpyro.sample("x", dist.Normal(0.5, 2.0))


def positive():
    numpyro.sample("x", dist.LogNormal(0.0, 0.7))


def greater_than():
    numpyro.sample("x", dist.Pareto(2.0, 3.0))


def greater_than_array():
    # array-valued bound: support data, not static
    numpyro.sample("x", dist.TruncatedNormal(0.0, 1.0, low=jnp.array([-1.0, 0.5, 2.0])).to_event(1))


def less_than():
    numpyro.sample("x", dist.TruncatedNormal(0.0, 1.0, high=0.5))


def interval():
    numpyro.sample("x", dist.Uniform(-1.0, 2.0))


def interval_array():
    numpyro.sample("x", dist.Uniform(jnp.array([-1.0, 0.0, 2.0]), jnp.array([1.0, 3.0, 5.0])).to_event(1))


def unit_interval():
    numpyro.sample("x", dist.Beta(2.0, 3.0))


def simplex():
    numpyro.sample("x", dist.Dirichlet(jnp.array([1.0, 2.0, 3.0, 4.0])))


def ordered_vector():
    base = dist.Normal(jnp.zeros(3), 1.0).to_event(1)
    numpyro.sample("x", dist.TransformedDistribution(base, OrderedTransform()))


def positive_ordered_vector():
    numpyro.sample("x", dist.ImproperUniform(constraints.positive_ordered_vector, (), (3,)))


def corr_cholesky():
    numpyro.sample("x", dist.LKJCholesky(3, 2.0))


def corr_matrix():
    numpyro.sample("x", dist.LKJ(3, 2.0))


def lower_cholesky():
    numpyro.sample("x", dist.WishartCholesky(5.0, scale_tril=jnp.eye(3)))


def scaled_unit_lower_cholesky():
    numpyro.sample("x", dist.ImproperUniform(constraints.scaled_unit_lower_cholesky, (), (3, 3)))


def positive_definite():
    numpyro.sample("x", dist.Wishart(5.0, scale_tril=jnp.eye(3)))


def zero_sum():
    numpyro.sample("x", dist.ZeroSumNormal(1.5, event_shape=(4,)))


def circular():
    numpyro.sample("x", dist.VonMises(0.5, 2.0))


def softplus_positive():
    numpyro.sample("x", dist.ImproperUniform(constraints.softplus_positive, (2,), ()))


def l1_ball():
    numpyro.sample("x", dist.ImproperUniform(constraints.l1_ball, (), (3,)))


def real_vector():
    cov = jnp.array([[1.0, 0.3, 0.0], [0.3, 2.0, 0.5], [0.0, 0.5, 1.5]])
    numpyro.sample("x", dist.MultivariateNormal(jnp.array([0.0, 1.0, -1.0]), cov))


def real_matrix():
    tril_row = jnp.array([[1.0, 0.0], [0.5, 1.0]])
    numpyro.sample("x", dist.MatrixNormal(jnp.zeros((2, 3)), tril_row, jnp.eye(3)))


def independent():
    numpyro.sample("x", dist.Gamma(jnp.array([2.0, 3.0, 4.0]), 1.0).to_event(1))
    numpyro.sample("y", dist.Normal(jnp.zeros((2, 3)), 1.0).to_event(2))


# ---- structure: vector sites, nested plates, subsampling, deterministic ------------------
def vector_plate(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    with numpyro.plate("groups", 3):
        theta = numpyro.sample("theta", dist.Normal(mu, 1.0))
        w = numpyro.sample("w", dist.Dirichlet(jnp.ones(4)))
    numpyro.deterministic("shift", mu + theta)
    numpyro.sample("y", dist.Normal(theta + w[:, 0], 1.0), obs=y)


def nested_plates(y):
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    with numpyro.plate("rows", 2, dim=-2):
        r = numpyro.sample("r", dist.Normal(0.0, 1.0))
        with numpyro.plate("cols", 3, dim=-1):
            s = numpyro.sample("s", dist.LogNormal(0.0, 1.0))
            c = numpyro.sample("c", dist.LKJCholesky(2, 1.5))
    numpyro.factor("penalty", -0.5 * jnp.sum(c[..., 1, 0] ** 2))
    numpyro.sample("y", dist.Normal(r * s, sigma), obs=y)


N_DATA, SUBSAMPLE = 10, 4
SUBSAMPLE_ROWS = np.array([7, 2, 9, 4])


def subsampled(x):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", N_DATA, subsample_size=SUBSAMPLE) as idx:
        z = numpyro.sample("z", dist.LogNormal(mu, 0.5))
        w = numpyro.sample("w", dist.Dirichlet(jnp.ones(3)))
        numpyro.sample("x", dist.Normal(z * w[..., 0], 1.0), obs=x[idx])


def subsampled_plates(x):
    """A ``create_plates`` returning the model's plate with its rows fixed."""
    del x
    with handlers.substitute(data={"data": jnp.asarray(SUBSAMPLE_ROWS)}):
        return numpyro.plate("data", N_DATA, subsample_size=SUBSAMPLE)


def subsampled_nested(x):
    # a subsampled plate on dim -2 and a plain plate inside it, with a vector site
    with numpyro.plate("data", N_DATA, subsample_size=SUBSAMPLE, dim=-2) as idx:
        with numpyro.plate("k", 2, dim=-1):
            v = numpyro.sample("v", dist.Normal(jnp.zeros(3), 1.0).to_event(1))
        numpyro.sample("x", dist.Normal(v.sum(-1).sum(-1, keepdims=True), 1.0), obs=x[idx][:, None])


def subsampled_nested_plates(x):
    del x
    with handlers.substitute(data={"data": jnp.asarray(SUBSAMPLE_ROWS)}):
        return numpyro.plate("data", N_DATA, subsample_size=SUBSAMPLE, dim=-2)


DATA_Y3 = jnp.array([0.3, -1.2, 2.0])
DATA_Y23 = jnp.array([[0.1, 0.4, -0.3], [1.0, 2.0, 0.5]])
DATA_X = jnp.linspace(-1.0, 2.0, N_DATA)

# NumPyro itself is not rank-promotion clean for these (see ``Case``).
_NOT_RANK_CLEAN = {
    greater_than_array,
    interval_array,
    simplex,
    ordered_vector,
    real_vector,
    real_matrix,
    independent,
}

SUPPORTS: dict[str, Case] = {
    f.__name__: Case(f, rank_clean=f not in _NOT_RANK_CLEAN)
    for f in [
        real,
        positive,
        greater_than,
        greater_than_array,
        less_than,
        interval,
        interval_array,
        unit_interval,
        simplex,
        ordered_vector,
        positive_ordered_vector,
        corr_cholesky,
        corr_matrix,
        lower_cholesky,
        scaled_unit_lower_cholesky,
        positive_definite,
        zero_sum,
        circular,
        softplus_positive,
        l1_ball,
        real_vector,
        real_matrix,
        independent,
    ]
}

STRUCTURES: dict[str, Case] = {
    "vector_plate": Case(vector_plate, (DATA_Y3,), rank_clean=False),
    "nested_plates": Case(nested_plates, (DATA_Y23,), rank_clean=False),
    "subsampled": Case(subsampled, (DATA_X,), subsampled_plates, rank_clean=False),
    "subsampled_nested": Case(subsampled_nested, (DATA_X,), subsampled_nested_plates, rank_clean=False),
}

MODELS: dict[str, Case] = {**SUPPORTS, **STRUCTURES}


def cases(names=None):
    """``pytest.param``s of the named cases (all by default), ids = names, marked as needed."""
    names = MODELS if names is None else names
    return [
        pytest.param(MODELS[n], id=n, marks=() if MODELS[n].rank_clean else pytest.mark.allow_rank_promotion)
        for n in names
    ]


# ---- a conjugate model with a closed-form posterior (test_fit.py, test_chunks.py) ----------------
def conjugate(y):
    """mu ~ N(0, 2^2), y_i ~ N(mu, 1): the posterior of mu is Normal, in closed form."""
    mu = numpyro.sample("mu", dist.Normal(0.0, 2.0))
    with numpyro.plate("data", y.shape[0]):
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)


YC = jnp.array([1.3, 2.2, 0.6, 3.0, 1.9])
