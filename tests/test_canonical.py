"""One object per optimizer structure (jaxguides/optim/canonical.py), so equal optimizers share compilations."""

import jax.numpy as jnp
import optax

import jaxguides as jg
from jaxguides.optim.canonical import canonical


def test_equal_optimizers_built_anew_are_one_object():
    jg.clear_caches()
    first = canonical(optax.adam(1e-2))
    assert canonical(optax.adam(1e-2)) is first
    assert canonical(first) is first
    chained = canonical(optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2)))
    assert canonical(optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2))) is chained


def test_different_optimizers_stay_apart():
    jg.clear_caches()
    base = canonical(optax.adam(1e-2))
    for other in (optax.adam(2e-2), optax.adam(1e-2, b1=0.8), optax.sgd(1e-2), optax.adamw(1e-2)):
        assert canonical(other) is not base
    # a schedule is a function: the same code closing over other values is another optimizer
    a = canonical(optax.adam(optax.exponential_decay(1e-2, 100, 0.5)))
    assert canonical(optax.adam(optax.exponential_decay(1e-2, 100, 0.9))) is not a
    # an array it closes over is compared by identity (its values could be anything)
    w = jnp.ones(3)
    assert canonical(optax.add_decayed_weights(1e-4, mask=w)) is not canonical(
        optax.add_decayed_weights(1e-4, mask=jnp.ones(3))
    )


def test_clear_caches_forgets_them():
    jg.clear_caches()
    first = canonical(optax.adam(1e-2))
    jg.clear_caches()
    assert canonical(optax.adam(1e-2)) is not first
