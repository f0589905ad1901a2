"""assimilax: sequential data assimilation in JAX."""

from . import (
    diffusion as diffusion,
    dynamics as dynamics,
    filters as filters,
    metrics as metrics,
    observations as observations,
)
from ._assimilate import Solution as Solution, assimilate as assimilate
from ._belief import AbstractBelief as AbstractBelief, GaussianBelief as GaussianBelief
from ._ensemble import Ensemble as Ensemble
from ._io import describe as describe, read_netcdf as read_netcdf, write_netcdf as write_netcdf
from ._report import report as report
from ._results import RESULTS as RESULTS
from ._streams import (
    ObservationRecord as ObservationRecord,
    ObservationSeries as ObservationSeries,
    ObservationStream as ObservationStream,
    SensorData as SensorData,
    read_observations as read_observations,
)
from ._twin import (
    MODELS as MODELS,
    make_filter as make_filter,
    make_observation as make_observation,
    summarise as summarise,
    twin_experiment as twin_experiment,
)
from .metrics import rmse as rmse, time_average as time_average


__version__ = "0.1.0"
