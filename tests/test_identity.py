"""model_config: the Python values that tell apart model callables of one name."""

from __future__ import annotations

import dataclasses
import functools
import os
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro import handlers

from jaxguides.model.identity import config_difference, model_config, model_name


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
