"""assimilax: sequential data assimilation in JAX."""

from . import dynamics as dynamics, filters as filters, observations as observations
from ._assimilate import Solution as Solution, assimilate as assimilate
from ._belief import AbstractBelief as AbstractBelief, GaussianBelief as GaussianBelief
from ._ensemble import Ensemble as Ensemble
from ._results import RESULTS as RESULTS
from ._streams import ObservationSeries as ObservationSeries


__version__ = "0.1.0"
