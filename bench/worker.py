"""One measurement in a fresh process: ``python -m bench.worker '<json spec>'``.

The spec names an implementation, a model, its size and guide, the steps per
timed run and the number of timed runs. The process builds the implementation
(timing the first finished step from nothing: trace, init, compile, one step),
then times ``windows`` steady-state runs, and prints one JSON line:
``{"first_step_s", "step_s": [...], "step_cpu_s": [...], "losses": [...],
"peak_rss_mb"}`` (wall and CPU seconds per step of each timed run).
A fresh process per measurement keeps compile caches from leaking between
implementations.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import json  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402


def main(spec: dict) -> dict:
    from bench import impls
    from bench.models import BENCHES

    bench = BENCHES[spec["bench"]]
    size = spec["size"]
    data = jax.block_until_ready(bench.data(size))
    t = time.perf_counter()
    impl = impls.build(spec["impl"], bench, size, spec["guide"], data)
    first = time.perf_counter() - t
    step_s, step_cpu_s, losses = [], [], None
    for _ in range(spec["windows"]):
        dt, losses = impl.run(spec["steps"])
        step_s.append(float(dt[0]))
        step_cpu_s.append(float(dt[1]))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {
        "first_step_s": first,
        "step_s": step_s,
        "step_cpu_s": step_cpu_s,
        "losses": np.asarray(losses, np.float64).tolist(),
        "peak_rss_mb": peak,
    }


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
