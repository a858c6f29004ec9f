"""What the tests share and run, imported as ``helpers.*`` (``tests/`` is on the path).

- ``models``: the model zoo with synthetic data, one ``Case`` each;
- ``fit_worker``, ``interrupt_worker``: fits in fresh processes (faults, SIGINT);
- ``multihost_model``, ``multihost_worker``: two ``jax.distributed`` processes;
- ``sharded_cases``: tests run in their own pytest session on 8 simulated devices.

A worker's model is imported under its ``helpers.*`` name in both processes,
so that a checkpoint written in one resumes in the other.
"""
