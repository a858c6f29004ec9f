"""A fit run in a fresh process, for tests/test_fresh_processes.py.

    python tests/helpers/fit_worker.py OUT.npz [--checkpoint PATH] [--x64]

fits a small model with a subsampled plate (AutoNormal, adam, checkpoints
every 50 of 300 steps) and saves to OUT.npz every array a user would keep:
the params leaves (``param:<path>``), the per-step losses, a draw of
``guide.sample`` and the median, and NumPyro's median of the exported params
(``numpyro_median:<site>``).

Fault injection (the command line stays the same, so re-running it is what a
user would do): with ``JAXGUIDES_TEST_BLOCK_AT_SAVE=k`` in the environment the
k-th checkpoint save stops half-way in Orbax's background thread (its arrays
written into its temporary directory, its metadata not), prints ``MIDWRITE``
and waits to be killed. Every run prints
``CHECKPOINT_WRITES n``, the number of checkpoints it wrote.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

STEPS, EVERY, N, SUB = 300, 50, 20, 8


def model(y):
    import numpyro
    import numpyro.distributions as dist

    mu = numpyro.sample("mu", dist.Normal(0.0, 2.0))
    sigma = numpyro.sample("sigma", dist.LogNormal(0.0, 0.5))
    p = numpyro.sample("p", dist.Beta(2.0, 2.0))
    with numpyro.plate("data", y.shape[0], subsample_size=SUB) as idx:
        z = numpyro.sample("z", dist.Normal(mu, 1.0))
        numpyro.sample("y", dist.Normal(z + p, sigma), obs=y[idx])


def _block_at_save(k: int) -> None:
    """Make the k-th checkpoint save stop in Orbax's background thread, its arrays written
    but not its metadata, before its commit; print ``MIDWRITE`` and wait to be killed
    (the fit's own thread trains on until the next save waits for this one)."""
    import threading

    from orbax.checkpoint import handlers

    real, calls = handlers.JsonCheckpointHandler._save_fn, []

    async def save(self, x, directory):
        calls.append(1)
        if len(calls) == k:
            print("MIDWRITE", flush=True)
            threading.Event().wait()
        await real(self, x, directory)

    handlers.JsonCheckpointHandler._save_fn = save


def _count_checkpoint_writes() -> list[int]:
    """Record each checkpoint save (its step): a run resumed from step 100 writes 4
    checkpoints, one from scratch 6."""
    from jaxguides.loop import checkpoint as _checkpoint

    real, writes = _checkpoint.Checkpointer.save, []

    def save(self, step, *args):
        writes.append(step)
        real(self, step, *args)

    _checkpoint.Checkpointer.save = save
    return writes


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--checkpoint")
    parser.add_argument("--x64", action="store_true")
    opts = parser.parse_args(argv)

    import jax

    if opts.x64:
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np
    import optax
    from numpyro import handlers
    from numpyro.infer import autoguide

    import jaxguides as jg

    if os.environ.get("JAXGUIDES_TEST_BLOCK_AT_SAVE"):
        _block_at_save(int(os.environ["JAXGUIDES_TEST_BLOCK_AT_SAVE"]))
    writes = _count_checkpoint_writes()

    y = jnp.asarray(np.linspace(-1.0, 3.0, N) + np.sin(np.arange(N)))
    guide = jg.AutoNormal(model)
    result = jg.fit(
        model,
        guide,
        optax.adam(0.03),
        jax.random.PRNGKey(42),
        STEPS,
        y,
        progress_bar=False,
        checkpoint=opts.checkpoint,
        checkpoint_every=EVERY if opts.checkpoint else None,
    )
    params = result.params
    out = {"loss": result.losses}
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        out["param:" + jax.tree_util.keystr(path)] = np.asarray(leaf)
    for name, value in guide.sample(params, jax.random.PRNGKey(7), y, sample_shape=(5,)).items():
        out["sample:" + name] = np.asarray(value)
    for name, value in guide.median(params).items():
        out["median:" + name] = np.asarray(value)

    # NumPyro's AutoNormal on the exported params (the plate given all its rows)
    ref = autoguide.AutoNormal(model)
    with handlers.seed(rng_seed=0):
        ref(y)
    with warnings.catch_warnings(), handlers.substitute(data={"data": jnp.arange(N)}):
        warnings.simplefilter("ignore")
        for name, value in ref.median(jg.to_numpyro_params(guide, params)).items():
            out["numpyro_median:" + name] = np.asarray(value)
    np.savez(opts.out, **out)
    print(f"CHECKPOINT_WRITES {len(writes)}", flush=True)
    print("DONE", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
