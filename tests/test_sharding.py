"""Data-parallel fits (jaxguides/parallel/sharding.py).

The sharded tests need several devices, and XLA fixes the device count when
JAX starts, so they run in child processes and this session keeps its one
device:

* ``tests/helpers/sharded_cases.py`` in its own pytest session with 8 simulated CPU
  devices (sharded == one device, the layout, subsampling, checkpoints, errors);
* two processes joined by ``jax.distributed.initialize`` over loopback, 2
  devices each, fitting one model on a 4-device mesh, checked here against a
  one-process fit.

The tests below those run here, on one device.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, PartitionSpec

import jaxguides as jg
from jaxguides.subsample.indices import draw_indices

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", **extra)
    env.pop("XLA_FLAGS", None)
    env.update(extra)
    return env


def _tail(text: str, n: int = 6000) -> str:
    return text[-n:]


def test_sharded_cases_on_8_simulated_devices():
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", str(HERE / "helpers" / "sharded_cases.py")]
    env = _env(XLA_FLAGS="--xla_force_host_platform_device_count=8")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, _tail(out)
    assert " passed" in out and "skipped" not in out, _tail(out)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_joined_by_jax_distributed_match_one_process(tmp_path):
    from helpers.multihost_model import STEPS, data, model

    port = _free_port()
    cmd = [sys.executable, str(HERE / "helpers" / "multihost_worker.py")]
    logs = [open(tmp_path / f"process{i}.log", "w+") for i in range(2)]
    procs = [
        subprocess.Popen([*cmd, str(i), str(port), str(tmp_path)], cwd=ROOT, env=_env(), stdout=log, stderr=log)
        for i, log in enumerate(logs)
    ]
    try:
        codes = [p.wait(timeout=600) for p in procs]
    finally:  # never leave a process behind (one stuck in a collective waits for its peer forever)
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    text = ""
    for i, log in enumerate(logs):
        log.seek(0)
        text += f"--- process {i} ---\n{_tail(log.read(), 3000)}\n"
        log.close()
    assert codes == [0, 0], text

    got = np.load(tmp_path / "result.npz")
    assert got["z_spans_processes"] and got["z_local_rows"] == 16  # each process holds half the rows
    assert got["checkpoint_gathers"] == 0  # no process gathered the state to save or to load it
    assert got["checkpoint_process_dirs"] == 2  # each process wrote its own shards (ocdbt.process_<i>)

    x, y = data()
    guide = jg.AutoNormal(model)
    one = jg.fit(model, guide, optax.adam(1e-2), jax.random.PRNGKey(1), STEPS, x, y, progress_bar=False, chunk_size=10)
    for name in ("mu", "z"):
        np.testing.assert_allclose(got[f"loc_{name}"], one.params.loc[name], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got[f"scale_{name}"], one.params.raw_scale[name], rtol=1e-5, atol=1e-6)
        # resumed from the checkpoint, each process reading its own shards: bit for bit
        np.testing.assert_array_equal(got[f"resumed_loc_{name}"], got[f"loc_{name}"])
        np.testing.assert_array_equal(got[f"resumed_scale_{name}"], got[f"scale_{name}"])
    np.testing.assert_allclose(got["losses"], one.losses, rtol=1e-5)
    np.testing.assert_array_equal(got["resumed_losses"], got["losses"])


# ---- on this session's one device --------------------------------------------------------
MESH1 = Mesh(np.array(jax.devices()[:1]), ("batch",))
PLATES = {"data": "batch"}


def _algo():
    from helpers.multihost_model import model

    return jg.svi(model, jg.AutoNormal(model), optax.adam(1e-2))


def test_state_shardings_split_local_sites_and_their_adam_moments():
    from helpers.multihost_model import data

    state = _algo().init(jax.random.PRNGKey(0), *data())
    shardings = jg.state_shardings(state, MESH1, PLATES)
    adam = shardings.opt_state[0]
    for tree in (shardings.params.loc, shardings.params.raw_scale, adam.mu.loc, adam.nu.raw_scale):
        assert tree["z"].spec == PartitionSpec("batch")
        assert tree["mu"].spec == PartitionSpec()
    assert adam.count.spec == PartitionSpec() and shardings.step.spec == PartitionSpec()
    # an abstract state works too (to jit init with out_shardings when local latents outgrow one device)
    abstract = jax.eval_shape(_algo().init, jax.random.PRNGKey(0), *data())
    assert jg.state_shardings(abstract, MESH1, PLATES).params.loc["z"].spec == PartitionSpec("batch")


def test_shard_args_leading_axis_rule_and_override():
    from helpers.multihost_model import data

    x, y = data()
    params = _algo().init(jax.random.PRNGKey(0), x, y).params
    w = np.ones((3, len(x)), np.float32)
    (a, b, c), kw = jg.shard_args((x, y, 2.0), MESH1, PLATES, params, kwargs={"w": w})
    assert a.sharding.spec == PartitionSpec("batch") and b.sharding.spec == PartitionSpec("batch")
    assert c == 2.0  # non-array leaves pass through
    assert kw["w"].sharding.spec == PartitionSpec()  # its leading axis is not the plate's
    (a, b), kw = jg.shard_args(
        (x, y), MESH1, PLATES, params, kwargs={"w": w}, specs={0: None, "w": PartitionSpec(None, "batch")}
    )
    assert a.sharding.spec == PartitionSpec() and kw["w"].sharding.spec == PartitionSpec(None, "batch")
    np.testing.assert_array_equal(np.asarray(kw["w"]), w)


def test_block_draws_take_an_equal_share_of_each_block_without_repeats():
    from jaxguides.model.sites import PlateFrame

    plate = PlateFrame("data", 40, 8, -1)
    keys = jax.random.split(jax.random.PRNGKey(0), 4000)
    rows = np.asarray(jax.jit(jax.vmap(lambda k: draw_indices((plate,), k, blocks={"data": 4})["data"]))(keys))
    assert rows.shape == (4000, 8)
    assert all(len(set(r.tolist())) == 8 for r in rows[:50])  # no repeats
    np.testing.assert_array_equal(rows.reshape(-1, 4, 2) // 10, np.broadcast_to(np.arange(4)[:, None], (4000, 4, 2)))
    # every row is drawn with the same probability B/N, so size/subsample_size stays the right scale
    freq = np.bincount(rows.ravel(), minlength=40) / len(keys)
    np.testing.assert_allclose(freq, 8 / 40, atol=0.03)
    with pytest.raises(ValueError, match="plate 'data'.*3 equal blocks"):
        draw_indices((plate,), jax.random.PRNGKey(0), blocks={"data": 3})


def test_a_one_device_mesh_gives_the_unsharded_fit():
    from helpers.multihost_model import data, model

    guide = jg.AutoNormal(model)

    def fit(**kw):
        return jg.fit(model, guide, optax.adam(1e-2), jax.random.PRNGKey(3), 20, *data(), progress_bar=False, **kw)

    plain, meshed = fit(), fit(mesh=MESH1, shard_plates=PLATES)
    for a, b in zip(jax.tree.leaves(plain.state.params), jax.tree.leaves(meshed.state.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(meshed.losses, plain.losses, rtol=1e-6)


def test_shard_plates_without_a_mesh_is_refused():
    from helpers.multihost_model import data, model

    with pytest.raises(TypeError, match="mesh must be a jax.sharding.Mesh"):
        jg.fit(
            model,
            jg.AutoNormal(model),
            optax.adam(1e-2),
            jax.random.PRNGKey(0),
            1,
            *data(),
            progress_bar=False,
            shard_plates=PLATES,
        )
