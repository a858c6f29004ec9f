"""Checkpoint saves: Orbax (asynchronous, shard by shard) against the old single-file pickle.

``python -m bench checkpoint [--K 10000000] [--repeats 3] [--out FILE]``: the
state of ``jg.svi(hier_model, AutoNormal, adam)`` at K local latents (params and
Adam moments: 6 K float32) with its losses (1,000 a save), saved by each writer in a fresh
process. Per save: the stall (how long the fit's thread is held: the whole
write for pickle, the copy off the device buffers for Orbax, whose write then
runs beside the next chunk), the time until the checkpoint is committed, the
time to load it back, and the peak host memory of the process above what it
held before its first save (``ru_maxrss``), over the saves, then with the loads.

The old writer is kept here only, for this comparison: a magic line, the
SHA-256 of the payload, then a pickle of the state moved to host numpy,
written to a temporary file, fsync'ed and renamed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _pickle_save(path: str, payload: Any) -> None:
    """jaxguides' checkpoint writer before Orbax (``jaxguides/_checkpoint.py`` at 5f25258)."""
    import jax
    import numpy as np

    def to_host(x: Any) -> Any:
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return ("key", np.asarray(jax.random.key_data(x)), str(jax.random.key_impl(x)))
        return np.asarray(x) if isinstance(x, (jax.Array, np.ndarray)) else x

    data = pickle.dumps(jax.tree.map(to_host, payload), protocol=pickle.HIGHEST_PROTOCOL)
    digest = hashlib.sha256(data).hexdigest().encode()
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".ckpt", dir=os.path.dirname(os.path.abspath(path)))
    with os.fdopen(fd, "wb") as f:
        f.write(b"JAXGUIDES-CHECKPOINT-1\n" + digest + b"\n" + data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _pickle_load(path: str) -> Any:
    with open(path, "rb") as f:
        raw = f.read()
    head = len(b"JAXGUIDES-CHECKPOINT-1\n") + 65
    assert hashlib.sha256(raw[head:]).hexdigest().encode() == raw[head - 65 : head - 1]
    return pickle.loads(raw[head:])


def child(variant: str, k: int, repeats: int, folder: str) -> dict[str, Any]:
    """One variant in this (fresh) process."""
    import jax
    import numpy as np
    import optax

    import jaxguides as jg
    from bench.models import hier_data, hier_model
    from jaxguides.loop import checkpoint as _checkpoint

    y, sigma = hier_data({"K": k})
    state = jg.svi(hier_model, jg.AutoNormal(hier_model), optax.adam(1e-2)).init(jax.random.PRNGKey(0), y, sigma)
    jax.block_until_ready(state)
    state_mb = sum(x.nbytes for x in jax.tree.leaves(state) if hasattr(x, "nbytes")) / 2**20
    before = _rss_mb()
    stalls, committed, loads, saved_peak = [], [], [], before
    path = os.path.join(folder, f"{variant}.ckpt")
    checkpointer = _checkpoint.Checkpointer(path, keep=2)  # one per fit, as fit opens it
    for i in range(repeats):
        state = state._replace(step=state.step * 0 + 1000 * (i + 1))
        losses = np.linspace(0.0, 1.0, 1000 * (i + 1), dtype=np.float32)
        start = time.perf_counter()
        if variant == "pickle":
            _pickle_save(path, {"state": state, "losses": losses, "num_skipped": 0})
            stalls.append(time.perf_counter() - start)
        else:
            _checkpoint.write_fit_checkpoint(checkpointer, state, losses, 0, {"run": "bench"})
            stalls.append(time.perf_counter() - start)
            checkpointer._manager.wait_until_finished()
        committed.append(time.perf_counter() - start)
        saved_peak = max(saved_peak, _rss_mb())  # before any load
        start = time.perf_counter()
        if variant == "pickle":
            back = _pickle_load(path)["state"]
        else:
            payload = _checkpoint.read_fit_checkpoint(path, {"run": "bench"})
            back = _checkpoint.resume_state(path, payload, state, 10**9)[0]
        jax.block_until_ready(back)
        loads.append(time.perf_counter() - start)
        np.testing.assert_array_equal(np.asarray(back.params.loc["theta"]), np.asarray(state.params.loc["theta"]))
        del back
    checkpointer.close()
    return {
        "variant": variant,
        "K": k,
        "state_MB": round(state_mb, 1),
        "stall_s": [round(s, 3) for s in stalls],
        "committed_s": [round(s, 3) for s in committed],
        "load_s": [round(s, 3) for s in loads],
        "rss_before_MB": round(before, 1),
        "peak_above_MB": round(saved_peak - before, 1),
        "peak_with_load_above_MB": round(_rss_mb() - before, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench checkpoint")
    parser.add_argument("--K", type=int, default=10_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        variant, folder = args.child.split(":", 1)
        print("RESULT " + json.dumps(child(variant, args.K, args.repeats, folder)), flush=True)
        return
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    rows = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as folder:
        for variant in ("pickle", "orbax"):
            cmd = [sys.executable, "-m", "bench", "checkpoint", f"--K={args.K}", f"--repeats={args.repeats}"]
            res = subprocess.run([*cmd, f"--child={variant}:{folder}"], cwd=root, capture_output=True, text=True)
            line = next((x for x in res.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                raise SystemExit(f"{variant} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
            rows.append(json.loads(line[len("RESULT ") :]))
            print(json.dumps(rows[-1]), flush=True)
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    table = [
        f"K = {args.K:,} (state {rows[0]['state_MB']} MB), median of {args.repeats} saves, "
        "each writer in a fresh process",
        "",
        "| writer | stall per save (s) | until committed (s) | load (s) | peak host memory of the saves (MB) "
        "| ... with the loads (MB) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        table.append(
            f"| {r['variant']} | {med(r['stall_s']):.3f} | {med(r['committed_s']):.3f} | {med(r['load_s']):.3f} "
            f"| {r['peak_above_MB']:.0f} | {r['peak_with_load_above_MB']:.0f} |"
        )
    text = "\n".join(table)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
