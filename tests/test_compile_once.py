"""Compilation happens once per (model, shapes, guide): a trace counter in the model.

A model body runs in Python only while JAX traces it (init and the compiled
chunk); a cached compilation runs none of it. So the counter goes up on the
first fit of a (model, shapes, guide, optimizer settings) and stays put on
every repeat -- with new data values, a new key, a new guide object built with
the same arguments, and an optimizer built anew with the same settings.
"""

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
import optax
import pytest

import jaxguides as jg
from jaxguides.loop import chunks

TRACES = {"plain": 0, "subsampled": 0}


def plain(x):
    TRACES["plain"] += 1
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample("z", dist.LogNormal(mu, 1.0))
        numpyro.sample("x", dist.Normal(z, 1.0), obs=x)


def subsampled(x):
    TRACES["subsampled"] += 1
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", x.shape[0], subsample_size=2) as idx:
        z = numpyro.sample("z", dist.Normal(mu, 1.0))
        numpyro.sample("x", dist.Normal(z, 1.0), obs=x[idx])


def _caches():
    return chunks.run_init._cache_size(), chunks.run_chunk._cache_size()


@pytest.mark.parametrize(
    "model, guide_type, make_opt",
    [
        (plain, jg.AutoNormal, lambda: optax.adam(0.01)),
        (plain, jg.AutoDelta, lambda: optax.chain(optax.clip(1.0), optax.adam(0.01))),
        (subsampled, jg.AutoNormal, lambda: jg.sparse_adam(0.01)),  # epoch cursor + row-sparse step
    ],
    ids=["AutoNormal-adam", "AutoDelta-chain", "subsampled-sparse_adam"],
)
def test_repeated_fits_compile_once(model, guide_type, make_opt):
    name = model.__name__
    x = jnp.linspace(0.0, 1.0, 6)
    jg.fit(model, guide_type(model), make_opt(), jax.random.PRNGKey(0), 30, x, progress_bar=False)
    traced, caches = TRACES[name], _caches()
    assert traced >= 2  # init and the chunk each traced the model

    for i in range(1, 4):  # new key, new values, new guide object, new optimizer object, other lengths
        jg.fit(model, guide_type(model), make_opt(), jax.random.PRNGKey(i), 30 + i, x * i, progress_bar=False)
    assert TRACES[name] == traced
    assert _caches() == caches

    y = jnp.linspace(0.0, 1.0, 8)  # new shapes: traced and compiled once more, then cached again
    jg.fit(model, guide_type(model), make_opt(), jax.random.PRNGKey(0), 30, y, progress_bar=False)
    retraced = TRACES[name]
    assert retraced > traced
    jg.fit(model, guide_type(model), make_opt(), jax.random.PRNGKey(5), 30, 2 * y, progress_bar=False)
    assert TRACES[name] == retraced
    assert _caches() == (caches[0] + 1, caches[1] + 1)


def test_other_settings_do_compile_again():
    x = jnp.linspace(0.0, 1.0, 5)
    jg.fit(plain, jg.AutoNormal(plain), optax.adam(0.01), jax.random.PRNGKey(0), 10, x, progress_bar=False)
    traced = TRACES["plain"]
    jg.fit(plain, jg.AutoNormal(plain), optax.adam(0.02), jax.random.PRNGKey(0), 10, x, progress_bar=False)
    assert TRACES["plain"] > traced  # the learning rate is baked into the program


def test_the_low_level_step_traces_once_in_a_users_scan():
    x = jnp.linspace(0.0, 1.0, 6)
    algo = jg.svi(subsampled, jg.AutoNormal(subsampled), optax.adam(0.01))
    run = jax.jit(lambda s, x: jax.lax.scan(lambda s, _: algo.step(s, x), s, None, length=20))
    state = jax.jit(algo.init)(jax.random.PRNGKey(0), x)
    before = TRACES["subsampled"]
    for i in range(3):
        state, _ = run(state, x + i)
    assert TRACES["subsampled"] == before + 1  # one trace of the step, then the cached program
