"""model_config: the Python values that tell apart model callables of one name; carried: the walk under it."""

from __future__ import annotations

import dataclasses
import functools
import os
import pickle
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro import handlers

import jaxguides as jg
from jaxguides.model.identity import carried, config_difference, innermost, model_config, model_name
from jaxguides.optim.canonical import canonical


def plain():
    numpyro.sample("x", dist.Normal(0.0, 1.0))


def factory(name, k, extra=None):
    def model():
        numpyro.sample(name, dist.Normal(0.0, 1.0).expand([k]).to_event(1))
        return extra

    return model


def sized(k, scale=1.0):
    numpyro.sample("a", dist.Normal(0.0, scale).expand([k]).to_event(1))


@dataclasses.dataclass(frozen=True)
class FrozenModel:
    k: int
    data: jnp.ndarray

    def __call__(self):
        sized(self.k)


def test_plain_function_carries_nothing():
    assert model_config(plain) == ()
    assert model_name(plain) == f"{__name__}.plain"


@pytest.mark.parametrize(
    "model, expected",
    [
        (factory("a", 2), (("extra", "None"), ("k", "2"), ("name", "'a'"))),
        (factory("a", 2, extra=(jnp.ones(3), 3)), (("extra", "(_, 3)"), ("k", "2"), ("name", "'a'"))),
        (factory("a", 2, extra=jnp.ones(3)), (("k", "2"), ("name", "'a'"))),  # arrays are data
        (factory("a", 2, extra=[1, 2]), (("k", "2"), ("name", "'a'"))),  # mutable: left out
        (
            factory("a", 2, extra=frozenset({"u", "v"})),
            (("extra", "frozenset({'u', 'v'})"), ("k", "2"), ("name", "'a'")),
        ),
        (functools.partial(sized, 3, scale=2.0), (("partial args[0]", "3"), ("partial scale", "2.0"))),
        (FrozenModel(3, jnp.ones(2)), (("k", "3"),)),
        (
            handlers.scale(factory("a", 2), 2.0),
            (("fn", f"{__name__}.factory.<locals>.model(extra=None, k=2, name='a')"), ("scale", "2.0")),
        ),
    ],
)
def test_config(model, expected):
    assert model_config(model) == expected


def test_functions_in_the_closure_are_named_with_their_own_config():
    config = dict(model_config(factory("a", 2, extra=factory("b", 3))))
    assert config["extra"] == f"{__name__}.factory.<locals>.model(extra=None, k=3, name='b')"
    assert dict(model_config(factory("a", 2, extra=jnp.exp)))["extra"] == "jax.numpy.exp"


def test_a_cell_the_model_rebinds_is_left_out():
    def counting(k):
        calls = 0

        def model():
            nonlocal calls
            calls += 1
            sized(k)

        return model

    model = counting(2)
    before = model_config(model)
    handlers.seed(model, 0)()
    assert model_config(model) == before == (("k", "2"),)


def test_long_values_are_shortened_to_a_digest():
    config = dict(model_config(factory("a" * 500, 2)))
    assert len(config["name"]) < 120 and "sha256" in config["name"]
    assert config != dict(model_config(factory("a" * 499 + "b", 2)))


def test_the_same_in_every_process():
    """Strings (frozenset order) must not depend on the hash seed: params are pickled."""
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_identity as t; "
        "print(t.model_config(t.factory('a', 2, extra=frozenset(['p', 'q', 'r', 's']))))"
    )
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed, "JAX_PLATFORMS": "cpu"},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2")
    }
    assert outs == {repr(model_config(factory("a", 2, extra=frozenset(["p", "q", "r", "s"])))) + "\n"}


def test_config_difference_names_each_value():
    a, b = model_config(factory("a", 2)), model_config(factory("a", 3, extra=1))
    assert config_difference(a[1:], a) == "extra: absent in the params' model, None in this guide's"
    assert config_difference(a, b) == (
        "extra: None in the params' model, 1 in this guide's; k: 2 in the params' model, 3 in this guide's"
    )


class Scaler:
    def __init__(self, k):
        self.k = k

    def __call__(self, x):
        return self.k * x


def test_carried_a_closure_by_cell_name_and_its_defaults_on_request():
    def make(k, name):
        def f(x, scale=2.0, *, shift=1.0):
            return (name, k * scale * x + shift)

        return f

    f = make(3, "a")
    assert carried(f) == (("k", 3), ("name", "a"))
    assert carried(f, defaults=True) == (("k", 3), ("name", "a"), ("defaults[0]", 2.0), ("default shift", 1.0))
    assert carried(plain) == () and carried(jnp.exp) == () and carried(3) == ()


def test_carried_a_partial_what_its_function_carries_then_its_arguments():
    f = factory("a", 2)
    p = functools.partial(functools.partial(sized, 3), scale=2.0, b=1)  # nested partials are flattened
    assert carried(p) == (("partial args[0]", 3), ("partial b", 1), ("partial scale", 2.0))
    assert carried(functools.partial(f, 7)) == (("extra", None), ("k", 2), ("name", "a"), ("partial args[0]", 7))
    assert innermost(functools.partial(f, 7)) is f


def test_carried_a_method_its_function_then_self():
    scaler = Scaler(2)
    assert carried(scaler.__call__) == (("self", scaler),)
    assert innermost(functools.partial(scaler.__call__, 1)) is Scaler.__call__
    assert carried(FrozenModel(3, jnp.ones(2)).__call__)[0][0] == "self"


def test_carried_rebound_cells_only_on_request():
    def counting(k):
        calls = 0

        def model():
            nonlocal calls
            calls += 1
            return k

        return model

    model = counting(2)
    assert carried(model) == (("calls", 0), ("k", 2))
    assert carried(model, rebound=False) == (("k", 2),)


def test_carried_leaves_out_an_empty_cell():
    def outer():
        def f():
            return later

        first = carried(f)
        later = 1
        return f, first

    f, before = outer()
    assert before == () and carried(f) == (("later", 1),)


def test_carried_a_recursive_closure_holds_itself():
    def outer(k):
        def f(n):
            return k if n == 0 else f(n - 1)

        return f

    f = outer(2)
    assert carried(f) == (("f", f), ("k", 2))
    # identity describes it a few levels deep; canonical's fingerprint meets f again and names it by identity
    assert dict(model_config(f))["k"] == "2"
    jg.clear_caches()
    optimizer = optax.GradientTransformation(init=f, update=f)
    assert canonical(optimizer) is optimizer and canonical(optimizer) is optimizer
    other = outer(2)
    assert canonical(optax.GradientTransformation(init=other, update=other)) is not optimizer


def test_canonical_fingerprints_what_carried_gives():
    def make(k, scale=1.0):
        def update(x):
            return k * scale * x

        return update

    jg.clear_caches()

    def gt(fn):
        return optax.GradientTransformation(init=fn, update=fn)

    base = canonical(gt(make(2)))
    assert canonical(gt(make(2))) is base  # the same code carrying equal values
    assert canonical(gt(make(3))) is not base  # another cell value
    assert canonical(gt(functools.partial(make(2), 1.0))) is not base  # a partial of it
    assert canonical(gt(functools.partial(sized, 3))) is not canonical(gt(functools.partial(plain, 3)))

    def with_default(x, scale=1.0):
        return scale * x

    def with_other_default(x, scale=2.0):
        return scale * x

    with_other_default.__code__ = with_default.__code__  # the same code, only the default differs
    assert canonical(gt(with_default)) is not canonical(gt(with_other_default))


# ---- params of a model of the same name, through the loss and the guide ----------------------
KEY = jax.random.PRNGKey(0)


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
