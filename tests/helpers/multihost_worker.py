"""One process of the two-process fit in ``test_sharding.py::test_two_processes_*``.

    python tests/helpers/multihost_worker.py PROCESS_ID PORT OUT_DIR

Each process has 2 simulated CPU devices; ``jax.distributed.initialize``
joins them over loopback into one 4-device mesh. Both processes call ``fit``
with the same arguments (the full data on each); process 0 writes what the
test compares to ``OUT_DIR/result.npz``.
"""

from __future__ import annotations

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"

import jax  # noqa: E402


def main(process_id: int, port: int, out_dir: str) -> None:
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id, initialization_timeout=120
    )
    import numpy as np
    import optax
    from jax.experimental import multihost_utils
    from jax.sharding import Mesh

    import jaxguides as jg

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: helpers.*
    from helpers.multihost_model import STEPS, data, model

    assert jax.process_count() == 2 and jax.device_count() == 4 and jax.local_device_count() == 2
    mesh = Mesh(np.array(jax.devices()), ("batch",))
    x, y = data()
    guide = jg.AutoNormal(model)

    def run(steps, **kw):
        return jg.fit(
            model,
            guide,
            optax.adam(1e-2),
            jax.random.PRNGKey(1),
            steps,
            x,
            y,
            progress_bar=False,
            mesh=mesh,
            shard_plates={"data": "batch"},
            chunk_size=10,
            checkpoint_every=20,
            **kw,
        )

    straight = run(STEPS)
    z = straight.params.loc["z"]
    layout = {
        "z_spans_processes": not z.is_fully_addressable,
        "z_local_rows": sum(s.data.shape[0] for s in z.addressable_shards),
    }
    ckpt = os.path.join(out_dir, "fit.ckpt")
    from jaxguides.parallel import sharding as _sharding

    real_gather, real_allgather, gathers = _sharding.gather, multihost_utils.process_allgather, []

    def gather(*args, **kwargs):  # a spy: only Orbax's barriers (a hash scalar) may go through process_allgather
        if any(np.size(x) > 1 for x in jax.tree.leaves(args)):
            gathers.append(1)
        return real_allgather(*args, **kwargs)

    _sharding.gather = lambda *args: gathers.append(1) or real_gather(*args)
    multihost_utils.process_allgather = gather
    run(STEPS // 2, checkpoint=ckpt)  # "killed" half way: each process writes its own shards
    multihost_utils.sync_global_devices("saved")
    shards = sorted(
        n for n in os.listdir(os.path.join(ckpt, str(STEPS // 2), "arrays")) if n.startswith("ocdbt.process_")
    )
    resumed = run(STEPS, checkpoint=ckpt)  # each process reads its own shards back
    _sharding.gather, multihost_utils.process_allgather = real_gather, real_allgather
    layout["checkpoint_gathers"] = len(gathers)
    layout["checkpoint_process_dirs"] = len(shards)

    full = multihost_utils.process_allgather(straight.state.params, tiled=True)
    again = multihost_utils.process_allgather(resumed.state.params, tiled=True)
    if process_id == 0:
        arrays = {f"loc_{k}": np.asarray(v) for k, v in full.loc.items()}
        arrays |= {f"scale_{k}": np.asarray(v) for k, v in full.raw_scale.items()}
        arrays |= {f"resumed_loc_{k}": np.asarray(v) for k, v in again.loc.items()}
        arrays |= {f"resumed_scale_{k}": np.asarray(v) for k, v in again.raw_scale.items()}
        np.savez(
            os.path.join(out_dir, "result.npz"),
            losses=straight.losses,
            resumed_losses=resumed.losses,
            **arrays,
            **{k: np.asarray(v) for k, v in layout.items()},
        )
    multihost_utils.sync_global_devices("done")
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
