"""The benchmark's models, defined once and shared by every implementation.

Each :class:`Bench` holds

* ``model``: the NumPyro model (used by jaxguides and by NumPyro's SVI);
* ``data(size)``: deterministic synthetic data (a tuple of arrays, the
  model's positional arguments);
* ``floor_sites``: the unconstrained shape of every latent site, and
  ``log_joint(u, data, key, size) -> (log_p, log_jac)``: the model's log
  joint at the constrained values of unconstrained ``u``, and the log
  Jacobian of the bijections, written by hand for the hand-written floor;
* ``steps``: steps per timed run (also the run whose final loss is compared);
* optionally ``floor_params(size) -> {name: init pytree}``: the model's own
  ``numpyro.param`` sites (a ``flax_module``'s weights, ``"{name}$params"``),
  which every implementation trains as point values (no guide scale, no
  prior, no Jacobian). The floor passes them to ``log_joint`` in ``u`` under
  their site names, beside the latents; their init is deterministic (the
  same values whichever key the implementation seeds the model with), so
  every implementation starts from the same point;
* optionally ``sites_of_floor(u, size) -> {site: unconstrained value}``: where
  the floor writes the model's latent sites in another layout (200 scalar
  sites as one vector), the map back to the model's sites (for the test that
  checks ``log_joint`` against NumPyro's log density; identity if ``None``).

A model's ``size`` is a dict of ints (``{"K": 1000}``); ``sizes`` lists the
full-mode sizes, ``quick_sizes`` the ``--quick`` ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax.scipy import stats
from numpyro.contrib.control_flow import scan
from numpyro.contrib.module import flax_module
from numpyro.distributions.transforms import CorrCholeskyTransform, StickBreakingTransform

Data = tuple[Any, ...]
Size = dict[str, int]


@dataclasses.dataclass(frozen=True)
class Bench:
    name: str
    model: Callable[..., Any]
    data: Callable[[Size], Data]
    floor_sites: Callable[[Size], dict[str, tuple[int, ...]]]
    log_joint: Callable[[dict[str, jax.Array], Data, jax.Array, Size], tuple[jax.Array, jax.Array]]
    sizes: tuple[Size, ...]
    quick_sizes: tuple[Size, ...]
    steps: Callable[[Size], int]
    lr: float = 0.01
    map_diverges: bool = False  # the MAP (AutoDelta) objective is unbounded: no final loss to compare
    floor_params: Callable[[Size], dict[str, Any]] | None = None
    sites_of_floor: Callable[[dict[str, jax.Array], Size], dict[str, jax.Array]] | None = None


def _rng(seed: int = 0) -> np.random.RandomState:
    return np.random.RandomState(seed)


def _exp(u: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``positive`` as NumPyro maps it: ``exp``, log-Jacobian ``u``."""
    return jnp.exp(u), jnp.sum(u)


# ---- two-parameter Normal (the README example) ------------------------------------------
def normal_model(y):
    loc = numpyro.sample("loc", dist.Normal(0.0, 10.0))
    scale = numpyro.sample("scale", dist.LogNormal(0.0, 1.0))
    with numpyro.plate("data", y.shape[0]):
        numpyro.sample("obs", dist.Normal(loc, scale), obs=y)


def normal_data(size: Size) -> Data:
    return (jnp.asarray(3.0 + 1.5 * _rng().randn(size["N"]), jnp.float32),)


def normal_log_joint(u, data, key, size):
    (y,) = data
    scale, jac = _exp(u["scale"])
    log_p = (
        stats.norm.logpdf(u["loc"], 0.0, 10.0)
        + stats.norm.logpdf(jnp.log(scale), 0.0, 1.0)
        - jnp.log(scale)
        + jnp.sum(stats.norm.logpdf(y, u["loc"], scale))
    )
    return log_p, jac


NORMAL = Bench(
    "normal",
    normal_model,
    normal_data,
    lambda s: {"loc": (), "scale": ()},
    normal_log_joint,
    sizes=({"N": 100},),
    quick_sizes=({"N": 100},),
    steps=lambda s: 3000,
    lr=0.02,
)


# ---- Bayesian linear regression ------------------------------------------------------------
def linreg_model(X, y):
    d = X.shape[1]
    w = numpyro.sample("w", dist.Normal(jnp.zeros(d), 1.0).to_event(1))
    b = numpyro.sample("b", dist.Normal(0.0, 10.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    with numpyro.plate("data", X.shape[0]):
        numpyro.sample("y", dist.Normal(X @ w + b, sigma), obs=y)


def linreg_data(size: Size) -> Data:
    r = _rng()
    X = r.randn(size["N"], size["D"]).astype(np.float32)
    w = r.randn(size["D"]).astype(np.float32) / np.sqrt(size["D"])
    y = X @ w + 0.5 + 0.3 * r.randn(size["N"]).astype(np.float32)
    return jnp.asarray(X), jnp.asarray(y)


def linreg_log_joint(u, data, key, size):
    X, y = data
    sigma, jac = _exp(u["sigma"])
    log_p = (
        jnp.sum(stats.norm.logpdf(u["w"], 0.0, 1.0))
        + stats.norm.logpdf(u["b"], 0.0, 10.0)
        + dist.HalfNormal(1.0).log_prob(sigma)
        + jnp.sum(stats.norm.logpdf(y, X @ u["w"] + u["b"], sigma))
    )
    return log_p, jac


LINREG = Bench(
    "linreg",
    linreg_model,
    linreg_data,
    lambda s: {"w": (s["D"],), "b": (), "sigma": ()},
    linreg_log_joint,
    sizes=({"D": 10, "N": 1000}, {"D": 100, "N": 100_000}),
    quick_sizes=({"D": 10, "N": 1000},),
    steps=lambda s: 2000 if s["N"] <= 10_000 else 300,
)


# ---- hierarchical: K local latents in a plate (eight schools at K=8) ----------------------
def hier_model(y, sigma):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfNormal(5.0))
    with numpyro.plate("units", y.shape[0]):
        theta = numpyro.sample("theta", dist.Normal(mu, tau))
        numpyro.sample("y", dist.Normal(theta, sigma), obs=y)


def hier_data(size: Size) -> Data:
    r = _rng()
    k = size["K"]
    sigma = (5.0 + 10.0 * r.rand(k)).astype(np.float32)
    theta = 4.0 + 3.0 * r.randn(k)
    y = (theta + sigma * r.randn(k)).astype(np.float32)
    return jnp.asarray(y), jnp.asarray(sigma)


def hier_log_joint(u, data, key, size):
    y, sigma = data
    tau, jac = _exp(u["tau"])
    log_p = (
        stats.norm.logpdf(u["mu"], 0.0, 5.0)
        + dist.HalfNormal(5.0).log_prob(tau)
        + jnp.sum(stats.norm.logpdf(u["theta"], u["mu"], tau))
        + jnp.sum(stats.norm.logpdf(y, u["theta"], sigma))
    )
    return log_p, jac


HIER = Bench(
    "hier",
    hier_model,
    hier_data,
    lambda s: {"mu": (), "tau": (), "theta": (s["K"],)},
    hier_log_joint,
    sizes=({"K": 8}, {"K": 1000}, {"K": 100_000}, {"K": 1_000_000}),
    quick_sizes=({"K": 8}, {"K": 10_000}),
    steps=lambda s: 2000 if s["K"] <= 10_000 else 300,
    map_diverges=True,  # tau -> 0 with every theta_k -> mu: the joint density grows without bound
)


# ---- logistic regression with a subsampled data plate ---------------------------------------
def logreg_model(X, y, batch):
    d = X.shape[1]
    w = numpyro.sample("w", dist.Normal(jnp.zeros(d), 1.0).to_event(1))
    b = numpyro.sample("b", dist.Normal(0.0, 5.0))
    with numpyro.plate("data", X.shape[0], subsample_size=batch) as idx:
        numpyro.sample("y", dist.Bernoulli(logits=X[idx] @ w + b), obs=y[idx])


def logreg_data(size: Size) -> Data:
    r = _rng()
    X = r.randn(size["N"], size["D"]).astype(np.float32)
    w = r.randn(size["D"]).astype(np.float32)
    y = (r.rand(size["N"]) < 1.0 / (1.0 + np.exp(-(X @ w - 0.5)))).astype(np.float32)
    return jnp.asarray(X), jnp.asarray(y), size["B"]


def logreg_log_joint(u, data, key, size):
    """The floor draws its batch with replacement, O(batch) (``randint``)."""
    X, y, batch = data
    idx = jax.random.randint(key, (batch,), 0, X.shape[0])
    logits = X[idx] @ u["w"] + u["b"]
    lik = jnp.sum(y[idx] * logits - jnp.logaddexp(0.0, logits))
    log_p = jnp.sum(stats.norm.logpdf(u["w"], 0.0, 1.0)) + stats.norm.logpdf(u["b"], 0.0, 5.0)
    return log_p + X.shape[0] / batch * lik, jnp.zeros(())


LOGREG = Bench(
    "logreg_sub",
    logreg_model,
    logreg_data,
    lambda s: {"w": (s["D"],), "b": ()},
    logreg_log_joint,
    sizes=({"N": 100_000, "D": 10, "B": 1000},),
    quick_sizes=({"N": 100_000, "D": 10, "B": 1000},),
    steps=lambda s: 3000,
)


# ---- simplex, positive and LKJCholesky latents ------------------------------------------------
def constrained_model(c, x):
    d = x.shape[1]
    p = numpyro.sample("p", dist.Dirichlet(jnp.ones(d)))
    sigma = numpyro.sample("sigma", dist.HalfCauchy(jnp.ones(d)).to_event(1))
    L = numpyro.sample("L", dist.LKJCholesky(d, 2.0))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("c", dist.Categorical(probs=p), obs=c)
        numpyro.sample("x", dist.MultivariateNormal(jnp.zeros(d), scale_tril=sigma[:, None] * L), obs=x)


def constrained_data(size: Size) -> Data:
    r = _rng()
    n, d = size["N"], size["D"]
    p = r.dirichlet(np.arange(1, d + 1))
    c = r.choice(d, size=n, p=p).astype(np.int32)
    a = r.randn(d, d) / np.sqrt(d)
    cov = a @ a.T + np.diag(np.linspace(0.5, 2.0, d))
    x = r.multivariate_normal(np.zeros(d), cov, size=n).astype(np.float32)
    return jnp.asarray(c), jnp.asarray(x)


_STICK, _CORR = StickBreakingTransform(), CorrCholeskyTransform()


def constrained_log_joint(u, data, key, size):
    c, x = data
    d = x.shape[1]
    p = _STICK(u["p"])
    sigma, jac_sigma = _exp(u["sigma"])
    L = _CORR(u["L"])
    scale_tril = sigma[:, None] * L
    log_p = (
        dist.Dirichlet(jnp.ones(d)).log_prob(p)
        + jnp.sum(dist.HalfCauchy(1.0).log_prob(sigma))
        + dist.LKJCholesky(d, 2.0).log_prob(L)
        + jnp.sum(jnp.log(p)[c])
        + jnp.sum(dist.MultivariateNormal(jnp.zeros(d), scale_tril=scale_tril).log_prob(x))
    )
    jac = _STICK.log_abs_det_jacobian(u["p"], p) + jac_sigma + _CORR.log_abs_det_jacobian(u["L"], L)
    return log_p, jac


CONSTRAINED = Bench(
    "constrained",
    constrained_model,
    constrained_data,
    lambda s: {"p": (s["D"] - 1,), "sigma": (s["D"],), "L": (s["D"] * (s["D"] - 1) // 2,)},
    constrained_log_joint,
    sizes=({"N": 1000, "D": 4},),
    quick_sizes=({"N": 1000, "D": 4},),
    steps=lambda s: 2000,
)


# ---- a network: MLP regression through flax_module ----------------------------------------
def _fixed_init(seed: int) -> Callable[..., jax.Array]:
    """flax's default kernel init (LeCun normal) from a fixed key, whatever key flax is given:
    ``flax_module`` inits from ``numpyro.prng_key()``, which differs between jaxguides'
    ``init``, NumPyro's ``SVI.init`` and the floor; with this every one starts from the same
    weights."""

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        return jax.nn.initializers.lecun_normal()(jax.random.PRNGKey(seed), shape, dtype)

    return init


class MLP(nn.Module):
    hidden: int = 32

    @nn.compact
    def __call__(self, x):
        h = nn.tanh(nn.Dense(self.hidden, kernel_init=_fixed_init(1))(x))
        return nn.Dense(1, kernel_init=_fixed_init(2))(h)[..., 0]


def mlp_model(X, y):
    net = flax_module("net", MLP(), input_shape=(1, X.shape[1]))
    sigma = numpyro.sample("sigma", dist.LogNormal(0.0, 1.0))
    with numpyro.plate("data", X.shape[0]):
        numpyro.sample("y", dist.Normal(net(X), sigma), obs=y)


def mlp_data(size: Size) -> Data:
    r = _rng()
    X = r.randn(size["N"], size["D"]).astype(np.float32)
    w = r.randn(size["D"]).astype(np.float32) / np.sqrt(size["D"])
    y = np.sin(2.0 * X @ w) + 0.5 * X[:, 0] + 0.2 * r.randn(size["N"]).astype(np.float32)
    return jnp.asarray(X), jnp.asarray(y, np.float32)


def mlp_floor_params(size: Size) -> dict[str, Any]:
    weights = MLP().init(jax.random.PRNGKey(0), jnp.ones((1, size["D"])))["params"]
    return {"net$params": flax.core.unfreeze(weights)}


def mlp_log_joint(u, data, key, size):
    X, y = data
    w = u["net$params"]
    h = jnp.tanh(X @ w["Dense_0"]["kernel"] + w["Dense_0"]["bias"])
    out = (h @ w["Dense_1"]["kernel"] + w["Dense_1"]["bias"])[:, 0]
    sigma, jac = _exp(u["sigma"])
    log_p = stats.norm.logpdf(jnp.log(sigma), 0.0, 1.0) - jnp.log(sigma) + jnp.sum(stats.norm.logpdf(y, out, sigma))
    return log_p, jac


MLP_BENCH = Bench(
    "mlp",
    mlp_model,
    mlp_data,
    lambda s: {"sigma": ()},
    mlp_log_joint,
    sizes=({"N": 1000, "D": 10},),
    quick_sizes=({"N": 1000, "D": 10},),
    steps=lambda s: 2000,
    floor_params=mlp_floor_params,
)


# ---- a state-space model: a local level (Gaussian random walk) through scan -----------------
def local_level_model(y):
    sigma_state = numpyro.sample("sigma_state", dist.HalfNormal(1.0))
    sigma_obs = numpyro.sample("sigma_obs", dist.HalfNormal(1.0))

    def transition(x_prev, y_t):
        x = numpyro.sample("x", dist.Normal(x_prev, sigma_state))
        numpyro.sample("y", dist.Normal(x, sigma_obs), obs=y_t)
        return x, None

    scan(transition, jnp.zeros(()), y)


def local_level_data(size: Size) -> Data:
    r = _rng()
    x = np.cumsum(0.3 * r.randn(size["T"]))
    return (jnp.asarray(x + 1.0 * r.randn(size["T"]), jnp.float32),)


def local_level_log_joint(u, data, key, size):
    """Vectorised over time (no scan): the state's log density at once."""
    (y,) = data
    sigma_state, jac_state = _exp(u["sigma_state"])
    sigma_obs, jac_obs = _exp(u["sigma_obs"])
    x = u["x"]
    prev = jnp.concatenate([jnp.zeros((1,), x.dtype), x[:-1]])
    log_p = (
        dist.HalfNormal(1.0).log_prob(sigma_state)
        + dist.HalfNormal(1.0).log_prob(sigma_obs)
        + jnp.sum(stats.norm.logpdf(x, prev, sigma_state))
        + jnp.sum(stats.norm.logpdf(y, x, sigma_obs))
    )
    return log_p, jac_state + jac_obs


LOCAL_LEVEL = Bench(
    "local_level",
    local_level_model,
    local_level_data,
    lambda s: {"sigma_state": (), "sigma_obs": (), "x": (s["T"],)},
    local_level_log_joint,
    sizes=({"T": 1000},),
    quick_sizes=({"T": 1000},),
    steps=lambda s: 2000,
    map_diverges=True,  # sigma_state -> 0 with every x_t -> x_{t-1}: the joint density grows without bound
)


# ---- many small sites: S separate scalar latents, one shared likelihood ---------------------
def many_sites_model(y):
    theta = jnp.stack([numpyro.sample(f"theta_{i}", dist.Normal(0.0, 2.0)) for i in range(y.shape[0])])
    numpyro.sample("y", dist.Normal(theta[:, None], 1.0).to_event(2), obs=y)


def many_sites_data(size: Size) -> Data:
    r = _rng()
    theta = 2.0 * r.randn(size["S"], 1)
    return (jnp.asarray(theta + r.randn(size["S"], size["n"]), jnp.float32),)


def many_sites_log_joint(u, data, key, size):
    """The S scalar sites as one vector: what a hand-written step would do."""
    (y,) = data
    theta = u["theta"]
    log_p = jnp.sum(stats.norm.logpdf(theta, 0.0, 2.0)) + jnp.sum(stats.norm.logpdf(y, theta[:, None], 1.0))
    return log_p, jnp.zeros(())


MANY_SITES = Bench(
    "many_sites",
    many_sites_model,
    many_sites_data,
    lambda s: {"theta": (s["S"],)},
    many_sites_log_joint,
    sizes=({"S": 200, "n": 5},),
    quick_sizes=({"S": 200, "n": 5},),
    steps=lambda s: 2000,
    sites_of_floor=lambda u, s: {f"theta_{i}": u["theta"][i] for i in range(s["S"])},
)


BENCHES: dict[str, Bench] = {
    b.name: b for b in (NORMAL, LINREG, HIER, LOGREG, CONSTRAINED, MLP_BENCH, LOCAL_LEVEL, MANY_SITES)
}


def size_label(size: Size) -> str:
    return ",".join(f"{k}={v:,}" for k, v in size.items())
