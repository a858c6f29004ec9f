"""jaxguides: NumPyro's AutoNormal and AutoDelta as pure JAX functions over a params pytree."""

from numpyro.infer.initialization import (
    init_to_feasible,
    init_to_mean,
    init_to_median,
    init_to_sample,
    init_to_uniform,
    init_to_value,
)

from jaxguides._caches import clear_caches
from jaxguides._errors import (
    CheckpointError,
    FitInterrupted,
    ModelTraceError,
    NonFiniteLossError,
    ParamsMismatchError,
    SiteError,
)
from jaxguides.elbo.loss import ELBOLoss, elbo_loss
from jaxguides.guides.delta import AutoDelta, AutoDeltaParams
from jaxguides.guides.guide_list import AutoGuideList, AutoGuideListParams
from jaxguides.guides.normal import AutoNormal, AutoNormalParams
from jaxguides.interop.arviz_data import to_arviz
from jaxguides.interop.numpyro_params import from_numpyro_params, to_numpyro_params
from jaxguides.loop.checkpoint import load_checkpoint, save_checkpoint
from jaxguides.loop.fit import FitResult, fit, fit_many
from jaxguides.model.sites import LatentSite, ModelSites, PlateFrame
from jaxguides.optim.sparse import SparseAdamState, SparseTransformation, apply_rows, sparse_adam
from jaxguides.parallel.sharding import shard_args, shard_state, state_shardings
from jaxguides.subsample.epoch import PlateCursor, SubsampleState
from jaxguides.svi.state import SVI, SVIInfo, SVIState
from jaxguides.svi.step import svi

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
    "SVIInfo",
    "SVIState",
    "SiteError",
    "SparseAdamState",
    "SparseTransformation",
    "SubsampleState",
    "apply_rows",
    "clear_caches",
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
