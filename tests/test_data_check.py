"""NaN or inf in the data: named before compiling (``model/data_check.py``), unless masked;
and ``on_nonfinite="skip"`` says how many steps it skipped."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest

import jaxguides as jg
from jaxguides.model.data_check import nonfinite_count

KEY = jax.random.PRNGKey(0)


def _fit(model, *args, steps=30, **kwargs):
    return jg.fit(model, jg.AutoNormal(model), optax.adam(0.05), KEY, steps, *args, progress_bar=False, **kwargs)


def observed(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", y.shape[0]):
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def obs_masked(y, m):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", y.shape[0]):
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y, obs_mask=m)


def handler_masked(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", y.shape[0]), numpyro.handlers.mask(mask=jnp.isfinite(y)):
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def covariate(x, y):
    b = numpyro.sample("b", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", y.shape[0]):
        numpyro.sample("y", dist.Normal(b * x, 1.0), obs=y)


def filled(x, y):  # the model replaces the NaNs itself
    b = numpyro.sample("b", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", y.shape[0]):
        numpyro.sample("y", dist.Normal(b * jnp.nan_to_num(x), 1.0), obs=y)


def subsampled(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", y.shape[0], subsample_size=2) as idx:
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y[idx])


def _with_nan(n=8, at=(3,), value=np.nan):
    y = np.linspace(-1.0, 1.0, n).astype(np.float32)
    y[list(at)] = value
    return y


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("as_jax", [False, True])
def test_nonfinite_observed_data_names_the_site(value, as_jax):
    y = _with_nan(at=(1, 5), value=value)
    y = jnp.asarray(y) if as_jax else y
    with pytest.raises(ValueError, match=r"y \(args\[0\]\) holds 2 non-finite values.*observed site 'y'.*obs_mask"):
        _fit(observed, y)


def test_nonfinite_rows_of_a_subsampled_plate_are_found():
    with pytest.raises(ValueError, match="observed site 'y'"):
        _fit(subsampled, _with_nan(n=40, at=(37,)))


@pytest.mark.parametrize("model", [obs_masked, handler_masked])
def test_masked_nonfinite_data_is_fine(model):
    y = _with_nan()
    args = (y, np.isfinite(y)) if model is obs_masked else (jnp.asarray(y),)
    result = _fit(model, *args, steps=50)
    assert result.num_skipped == 0 and np.all(np.isfinite(result.losses))


def test_nonfinite_covariate_names_the_argument_and_the_site_it_reaches():
    with pytest.raises(ValueError, match=r"x \(args\[0\]\) holds 1 non-finite value.*no observed site.*site 'y'"):
        _fit(covariate, _with_nan(), np.ones(8, np.float32))
    result = _fit(filled, _with_nan(), np.ones(8, np.float32))  # replaced by the model: fine
    assert np.all(np.isfinite(result.losses))


def test_nonfinite_data_through_fit_many():
    ys = np.stack([_with_nan(at=()), _with_nan()])
    keys = jax.random.split(KEY, 2)
    with pytest.raises(ValueError, match="observed site 'y'"):
        jg.fit_many(observed, jg.AutoNormal(observed), optax.adam(0.05), keys, 10, ys, batched_args=True,
                    progress_bar=False)  # fmt: skip
    with pytest.raises(ValueError, match="observed site 'y'"):
        jg.fit_many(observed, jg.AutoNormal(observed), optax.adam(0.05), keys, 10, _with_nan(), progress_bar=False)


def test_host_check_counts_exactly():
    big = np.full(10, 3e38, np.float32)  # a sum that overflows: counted exactly, all finite
    assert nonfinite_count(big) == 0
    assert nonfinite_count(_with_nan(at=(0, 2, 4))) == 3
    assert nonfinite_count(np.arange(5)) == 0 and nonfinite_count(jnp.asarray(_with_nan())) == 1


def nan_grad(threshold):
    x = numpyro.sample("x", dist.Normal(0.0, 1.0))
    numpyro.factor("bad", jnp.where(x > threshold, jnp.nan, 0.0))


def test_skip_warns_with_the_count():
    guide = jg.AutoNormal(nan_grad, init_scale=1.0)
    with pytest.warns(RuntimeWarning, match=r"fit: \d+ of 200 steps were skipped") as record:
        result = jg.fit(nan_grad, guide, optax.adam(0.01), KEY, 200, 1.5, progress_bar=False, on_nonfinite="skip")
    assert f"{result.num_skipped} of 200" in str(record[0].message) and 0 < result.num_skipped < 200
    assert record[0].filename == __file__  # it points at the call
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing skipped: no warning
        jg.fit(nan_grad, guide, optax.adam(0.01), KEY, 20, 1e9, progress_bar=False, on_nonfinite="skip")


def test_skip_of_every_step_raises():
    guide = jg.AutoNormal(nan_grad)
    with pytest.raises(jg.NonFiniteLossError, match="all 20 steps were skipped") as info:
        jg.fit(nan_grad, guide, optax.adam(0.01), KEY, 20, -1e9, progress_bar=False, on_nonfinite="skip")
    init = guide.init(jax.random.fold_in(KEY, 0xFFFFFFFF), -1e9)
    for a, b in zip(jax.tree.leaves(info.value.params), jax.tree.leaves(init)):
        np.testing.assert_allclose(a, b, rtol=1e-6)  # the params never moved (init here is not jitted)
