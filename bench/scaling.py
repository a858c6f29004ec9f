"""Step time of a sharded fit on 1, 2, 4, 8 simulated CPU devices.

    python -m bench.scaling                  # or: python bench/scaling.py
    python -m bench.scaling --rows 65536 --steps 200 --devices 1 2 4 8

A sanity check of the sharded path, not a speed claim: simulated CPU devices
(``--xla_force_host_platform_device_count``) share the machine's cores, so
more devices need not be faster; what the table shows is that the step runs,
compiles once, and costs about the same at every device count. Each device
count runs in a fresh process (XLA fixes the device count when JAX starts).
With ``--default-backend`` a last row times the same models on one device of
the default backend (a GPU where there is one).

Three models: logistic regression (global latents only: the data is split, the
gradient all-reduced), a hierarchical model with one local latent per row
in the sharded plate (its params and Adam moments are split too), and the
logistic regression with its data plate subsampled (batch 1,024: each device
takes its share from its own rows, one epoch permutation per device).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

MODELS = ("logreg", "hier", "logreg_sub")
SUBSAMPLE = 1024  # logreg_sub's batch (a multiple of 8)


def _child(devices: int, rows: int, steps: int, backend: str) -> dict[str, float]:
    """Runs in a fresh process: time ``steps`` compiled steps of each model."""
    import jax
    import numpy as np
    import numpyro
    import numpyro.distributions as dist
    import optax
    from jax.sharding import Mesh

    import jaxguides as jg

    def logreg(x, y):
        with numpyro.plate("features", x.shape[1]):
            beta = numpyro.sample("beta", dist.Normal(0.0, 1.0))
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("y", dist.Bernoulli(logits=x @ beta), obs=y)

    def logreg_sub(x, y):  # the data plate subsampled: each device draws its share from its own rows
        with numpyro.plate("features", x.shape[1]):
            beta = numpyro.sample("beta", dist.Normal(0.0, 1.0))
        with numpyro.plate("data", x.shape[0], subsample_size=SUBSAMPLE) as idx:
            numpyro.sample("y", dist.Bernoulli(logits=x[idx] @ beta), obs=y[idx])

    def hier(x, y):
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        sigma = numpyro.sample("sigma", dist.LogNormal(0.0, 1.0))
        with numpyro.plate("data", x.shape[0]):
            z = numpyro.sample("z", dist.Normal(mu, 1.0))
            numpyro.sample("y", dist.Normal(z + x[:, 0], sigma), obs=y)

    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 16)).astype(np.float32)
    data = {
        "logreg": (x, (rng.uniform(size=rows) < 0.5).astype(np.float32)),
        "hier": (x, (x[:, 0] + rng.normal(size=rows)).astype(np.float32)),
    }
    data["logreg_sub"] = data["logreg"]
    models = {"logreg": logreg, "hier": hier, "logreg_sub": logreg_sub}
    kw: dict = {}
    if backend == "cpu":
        kw = dict(mesh=Mesh(np.array(jax.devices()[:devices]), ("batch",)), shard_plates={"data": "batch"})
    out = {}
    for name in MODELS:
        model = models[name]
        guide = jg.AutoNormal(model)

        def run() -> None:
            result = jg.fit(
                model,
                guide,
                optax.adam(1e-2),
                jax.random.PRNGKey(0),
                steps,
                *data[name],
                progress_bar=False,
                chunk_size=steps,
                **kw,
            )
            jax.block_until_ready(result.state)
            assert np.isfinite(result.losses).all()

        run()  # compile
        t = time.perf_counter()
        run()
        out[name] = (time.perf_counter() - t) / steps
    return out


def _spawn(devices: int, rows: int, steps: int, backend: str) -> dict[str, float]:
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    if backend == "cpu":
        env |= {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    else:
        env.pop("XLA_FLAGS", None)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [sys.executable, "-m", "bench.scaling", "--child", json.dumps([devices, rows, steps, backend])]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{devices} device(s) on {backend} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=16384, help="rows in the sharded plate (a multiple of 8)")
    parser.add_argument("--steps", type=int, default=100, help="timed steps per model")
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--default-backend", action="store_true", help="add a row: one device of the default backend")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(*json.loads(args.child))))
        return
    print(f"AutoNormal + adam, {args.rows} rows, ms per step (mean of {args.steps} compiled steps)")
    print(f"{'devices':>16} | " + " | ".join(f"{m:>8}" for m in MODELS))
    runs = [(n, "cpu") for n in args.devices] + ([(1, "default")] if args.default_backend else [])
    for n, backend in runs:
        times = _spawn(n, args.rows, args.steps, backend)
        label = f"{n} cpu" if backend == "cpu" else "1 default"
        print(f"{label:>16} | " + " | ".join(f"{1e3 * times[m]:8.3f}" for m in MODELS), flush=True)


if __name__ == "__main__":
    if __package__ in (None, ""):  # python bench/scaling.py
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
