"""A fit run in a fresh process for tests/test_interrupt.py, to be sent SIGINT.

    python tests/helpers/interrupt_worker.py OUT.npz [--checkpoint PATH] [--many] [--steps N] [--wait S]

fits :func:`model` (AutoNormal, adam, chunks of 10 steps) and prints markers on
stdout, so that the test knows when to send SIGINT:

- ``IMPORTED`` once jax and jaxguides are imported, just before ``fit`` is called
  (with ``--wait S``, it sleeps S seconds first: a SIGINT then comes before fit);
- ``INSTALLED`` once ``fit`` has put in its SIGINT handler (it is tracing);
- ``COMPILING`` once the chunk is traced and XLA compiles it on the other thread;
- ``CHUNK k`` after the k-th chunk (each chunk then sleeps 10 ms, so a run of
  1,500 steps lasts a few seconds).

It ends with ``INTERRUPTED step=s state_step=t losses=n`` (and saves the params
and losses to OUT.npz) on :class:`jg.FitInterrupted`, ``DONE`` (and saves) when
the fit ran to the end, or a traceback for anything else. The model lives in
this module, imported as ``helpers.interrupt_worker`` (not ``__main__``), so
that a checkpoint written here resumes in the test's own process.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

N = 32
CHUNK = 10
SITES = 4  # latent sites: compiling the chunk takes a fraction of a second


def model(y):
    import numpyro
    import numpyro.distributions as dist

    mu = numpyro.sample("mu", dist.Normal(0.0, 2.0))
    total = mu
    for i in range(SITES):
        total = total + 0.1 * numpyro.sample(f"z{i}", dist.LogNormal(0.1 * i, 1.0))
    with numpyro.plate("data", y.shape[0]):
        numpyro.sample("y", dist.Normal(total, 1.0), obs=y)


def data():
    import numpy as np

    return np.linspace(-1.0, 3.0, N, dtype=np.float32)


def fit_args(steps: int):
    import jax
    import optax

    return dict(optimizer=optax.adam(0.02), rng_key=jax.random.PRNGKey(3), num_steps=steps)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--checkpoint")
    parser.add_argument("--many", action="store_true")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--wait", type=float, default=0.0)
    opts = parser.parse_args(argv)

    import dataclasses

    import jax
    import numpy as np

    import jaxguides as jg
    from jaxguides.loop import host_loop
    from jaxguides.loop import interrupt as _interrupt

    real_install, real, chunks = _interrupt.Interrupts.install, host_loop.IO, []

    def install(self):
        real_install(self)
        print("INSTALLED", flush=True)

    def compile_ahead(*args, **kwargs):
        future = real.compile_ahead(*args, **kwargs)
        print("COMPILING", flush=True)
        return future

    def read(report):
        out = real.read_report(report)
        chunks.append(1)
        print(f"CHUNK {len(chunks)}", flush=True)
        time.sleep(0.01)
        return out

    _interrupt.Interrupts.install = install
    host_loop.IO = dataclasses.replace(real, compile_ahead=compile_ahead, read_report=read)  # the loop's seam

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: helpers.*
    from helpers import interrupt_worker as me  # the model under its module name, as the test imports it

    kw = fit_args(opts.steps)
    guide = jg.AutoNormal(me.model)
    print("IMPORTED", flush=True)
    time.sleep(opts.wait)
    try:
        if opts.many:
            keys = jax.random.split(kw["rng_key"], 3)
            result = jg.fit_many(me.model, guide, kw["optimizer"], keys, kw["num_steps"], me.data(),
                                 progress_bar=False, chunk_size=CHUNK)  # fmt: skip
        else:
            result = jg.fit(me.model, guide, kw["optimizer"], kw["rng_key"], kw["num_steps"], me.data(),
                            progress_bar=False, chunk_size=CHUNK, checkpoint=opts.checkpoint)  # fmt: skip
    except jg.FitInterrupted as err:
        state_step = int(np.max(np.asarray(err.state.step)))
        print(f"INTERRUPTED step={err.step} state_step={state_step} losses={np.shape(err.losses)[-1]}", flush=True)
        params, losses = err.params, err.losses
    else:
        print("DONE", flush=True)
        params, losses = result.params, result.losses
    out = {"losses": np.asarray(losses)}
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        out["param:" + jax.tree_util.keystr(path)] = np.asarray(leaf)
    np.savez(opts.out, **out)


if __name__ == "__main__":
    main(sys.argv[1:])
