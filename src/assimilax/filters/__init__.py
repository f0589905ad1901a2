"""Filters: every one has `init`, `forecast` and `update` on the shared interfaces."""

from ._enkf import ETKF as ETKF, StochasticEnKF as StochasticEnKF
from ._inflation import (
    AbstractInflation as AbstractInflation,
    MultiplicativeInflation as MultiplicativeInflation,
    NoInflation as NoInflation,
    RTPP as RTPP,
    RTPS as RTPS,
)
from ._kalman import KalmanFilter as KalmanFilter
from ._letkf import LETKF as LETKF
from ._localisation import (
    GaspariCohn as GaspariCohn,
    gaspari_cohn as gaspari_cohn,
    periodic_distance as periodic_distance,
)
from .base import (
    AbstractEnsembleFilter as AbstractEnsembleFilter,
    AbstractFilter as AbstractFilter,
)
