"""assimilax: sequential data assimilation in JAX.

The public names below are loaded on first use (PEP 562), so `import assimilax` and
`assimilax --help` do not pay for JAX, xarray or netCDF until they are needed.
"""

import importlib
from typing import TYPE_CHECKING


__version__ = "0.2.0"

# public name -> the module that defines it
_LAZY = {
    "Solution": "._assimilate",
    "assimilate": "._assimilate",
    "assimilate_stream": "._driver",
    "AbstractBelief": "._belief",
    "GaussianBelief": "._belief",
    "Ensemble": "._ensemble",
    "AbstractEnsembleBelief": "._ensemble",
    "as_ensemble": "._ensemble",
    "device_mesh": "._sharding",
    "shard": "._sharding",
    "initialize_distributed": "._sharding",
    "cpu_xla_flags": "._sharding",
    "cpu_environment": "._sharding",
    "describe": "._io",
    "read_netcdf": "._io",
    "write_netcdf": "._io",
    "report": "._report",
    "RESULTS": "._results",
    "AbstractSink": "._sinks",
    "Checkpoint": "._sinks",
    "NetCDFOutput": "._sinks",
    "ProgressBar": "._sinks",
    "ObservationRecord": "._streams",
    "ObservationSeries": "._streams",
    "ObservationStream": "._streams",
    "SensorData": "._streams",
    "read_observations": "._streams",
    "MODELS": ".experiments",
    "make_filter": ".experiments",
    "make_observation": ".experiments",
    "simulate": ".experiments",
    "summarise": ".experiments",
    "sweep": ".experiments",
    "best_setting": ".experiments",
    "twin_experiment": ".experiments",
    "tune": "._tune",
    "TuneResult": "._tune",
    "fit": "._fit",
    "FitResult": "._fit",
    "log_likelihood": "._fit",
    "fit_em": "._em",
    "estimate_by_augmentation": "._augment",
    "AugmentationResult": "._augment",
    "EMResult": "._em",
    "rmse": ".metrics",
    "time_average": ".metrics",
}
_SUBPACKAGES = (
    "diffusion",
    "dynamics",
    "experiments",
    "filters",
    "metrics",
    "observations",
    "stylized",
)


def __getattr__(name: str):
    if name in _SUBPACKAGES:
        return importlib.import_module(f".{name}", __name__)
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'assimilax' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_LAZY, *_SUBPACKAGES])


if TYPE_CHECKING:  # what type checkers and IDEs see
    from . import (
        diffusion as diffusion,
        dynamics as dynamics,
        experiments as experiments,
        filters as filters,
        metrics as metrics,
        observations as observations,
    )
    from ._assimilate import Solution as Solution, assimilate as assimilate
    from ._augment import (
        AugmentationResult as AugmentationResult,
        estimate_by_augmentation as estimate_by_augmentation,
    )
    from ._belief import AbstractBelief as AbstractBelief, GaussianBelief as GaussianBelief
    from ._driver import assimilate_stream as assimilate_stream
    from ._em import EMResult as EMResult, fit_em as fit_em
    from ._ensemble import (
        AbstractEnsembleBelief as AbstractEnsembleBelief,
        Ensemble as Ensemble,
        as_ensemble as as_ensemble,
    )
    from ._fit import FitResult as FitResult, fit as fit, log_likelihood as log_likelihood
    from ._io import (
        describe as describe,
        read_netcdf as read_netcdf,
        write_netcdf as write_netcdf,
    )
    from ._report import report as report
    from ._results import RESULTS as RESULTS
    from ._sharding import (
        cpu_environment as cpu_environment,
        cpu_xla_flags as cpu_xla_flags,
        device_mesh as device_mesh,
        initialize_distributed as initialize_distributed,
        shard as shard,
    )
    from ._sinks import (
        AbstractSink as AbstractSink,
        Checkpoint as Checkpoint,
        NetCDFOutput as NetCDFOutput,
        ProgressBar as ProgressBar,
    )
    from ._streams import (
        ObservationRecord as ObservationRecord,
        ObservationSeries as ObservationSeries,
        ObservationStream as ObservationStream,
        SensorData as SensorData,
        read_observations as read_observations,
    )
    from ._tune import TuneResult as TuneResult, tune as tune
    from .experiments import (
        MODELS as MODELS,
        best_setting as best_setting,
        make_filter as make_filter,
        make_observation as make_observation,
        simulate as simulate,
        summarise as summarise,
        sweep as sweep,
        twin_experiment as twin_experiment,
    )
    from .metrics import rmse as rmse, time_average as time_average
