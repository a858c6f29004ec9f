"""The main example: fit the two-parameter Normal model with AutoNormal and print the posterior.

Run with ``python examples/quickstart.py`` (see the README).
"""

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
import optax

import jaxguides as jg


def model(y=None):
    loc = numpyro.sample("loc", dist.Normal(0.0, 10.0))
    scale = numpyro.sample("scale", dist.LogNormal(0.0, 1.0))
    with numpyro.plate("data", 100):
        numpyro.sample("obs", dist.Normal(loc, scale), obs=y)


def main() -> None:
    y = 3.0 + 1.5 * jax.random.normal(jax.random.PRNGKey(0), (100,))
    guide = jg.AutoNormal(model)
    result = jg.fit(model, guide, optax.adam(0.02), jax.random.PRNGKey(1), 3000, y)
    median = guide.median(result.params)
    q = guide.quantiles(result.params, [0.05, 0.95])
    print(f"final loss {result.losses[-1]:.2f}")
    for name in ("loc", "scale"):
        print(
            f"{name:>6}: median {float(median[name]):.3f}  "
            f"90% interval [{float(q[name][0]):.3f}, {float(q[name][1]):.3f}]"
        )
    print(f"(data: mean {float(jnp.mean(y)):.3f}, sd {float(jnp.std(y)):.3f})")


if __name__ == "__main__":
    main()
