"""jaxguides: NumPyro's AutoNormal and AutoDelta as pure JAX functions over a params pytree."""

from numpyro.infer.initialization import (
    init_to_feasible,
    init_to_mean,
    init_to_median,
    init_to_sample,
    init_to_uniform,
    init_to_value,
)

from jaxguides._arviz import to_arviz
from jaxguides._checkpoint import load_checkpoint, save_checkpoint
from jaxguides._delta import AutoDelta, AutoDeltaParams
from jaxguides._elbo import ELBOLoss, elbo_loss
from jaxguides._epoch import PlateCursor, SubsampleState
from jaxguides._errors import (
    CheckpointError,
    FitInterrupted,
    ModelTraceError,
    NonFiniteLossError,
    ParamsMismatchError,
    SiteError,
)
from jaxguides._fit import SVI, FitResult, SVIState, fit, fit_many, svi
from jaxguides._guide_list import AutoGuideList, AutoGuideListParams
from jaxguides._interop import from_numpyro_params, to_numpyro_params
from jaxguides._normal import AutoNormal, AutoNormalParams
from jaxguides._sharding import shard_args, shard_state, state_shardings
from jaxguides._sites import LatentSite, ModelSites, PlateFrame
from jaxguides._sparse import SparseAdamState, SparseTransformation, apply_rows, sparse_adam

__version__ = "0.1.0"

__all__ = [
    "AutoDelta",
    "AutoDeltaParams",
    "AutoGuideList",
    "AutoGuideListParams",
    "AutoNormal",
    "AutoNormalParams",
    "CheckpointError",
    "ELBOLoss",
    "FitInterrupted",
    "FitResult",
    "LatentSite",
    "ModelSites",
    "ModelTraceError",
    "NonFiniteLossError",
    "ParamsMismatchError",
    "PlateCursor",
    "PlateFrame",
    "SVI",
    "SVIState",
    "SiteError",
    "SparseAdamState",
    "SparseTransformation",
    "SubsampleState",
    "apply_rows",
    "elbo_loss",
    "fit",
    "fit_many",
    "from_numpyro_params",
    "init_to_feasible",
    "init_to_mean",
    "init_to_median",
    "init_to_sample",
    "init_to_uniform",
    "init_to_value",
    "load_checkpoint",
    "save_checkpoint",
    "shard_args",
    "shard_state",
    "sparse_adam",
    "state_shardings",
    "svi",
    "to_arviz",
    "to_numpyro_params",
]
