"""Reliability: hostile input, numerical extremes, faults and determinism.

Complements test_errors.py (bad input at the guide level), test_checkpoint.py
(in-process checkpoint faults) and test_fit.py (injected NaN losses):

* bad input that only shows between calls: a latent whose plate changed size,
  a subsample size changed through the args, an array-valued support in a
  subsampled plate, params of a model of the same name; errors raised through
  ``fit`` (the entry point users call), before anything is compiled;
* numerical extremes: tiny and huge ``init_scale``, priors with mass at the
  edge of their support, a loss that genuinely overflows float32;
* faults and determinism in fresh processes (``tests/helpers/fit_worker.py``): a fit
  killed with SIGKILL half-way through writing a checkpoint keeps the previous
  checkpoint intact, resumes from it and ends bit-equal to an uninterrupted
  run; a corrupted or truncated checkpoint is refused and left as it was; two
  runs with the same key are byte-identical; float64 mode end to end.
"""

from __future__ import annotations

import functools
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest

import jaxguides as jg
from helpers import fit_worker as _fit_worker  # the model the subprocesses fit

KEY = jax.random.PRNGKey(0)
WORKER = Path(_fit_worker.__file__)


def _finite(tree) -> bool:
    return all(bool(np.all(np.isfinite(np.asarray(x)))) for x in jax.tree.leaves(tree))


# ================================================================================================
# Bad input
# ================================================================================================
def local_model(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", y.shape[0]):
        z = numpyro.sample("z", dist.Normal(mu, 1.0))
        numpyro.sample("y", dist.Normal(z, 1.0), obs=y)


@pytest.mark.parametrize("guide_cls", [jg.AutoNormal, jg.AutoDelta])
def test_latent_plate_changed_size(guide_cls):
    """Params for 5 rows of a local latent, data of 7 rows: a SiteError naming the
    site, raised while tracing -- ``lower`` compiles nothing."""
    guide = guide_cls(local_model)
    params = guide.init(KEY, jnp.ones(5))
    loss = jg.elbo_loss(local_model, guide)
    assert np.isfinite(loss(params, KEY, jnp.ones(5)))
    algo = jg.svi(local_model, guide, optax.adam(0.1))
    state = algo.init(KEY, jnp.ones(5))
    calls = {
        "loss": lambda y: loss(params, KEY, y),
        "lower": lambda y: jax.jit(loss).lower(params, KEY, y),
        "step": lambda y: jax.jit(algo.step).lower(state, y),
        "log_prob": lambda y: guide.log_prob(params, {"mu": 0.0, "z": jnp.zeros(y.shape[0])}, y),
    }
    for name, call in calls.items():
        with pytest.raises(jg.SiteError, match="'z'") as info:
            call(jnp.ones(7))
        assert info.value.site == "z", name
        assert "(7,)" in str(info.value) and "(5,)" in str(info.value), name


def subsampled_model(y, batch):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", y.shape[0], subsample_size=batch) as idx:
        z = numpyro.sample("z", dist.Normal(mu, 1.0))
        numpyro.sample("y", dist.Normal(z, 1.0), obs=y[idx])


def test_subsampled_plate_changed_full_size():
    guide = jg.AutoNormal(subsampled_model)
    params = guide.init(KEY, jnp.arange(10.0), 4)
    with pytest.raises(jg.SiteError, match="'z'"):
        jg.elbo_loss(subsampled_model, guide)(params, KEY, jnp.arange(12.0), 4)


def test_subsample_size_changed_through_args_is_refused():
    seen = []

    def model(y, batch):
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        with numpyro.plate("data", y.shape[0], subsample_size=batch) as idx:
            seen.append(idx.shape[0])
            z = numpyro.sample("z", dist.Normal(mu, 1.0))
            numpyro.sample("y", dist.Normal(z, 1.0), obs=y[idx])

    guide = jg.AutoNormal(model)
    params = guide.init(KEY, jnp.arange(10.0), 4)
    # the ELBO draws rows for the subsample size seen at init: another size is refused, never
    # silently replaced (re-init the guide to change the batch size)
    with pytest.raises(jg.SiteError, match="subsample 6"):
        jax.jit(jg.elbo_loss(model, guide), static_argnums=3).lower(params, KEY, jnp.arange(10.0), 6)


def bounded_in_subsampled_plate():
    low = jnp.linspace(-1.0, 1.0, 6)
    with numpyro.plate("data", 6, subsample_size=3) as idx:
        numpyro.sample("u", dist.Uniform(low[idx], low[idx] + 1.0))


@pytest.mark.parametrize("guide_cls", [jg.AutoNormal, jg.AutoDelta])
@pytest.mark.allow_rank_promotion  # init_to_median: NumPyro's Uniform.sample((15,)) on a vector site
def test_array_support_in_subsampled_plate(guide_cls):
    """Init sees one subsample's bounds: refused at init, naming the site and plate
    (NumPyro's AutoNormal fails later, deep in JAX). Also under jit."""
    guide = guide_cls(bounded_in_subsampled_plate)
    for init in (guide.init, jax.jit(guide.init)):
        with pytest.raises(jg.SiteError, match="'u'.*'data'") as info:
            init(KEY)
        assert info.value.site == "u"


def bounds_constant_along_subsampled_plate():
    with numpyro.plate("data", 6, subsample_size=3):
        numpyro.sample("u", dist.Uniform(jnp.zeros((1,)), 1.0))
    with numpyro.plate("rows", 4, dim=-2), numpyro.plate("cols", 6, subsample_size=3):
        numpyro.sample("v", dist.Uniform(jnp.arange(4.0)[:, None], 5.0))  # varies along 'rows' only


def test_array_support_constant_along_subsampled_plate_is_kept():
    guide = jg.AutoNormal(bounds_constant_along_subsampled_plate)
    median = guide.median(guide.init(KEY))
    assert median["u"].shape == (6,) and median["v"].shape == (4, 6)
    assert bool(jnp.all((median["v"] > jnp.arange(4.0)[:, None]) & (median["v"] < 5.0)))


def bounded(low):
    numpyro.sample("u", dist.Uniform(low, low + 1.0))


def test_init_to_value_outside_traced_support_is_checked_outside_jit():
    """Under jit the bounds are traced, so init cannot check the value (and no longer
    crashes trying); guide.check_init, run on the concrete args, refuses it."""
    guide = jg.AutoNormal(bounded, init_loc_fn=jg.init_to_value(values={"u": 5.0}))
    jax.jit(guide.init)(KEY, jnp.array(0.0))  # traced bounds: not checkable here, no crash
    with pytest.raises(jg.SiteError, match="'u'.*support") as info:
        guide.check_init(KEY, jnp.array(0.0))
    assert info.value.site == "u"
    inside = jg.AutoNormal(bounded, init_loc_fn=jg.init_to_value(values={"u": 0.5}))
    inside.check_init(KEY, jnp.array(0.0))
    np.testing.assert_allclose(inside.median(jax.jit(inside.init)(KEY, jnp.array(0.0)))["u"], 0.5, rtol=1e-6)


def test_init_to_value_outside_traced_support_through_fit():
    guide = jg.AutoNormal(bounded, init_loc_fn=jg.init_to_value(values={"u": 5.0}))
    with pytest.raises(jg.SiteError, match="'u'"):
        jg.fit(bounded, guide, optax.adam(0.1), KEY, 5, jnp.array(0.0), progress_bar=False)


@pytest.mark.parametrize("batched_args", [False, True])
def test_init_to_value_outside_traced_support_through_fit_many(batched_args):
    guide = jg.AutoNormal(bounded, init_loc_fn=jg.init_to_value(values={"u": 5.0}))
    low = jnp.zeros(3) if batched_args else jnp.array(0.0)
    keys = jax.random.split(KEY, 3)
    with pytest.raises(jg.SiteError, match="'u'"):
        jg.fit_many(bounded, guide, optax.adam(0.1), keys, 5, low, batched_args=batched_args, progress_bar=False)


def test_init_to_value_errors_through_fit():
    """With static bounds the checks work under fit's jitted init too."""

    def positive(y):
        s = numpyro.sample("s", dist.LogNormal(0.0, 1.0))
        w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
        numpyro.deterministic("d", s * jnp.sum(w))
        numpyro.sample("y", dist.Normal(jnp.sum(w), 1.0), obs=y)

    for values, match in [({"s": -1.0}, "support"), ({"s": jnp.nan}, "support"), ({"w": jnp.zeros(4)}, r"\(4,\)")]:
        guide = jg.AutoNormal(positive, init_loc_fn=jg.init_to_value(values=values))
        with pytest.raises(jg.SiteError, match=match) as info:
            jg.fit(positive, guide, optax.adam(0.1), KEY, 5, jnp.array(1.0), progress_bar=False)
        assert info.value.site == next(iter(values))


def closed_edges():
    numpyro.sample("p", dist.Beta(2.0, 2.0))
    numpyro.sample("s", dist.LogNormal(0.0, 1.0))


@pytest.mark.parametrize("values", [{"p": 1.0}, {"s": float("inf")}])
def test_init_to_value_on_the_edge_of_the_support(values):
    guide = jg.AutoNormal(closed_edges, init_loc_fn=jg.init_to_value(values=values))
    try:
        params = guide.init(KEY)
    except jg.SiteError as err:  # refusing it, naming the site, is fine
        assert err.site == next(iter(values))
        return
    assert _finite(params)  # or clipping it inside


def scale_then_use(y):
    s = numpyro.sample("s", dist.LogNormal(0.0, 1.0))
    w = numpyro.sample("w", dist.Normal(0.0, 1.0))
    numpyro.sample("y", dist.Normal(w, s), obs=y)


def test_init_to_value_outside_support_used_by_a_later_site():
    """The value is checked when its site is reached, before 'y' (whose Normal would
    refuse the negative scale) can fail on it and be blamed."""
    guide = jg.AutoNormal(scale_then_use, init_loc_fn=jg.init_to_value(values={"s": -1.0}))
    with pytest.raises(jg.SiteError, match="'s'.*support") as info:
        guide.init(KEY, 1.0)
    assert info.value.site == "s"


def test_model_errors_through_fit():
    def raises_after_b(y):
        a = numpyro.sample("a", dist.Normal(0.0, 1.0))
        numpyro.sample("b", dist.Normal(a, 1.0))
        raise KeyError("boom")

    def raises_first(y):
        raise ZeroDivisionError("early")

    def no_latents(y):
        numpyro.sample("y", dist.Normal(0.0, 1.0), obs=y)

    for guide_cls in (jg.AutoNormal, jg.AutoDelta):
        with pytest.raises(jg.ModelTraceError, match="'b'") as info:
            jg.fit(raises_after_b, guide_cls(raises_after_b), optax.adam(0.1), KEY, 5, jnp.ones(3), progress_bar=False)
        assert info.value.site == "b" and isinstance(info.value.__cause__, KeyError)
        assert "boom" in str(info.value)
        with pytest.raises(jg.ModelTraceError, match="before its first site") as info:
            jg.fit(raises_first, guide_cls(raises_first), optax.adam(0.1), KEY, 5, jnp.ones(3), progress_bar=False)
        assert info.value.site is None and isinstance(info.value.__cause__, ZeroDivisionError)
        with pytest.raises(ValueError, match="no latent"):
            jg.fit(no_latents, guide_cls(no_latents), optax.adam(0.1), KEY, 5, jnp.ones(3), progress_bar=False)


def _factory_model(name: str, k: int):
    def model():
        numpyro.sample(name, dist.Normal(0.0, 1.0).expand([k]).to_event(1))

    return model


def _sized(k):
    numpyro.sample("a", dist.Normal(0.0, 1.0).expand([k]).to_event(1))


def test_params_of_a_same_named_model_are_refused_by_the_loss():
    """Two closures of one factory (or two partials) share a qualified name; the ELBO
    refuses the other's params (the guide's check, before the model runs), naming what differs."""
    model_a, model_b = _factory_model("a", 2), _factory_model("b", 3)
    params_a = jg.AutoNormal(model_a).init(KEY)
    with pytest.raises(jg.ParamsMismatchError, match="k: 2 in the params' model, 3 in this guide's"):
        jg.elbo_loss(model_b, jg.AutoNormal(model_b))(params_a, KEY)
    p2, p3 = functools.partial(_sized, 2), functools.partial(_sized, 3)
    with pytest.raises(jg.ParamsMismatchError, match=r"partial args\[0\]: 2 in the params' model, 3"):
        jg.elbo_loss(p3, jg.AutoNormal(p3))(jg.AutoNormal(p2).init(KEY), KEY)


@pytest.mark.parametrize("guide_cls", [jg.AutoNormal, jg.AutoDelta])
def test_params_of_a_same_named_model_are_refused_by_guide_functions(guide_cls):
    model_a, model_b = _factory_model("a", 2), _factory_model("b", 3)
    params_a = guide_cls(model_a).init(KEY)
    guide_b = guide_cls(model_b)
    for call in [
        lambda: guide_b.median(params_a),
        lambda: guide_b.sample(params_a, KEY),
        lambda: guide_b.log_prob(params_a, {"a": jnp.zeros(2)}),
        lambda: jax.jit(guide_b.median)(params_a),
        lambda: jg.to_numpyro_params(guide_b, params_a),
    ]:
        with pytest.raises(jg.ParamsMismatchError, match="name: 'a' in the params' model, 'b' in this guide's"):
            call()
    p2, p3 = functools.partial(_sized, 2), functools.partial(_sized, 3)
    with pytest.raises(jg.ParamsMismatchError, match="_sized"):
        guide_cls(p3).median(guide_cls(p2).init(KEY))


def _data_model(x, scale):
    sizes = []  # a mutable object the model changes on every call

    def model():
        sizes.append(x.shape[0])
        numpyro.sample("w", dist.Normal(0.0, scale).expand([x.shape[1]]).to_event(1))

    return model


def test_params_are_kept_by_the_same_model_and_its_equal_rebuilds():
    """A new guide of the same model, a closure rebuilt with the same Python values (here
    or after pickling), a closure over other arrays (data), one whose list grew: accepted."""
    model = _data_model(jnp.ones((5, 2)), 1.0)
    params = jg.AutoNormal(model).init(KEY)
    same = [
        model,
        _data_model(jnp.ones((5, 2)), 1.0),
        _data_model(jnp.zeros((9, 2)), 1.0),  # other data, same latents
        functools.partial(_sized, 2),
    ]
    for other in same[:3]:
        for p in (params, pickle.loads(pickle.dumps(params))):
            np.testing.assert_array_equal(jg.AutoNormal(other).median(p)["w"], params.loc["w"])
    p2 = jg.AutoNormal(same[3]).init(KEY)
    jg.AutoNormal(functools.partial(_sized, 2)).median(pickle.loads(pickle.dumps(p2)))
    with pytest.raises(jg.ParamsMismatchError, match="scale: 1.0 in the params' model, 2.0"):
        jg.AutoNormal(_data_model(jnp.ones((5, 2)), 2.0)).median(params)


# ================================================================================================
# Numerical extremes (float32)
# ================================================================================================
def mixed(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    s = numpyro.sample("s", dist.LogNormal(0.0, 1.0))
    p = numpyro.sample("p", dist.Beta(2.0, 2.0))
    with numpyro.plate("data", y.shape[0]):
        numpyro.sample("y", dist.Normal(mu + p, s), obs=y)


def real_only(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", y.shape[0]):
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)


Y = jnp.array([0.3, 1.2, -0.5, 0.8, 0.1, 0.7])


def test_tiny_init_scale():
    guide = jg.AutoNormal(mixed, init_scale=1e-6)
    params = guide.init(KEY, Y)
    for scale in params.scale.values():
        np.testing.assert_allclose(scale, 1e-6, rtol=1e-3)
    draws = guide.sample(params, KEY, Y, sample_shape=(50,))
    median = guide.median(params)
    for name in median:  # draws within a few scales of the median, in constrained space
        assert np.max(np.abs(draws[name] - median[name])) < 1e-4
    lp = guide.log_prob(params, {n: v[0] for n, v in draws.items()}, Y)
    assert np.isfinite(lp) and lp > 30.0  # three sites with density ~1e6 each
    result = jg.fit(mixed, guide, optax.adam(0.05), KEY, 300, Y, progress_bar=False)
    assert np.all(np.isfinite(result.losses)) and _finite(result.params)
    assert np.mean(result.losses[-30:]) < np.mean(result.losses[:30])
    assert all(float(s) > 1e-3 for s in result.params.scale.values())  # the scales grew out of it


def test_huge_init_scale():
    # a real site: every draw is finite, and the fit shrinks the scale
    guide = jg.AutoNormal(real_only, init_scale=1e3)
    result = jg.fit(real_only, guide, optax.adam(5.0), KEY, 300, Y, progress_bar=False)
    assert np.all(np.isfinite(result.losses)) and _finite(result.params)
    assert float(result.params.scale["mu"]) < 500.0
    # positive and unit-interval sites: exp / sigmoid of draws of scale 1000 overflow or
    # saturate, the loss is not finite, and fit stops cleanly with finite params ...
    guide = jg.AutoNormal(mixed, init_scale=1e3)
    with pytest.raises(jg.NonFiniteLossError) as info:
        jg.fit(mixed, guide, optax.adam(0.05), KEY, 300, Y, progress_bar=False)
    err = info.value
    assert 0 <= err.step < 300 and f"step {err.step}" in str(err)
    assert _finite(err.params) and _finite(err.state) and np.all(np.isfinite(err.losses))
    assert len(err.losses) == err.step
    # ... or, told to skip, never writes a non-finite param
    result = jg.fit(mixed, guide, optax.adam(0.05), KEY, 300, Y, progress_bar=False, on_nonfinite="skip")
    assert result.num_skipped > 0 and _finite(result.params)


def edge(y):
    p = numpyro.sample("p", dist.Beta(0.01, 0.01))  # mass at 0 and 1
    g = numpyro.sample("g", dist.Gamma(0.5, 1e-6))  # mean 5e5, density infinite at 0
    numpyro.sample("y", dist.Bernoulli(p), obs=y)
    numpyro.sample("n", dist.Poisson(g * 1e-5), obs=y.sum())


@pytest.mark.parametrize("guide_cls", [jg.AutoNormal, jg.AutoDelta])
def test_prior_mass_at_the_edge_of_the_support(guide_cls):
    guide = guide_cls(edge)
    yb = jnp.array([1.0, 1.0, 1.0, 0.0])
    try:
        result = jg.fit(edge, guide, optax.adam(0.1), KEY, 1500, yb, progress_bar=False)
        params, losses = result.params, result.losses
    except jg.NonFiniteLossError as err:  # stopping cleanly is fine too
        params, losses = err.params, err.losses
        assert len(losses) == err.step
    assert np.all(np.isfinite(losses)) and _finite(params)
    median = guide.median(params)
    assert 0.0 < float(median["p"]) < 1.0 and float(median["g"]) > 0.0  # strictly inside the support
    assert np.isfinite(jg.elbo_loss(edge, guide)(params, KEY, yb))


def overflow():
    x = numpyro.sample("x", dist.Normal(0.0, 1.0))
    numpyro.factor("grow", jnp.exp(x))  # pulls x up ever faster until exp(x) overflows


@pytest.mark.parametrize("guide_cls, optimizer", [(jg.AutoDelta, optax.sgd(0.1)), (jg.AutoNormal, optax.adam(2.0))])
def test_loss_that_overflows_stops_with_the_last_finite_params(guide_cls, optimizer, tmp_path):
    guide, path = guide_cls(overflow), tmp_path / "run.ckpt"
    with pytest.raises(jg.NonFiniteLossError) as info:
        jg.fit(overflow, guide, optimizer, KEY, 400, progress_bar=False, checkpoint=path, checkpoint_every=5)
    err = info.value
    assert isinstance(err, FloatingPointError)
    assert 5 < err.step < 400 and f"step {err.step}" in str(err)
    assert _finite(err.params) and int(err.state.step) == err.step
    assert len(err.losses) == err.step and np.all(np.isfinite(err.losses))
    assert err.losses[-1] < -100.0  # it really was running away, not failing at once
    # the state on disk is the one attached to the error
    on_disk = jg.load_checkpoint(path, {"state": err.state, "losses": err.losses, "num_skipped": 0})["state"]
    for a, b in zip(jax.tree.leaves(on_disk), jax.tree.leaves(err.state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # skipping: every later step is skipped, params never become non-finite
    result = jg.fit(overflow, guide, optimizer, KEY, 400, progress_bar=False, on_nonfinite="skip")
    assert result.num_skipped > 0 and _finite(result.params)


def test_loss_that_overflows_leaves_a_finite_optimizer_state():
    with pytest.raises(jg.NonFiniteLossError) as info:
        jg.fit(overflow, jg.AutoNormal(overflow), optax.adam(2.0), KEY, 400, progress_bar=False)
    assert _finite(info.value.state)


# ================================================================================================
# Faults and determinism, in fresh processes
# ================================================================================================
ENV = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "JAX_PLATFORMS": "cpu"}
TIMEOUT = 300


def _launch(out: Path, *flags: str, env=None, stdout=None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(out), *flags],
        env=env or ENV,
        cwd=str(WORKER.parents[2]),
        stdout=stdout or subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait(proc: subprocess.Popen, what: str) -> str:
    out, _ = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, f"{what} failed:\n{out}"
    return out


def _wait_for_line(proc: subprocess.Popen, marker: str) -> list[str]:
    """Read ``proc``'s output until a line starts with ``marker`` (kill it after TIMEOUT)."""
    lines, watchdog = [], threading.Timer(TIMEOUT, proc.kill)
    watchdog.start()
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith(marker):
                return lines
    finally:
        watchdog.cancel()
    raise AssertionError(f"never saw {marker!r}:\n{''.join(lines)}")


def _load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Four fresh processes at once: two identical runs (a, b), one in float64, and one
    killed with SIGKILL half-way through its 3rd (asynchronous) checkpoint save (step 150), which
    is then re-run with the same command line to the end."""
    d = tmp_path_factory.mktemp("runs")
    killed_dir = d / "killed"
    killed_dir.mkdir()
    ckpt = killed_dir / "run.ckpt"
    procs = {
        "killed": _launch(
            d / "killed.npz", "--checkpoint", str(ckpt), env={**ENV, "JAXGUIDES_TEST_BLOCK_AT_SAVE": "3"}
        ),
        "a": _launch(d / "a.npz", "--checkpoint", str(d / "a.ckpt")),
        "b": _launch(d / "b.npz", "--checkpoint", str(d / "b.ckpt")),
        "x64": _launch(d / "x64.npz", "--x64"),
    }
    try:
        _wait_for_line(procs["killed"], "MIDWRITE")
        os.kill(procs["killed"].pid, signal.SIGKILL)
        procs["killed"].wait(timeout=TIMEOUT)
        after_kill = sorted(os.listdir(ckpt))
        shutil.copytree(ckpt, d / "after_kill")
        resumed = _launch(d / "killed.npz", "--checkpoint", str(ckpt))
        outputs = {name: _wait(p, name) for name, p in procs.items() if name != "killed"}
        outputs["resumed"] = _wait(resumed, "the re-run of the killed command")
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
    return {
        "dir": d,
        "ckpt": ckpt,
        "killed_returncode": procs["killed"].returncode,
        "after_kill": after_kill,
        "a": _load(d / "a.npz"),
        "b": _load(d / "b.npz"),
        "x64": _load(d / "x64.npz"),
        "resumed": _load(d / "killed.npz"),
        "outputs": outputs,
    }


def _assert_bit_equal(x: dict[str, np.ndarray], y: dict[str, np.ndarray]) -> None:
    assert sorted(x) == sorted(y)
    for k, value in x.items():
        assert value.dtype == y[k].dtype and value.shape == y[k].shape, k
        assert value.tobytes() == y[k].tobytes(), f"{k} differs"


def test_same_key_gives_byte_identical_runs_in_fresh_processes(runs):
    a, b = runs["a"], runs["b"]
    assert {k.split(":")[0] for k in a} == {"loss", "param", "sample", "median", "numpyro_median"}
    _assert_bit_equal(a, b)
    assert a["loss"].shape == (_fit_worker.STEPS,) and np.all(np.isfinite(a["loss"]))
    assert np.mean(a["loss"][-50:]) < np.mean(a["loss"][:50])  # it fitted something
    assert a["sample:z"].shape == (5, _fit_worker.N)
    assert len({a["sample:mu"][i].tobytes() for i in range(5)}) == 5  # real draws, not a constant
    for name in ("mu", "sigma", "p", "z"):  # and NumPyro reads the exported params alike
        np.testing.assert_allclose(a[f"median:{name}"], a[f"numpyro_median:{name}"], rtol=1e-6, atol=1e-7)


def test_sigkill_mid_write_keeps_the_previous_checkpoint(runs):
    assert runs["killed_returncode"] == -signal.SIGKILL
    after = runs["after_kill"]
    # the kill hit the step-150 save in its temporary directory, not committed ...
    temps = [n for n in after if not n.isdigit()]
    assert sorted(int(n) for n in after if n.isdigit()) == [50, 100], after  # keep-last-2
    assert len(temps) == 1 and temps[0].startswith("150.orbax-checkpoint-tmp"), after
    tmp = runs["dir"] / "after_kill" / temps[0]
    assert not (tmp / "meta" / "metadata").exists() and not (tmp / "arrays").exists()  # its items uncommitted too
    # ... while the newest committed checkpoint is the complete step-100 one
    payload = jg.load_checkpoint(runs["dir"] / "after_kill")
    assert int(payload["state/step"]) == 2 * _fit_worker.EVERY
    # and it is the uninterrupted run's first 100 steps, bit for bit
    np.testing.assert_array_equal(payload["losses"], runs["a"]["loss"][:100])


def test_killed_fit_resumes_bit_for_bit(runs):
    """Re-running the killed command resumes from step 100 and ends with params,
    losses, draws and medians byte-identical to the uninterrupted run."""
    _assert_bit_equal(runs["resumed"], runs["a"])
    # it resumed from step 100: two checkpoint writes (steps 50 and 100) fewer than
    # the run from scratch
    writes = {k: int(re.search(r"CHECKPOINT_WRITES (\d+)", runs["outputs"][k]).group(1)) for k in ("a", "resumed")}
    assert writes["a"] >= _fit_worker.STEPS // _fit_worker.EVERY
    assert writes["resumed"] == writes["a"] - 2, writes
    final = jg.load_checkpoint(runs["ckpt"])
    assert int(final["state/step"]) == _fit_worker.STEPS
    np.testing.assert_array_equal(final["losses"], runs["a"]["loss"])
    assert sorted(os.listdir(runs["ckpt"])) == ["250", "300"]  # the killed save's leftovers cleaned up


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_checkpoint_is_refused_and_left_as_it_was(runs, damage, tmp_path):
    path = tmp_path / "damaged.ckpt"
    shutil.copytree(runs["dir"] / "after_kill", path)
    data = path / "100" / "arrays" / "d"
    target = data / sorted(os.listdir(data))[0]
    raw = bytearray(target.read_bytes())
    if damage == "flip":
        raw[len(raw) // 2] ^= 0x10
    else:
        raw = raw[: len(raw) * 2 // 3]
    target.write_bytes(bytes(raw))
    before = {p: p.read_bytes() for p in path.rglob("*") if p.is_file()}
    with pytest.raises(jg.CheckpointError) as info:
        jg.load_checkpoint(path)
    assert str(path / "100") in str(info.value) and info.value.path == str(path / "100")
    assert "checksum" in str(info.value) or "cannot be read" in str(info.value)
    assert {p: p.read_bytes() for p in path.rglob("*") if p.is_file()} == before


def test_float64_end_to_end(runs):
    x64 = runs["x64"]
    for key, value in x64.items():
        if key != "loss":
            assert value.dtype == np.float64, key
    assert np.all(np.isfinite(x64["loss"])) and np.mean(x64["loss"][-50:]) < np.mean(x64["loss"][:50])
    for name in ("mu", "sigma", "p", "z"):
        np.testing.assert_allclose(x64[f"median:{name}"], x64[f"numpyro_median:{name}"], rtol=1e-12, atol=1e-14)
    # the same fit, to float32 precision and Monte Carlo noise
    for name in ("mu", "sigma", "p"):
        np.testing.assert_allclose(x64[f"median:{name}"], runs["a"][f"median:{name}"], atol=0.2)
