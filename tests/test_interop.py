"""NumPyro's param names (jaxguides/interop/numpyro_params.py), against NumPyro itself.

``to_numpyro_params`` must give the keys and shapes NumPyro's own
``AutoNormal`` / ``AutoDelta`` / ``AutoGuideList`` hold after ``svi.init``,
``from_numpyro_params`` must take them back, NumPyro's ``Trace_ELBO`` must
give our loss at the same values, and each params type maps through its own
registered implementation (an unregistered one is refused).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro import handlers
from numpyro.infer import SVI, Trace_ELBO, autoguide, init_to_feasible

import jaxguides as jg
from jaxguides.interop.numpyro_params import fields_from_numpyro, numpyro_values
from jaxguides.model.params import ModelParamValues

KEY = jax.random.PRNGKey(0)
Y = jnp.array([0.5, 1.5, 2.5])


def model(y):
    """A model param site and constrained latents: positive (HalfNormal, LogNormal) and a simplex."""
    noise = numpyro.param("noise", 0.7, constraint=dist.constraints.positive)
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    tau = numpyro.sample("tau", dist.HalfNormal(1.0))
    w = numpyro.sample("w", dist.Dirichlet(jnp.ones(3)))  # simplex: unconstrained shape (2,)
    with numpyro.plate("groups", 3):
        theta = numpyro.sample("theta", dist.LogNormal(mu, tau))
        numpyro.sample("y", dist.Normal(theta * w, noise), obs=y)


def positive_model():
    numpyro.sample("sigma", dist.Gamma(2.0, 1.0))
    numpyro.sample("v", dist.Normal(jnp.zeros(3), 1.0).to_event(1))


def ours_and_theirs(kind):
    """(our guide, NumPyro's guide) of ``kind`` for ``model``."""
    if kind == "AutoGuideList":
        theirs = autoguide.AutoGuideList(model)
        theirs.append(autoguide.AutoDelta(handlers.block(model, expose=["tau"])))
        theirs.append(autoguide.AutoNormal(handlers.block(model, hide=["tau"])))
        ours = jg.AutoGuideList(
            [jg.AutoDelta(handlers.block(model, expose=["tau"])), jg.AutoNormal(handlers.block(model, hide=["tau"]))]
        )
        return ours, theirs
    if kind == "AutoDelta":
        return delta(), autoguide.AutoDelta(model, init_loc_fn=init_to_feasible)
    return jg.AutoNormal(model), autoguide.AutoNormal(model)


def delta():
    # init_to_feasible: the default median draws from the Dirichlet, which NumPyro does not rank-promotion clean
    return jg.AutoDelta(model, init_loc_fn=jg.init_to_feasible)


def numpyro_params(guide, steps=0):
    """NumPyro's ``svi.get_params`` after ``svi.init`` (and ``steps`` updates) on ``model``."""
    with jax.numpy_rank_promotion("allow"):  # NumPyro is not rank-promotion clean
        svi = SVI(model, guide, numpyro.optim.Adam(0.05), Trace_ELBO())
        state = svi.init(KEY, Y)
        for _ in range(steps):
            state, _ = svi.update(state, Y)
        return svi.get_params(state)


def shapes(params):
    return {k: jax.tree.map(jnp.shape, v) for k, v in params.items()}


def assert_close(a, b, rtol=1e-6, atol=1e-6):
    assert list(a) == list(b) or set(a) == set(b)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=rtol, atol=atol, err_msg=k)


KINDS = ["AutoNormal", "AutoDelta", "AutoGuideList"]


# ---- the same names and shapes as NumPyro's ---------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_exported_names_and_shapes_are_numpyros(kind):
    ours, theirs = ours_and_theirs(kind)
    exported = jg.to_numpyro_params(ours, ours.init(KEY, Y))
    assert shapes(exported) == shapes(numpyro_params(theirs))
    assert "noise" in exported and float(exported["noise"]) == pytest.approx(0.7)  # constrained, by site name


@pytest.mark.parametrize("kind", KINDS)
def test_numpyros_params_round_trip(kind):
    ours, theirs = ours_and_theirs(kind)
    np_params = numpyro_params(theirs, steps=5)  # away from init, as NumPyro trained them
    params = jg.from_numpyro_params(ours, np_params, jax.random.PRNGKey(3), Y)
    assert type(params) is type(ours.init(KEY, Y))
    assert_close(jg.to_numpyro_params(ours, params), np_params, rtol=1e-5)
    # and ours -> NumPyro -> ours gives the same params
    back = jg.from_numpyro_params(ours, jg.to_numpyro_params(ours, params), jax.random.PRNGKey(4), Y)
    assert jax.tree.structure(back) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_delta_points_are_constrained_values_and_normal_locs_unconstrained():
    delta_guide, normal = delta(), jg.AutoNormal(model)
    point = jg.to_numpyro_params(delta_guide, delta_guide.init(KEY, Y))
    assert point["tau_auto_loc"] > 0 and np.all(point["theta_auto_loc"] > 0)
    np.testing.assert_allclose(point["w_auto_loc"].sum(), 1.0, rtol=1e-6)
    normal_params = normal.init(KEY, Y)
    exported = jg.to_numpyro_params(normal, normal_params)
    assert exported["w_auto_loc"].shape == (2,) and exported["w_auto_scale"].shape == (2,)
    assert_close({"w": exported["w_auto_scale"]}, {"w": normal_params.scale["w"]})


# ---- the same loss as NumPyro's at the same values --------------------------------------------
def test_delta_loss_equals_numpyros_trace_elbo():
    ours, theirs = ours_and_theirs("AutoDelta")
    np_params = numpyro_params(theirs, steps=5)
    params = jg.from_numpyro_params(ours, np_params, jax.random.PRNGKey(1), Y)
    key = jax.random.PRNGKey(7)
    with jax.numpy_rank_promotion("allow"):
        expected = Trace_ELBO().loss(key, np_params, model, theirs, Y)
    np.testing.assert_allclose(jg.elbo_loss(model, ours)(params, key, Y), expected, rtol=1e-6)


@pytest.mark.parametrize("kind", ["AutoNormal", "AutoGuideList"])
def test_normal_loss_matches_numpyros_trace_elbo_over_many_particles(kind):
    ours, theirs = ours_and_theirs(kind)
    np_params = numpyro_params(theirs, steps=5)
    params = jg.from_numpyro_params(ours, np_params, jax.random.PRNGKey(1), Y)
    n = 4000

    def per_particle(loss_of_key):
        return np.asarray(jax.vmap(loss_of_key)(jax.random.split(jax.random.PRNGKey(11), n)))

    ours_losses = per_particle(lambda k: jg.elbo_loss(model, ours)(params, k, Y))
    with jax.numpy_rank_promotion("allow"):
        theirs_losses = per_particle(lambda k: Trace_ELBO().loss(k, np_params, model, theirs, Y))
    se = np.sqrt((ours_losses.var() + theirs_losses.var()) / n)
    assert abs(ours_losses.mean() - theirs_losses.mean()) < 5 * se, (ours_losses.mean(), theirs_losses.mean(), se)


# ---- refusals, naming the site ------------------------------------------------------------------
def test_numpyro_params_missing_or_of_the_wrong_shape():
    guide = jg.AutoNormal(positive_model)
    np_params = jg.to_numpyro_params(guide, guide.init(KEY))
    missing = {k: v for k, v in np_params.items() if not k.startswith("v_")}
    with pytest.raises(jg.SiteError, match="'v'"):
        jg.from_numpyro_params(guide, missing, KEY)
    with pytest.raises(jg.SiteError, match="v_auto_loc"):
        jg.from_numpyro_params(guide, {**np_params, "v_auto_loc": jnp.zeros(2)}, KEY)


@pytest.mark.parametrize("kind", KINDS)
def test_a_missing_or_misshapen_numpyro_param_names_its_site(kind):
    ours, _ = ours_and_theirs(kind)
    exported = jg.to_numpyro_params(ours, ours.init(KEY, Y))
    without = {k: v for k, v in exported.items() if k != "w_auto_loc"}
    with pytest.raises(jg.SiteError, match="'w_auto_loc'.*'w'"):
        jg.from_numpyro_params(ours, without, KEY, Y)
    # AutoNormal's loc is unconstrained (2,), AutoDelta's point constrained (3,): the other is refused
    wrong = (3,) if exported["w_auto_loc"].shape == (2,) else (2,)
    with pytest.raises(jg.SiteError, match=rf"'w_auto_loc' has shape \({wrong[0]},\), but site 'w' needs"):
        jg.from_numpyro_params(ours, {**exported, "w_auto_loc": jnp.ones(wrong) / 3}, KEY, Y)
    with pytest.raises(jg.SiteError, match="'noise'"):
        jg.from_numpyro_params(ours, {k: v for k, v in exported.items() if k != "noise"}, KEY, Y)
    with pytest.raises(jg.SiteError, match="'noise'.*structure"):
        jg.from_numpyro_params(ours, {**exported, "noise": jnp.ones(2)}, KEY, Y)


# ---- one implementation per params type, registered ---------------------------------------------
@dataclasses.dataclass(frozen=True)
class HeldParams(ModelParamValues):
    """A new guide's params: an AutoDelta's, held one level down."""

    inner: Any
    sites: Any
    support: dict[str, Any]
    model_params: dict[str, Any]


class WrappedParams(HeldParams):
    """Registered below."""


class UnregisteredParams(HeldParams):
    """Not registered (nor its bases)."""


for cls in (WrappedParams, UnregisteredParams):
    jax.tree_util.register_dataclass(cls, data_fields=["inner", "support", "model_params"], meta_fields=["sites"])


@dataclasses.dataclass(frozen=True)
class Wrapped:
    """A new guide (duck-typed): an AutoDelta under another params type."""

    inner: jg.AutoDelta
    params_type: type = WrappedParams

    def init(self, rng_key, *args, **kwargs):
        p = self.inner.init(rng_key, *args, **kwargs)
        return self.params_type(p, p.sites, p.support, p.model_params)

    def check_params(self, params):
        return self.inner.check_params(params.inner)


@numpyro_values.register
def _wrapped_values(params: WrappedParams, guide: Wrapped, sites: Any) -> dict[str, jax.Array]:
    return numpyro_values(params.inner, guide.inner, sites)


@fields_from_numpyro.register
def _wrapped_fields(params: WrappedParams, guide: Wrapped, numpyro_params: Any) -> dict[str, Any]:
    return {
        "inner": dataclasses.replace(params.inner, **fields_from_numpyro(params.inner, guide.inner, numpyro_params))
    }


def test_a_new_params_type_registers_its_names():
    guide, plain = Wrapped(delta()), delta()
    exported = jg.to_numpyro_params(guide, guide.init(KEY, Y))
    assert_close(exported, jg.to_numpyro_params(plain, plain.init(KEY, Y)))
    back = jg.from_numpyro_params(guide, {**exported, "mu_auto_loc": jnp.array(0.25)}, KEY, Y)
    assert isinstance(back, WrappedParams)
    assert float(jg.to_numpyro_params(guide, back)["mu_auto_loc"]) == 0.25


def test_a_subclass_of_a_registered_params_type_maps_through_its_base():
    @dataclasses.dataclass(frozen=True)
    class Sub(jg.AutoDeltaParams):
        pass

    guide = delta()
    params = guide.init(KEY, Y)
    sub = Sub(params.loc, params.support, params.sites, params.model_params, params.model_state)
    assert_close(numpyro_values(sub, guide, params.sites), numpyro_values(params, guide, params.sites))


def test_an_unregistered_params_type_is_refused_naming_it():
    guide = Wrapped(delta(), params_type=UnregisteredParams)
    params = guide.init(KEY, Y)
    message = r"UnregisteredParams .*only AutoNormal, AutoDelta and AutoGuideList params map to NumPyro names"
    with pytest.raises(TypeError, match=message):
        jg.to_numpyro_params(guide, params)
    with pytest.raises(TypeError, match=message):
        jg.from_numpyro_params(guide, {"noise": 0.7}, KEY, Y)
