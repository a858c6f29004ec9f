"""``python -m bench``: the side-by-side benchmark (see ``bench/run.py``);
``python -m bench sparse``: dense against row-sparse Adam (see ``bench/sparse.py``);
``python -m bench program``: a hash of the compiled step per model (see ``bench/program_hash.py``);
``python -m bench roofline``: the hierarchical step against the memory-bandwidth
roofline (see ``bench/roofline.py``);
``python -m bench checkpoint``: Orbax checkpoint saves against the old pickle file
(see ``bench/checkpoint.py``)."""

import os
import sys

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

if len(sys.argv) > 1 and sys.argv[1] == "sparse":
    from bench.sparse import main

    main(sys.argv[2:])
elif len(sys.argv) > 1 and sys.argv[1] == "program":
    from bench.program_hash import main

    main(sys.argv[2:])
elif len(sys.argv) > 1 and sys.argv[1] == "roofline":
    from bench.roofline import main

    main(sys.argv[2:])
elif len(sys.argv) > 1 and sys.argv[1] == "checkpoint":
    from bench.checkpoint import main

    main(sys.argv[2:])
else:
    from bench.run import main

    main(sys.argv[1:])
