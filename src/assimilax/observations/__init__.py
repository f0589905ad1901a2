"""Observation operators and their Gaussian noise."""

from .._covariance import (
    AbstractCovariance as AbstractCovariance,
    DenseCovariance as DenseCovariance,
    DiagonalCovariance as DiagonalCovariance,
    ScalarCovariance as ScalarCovariance,
    as_covariance as as_covariance,
)
from ._arctan import Arctan as Arctan
from ._interpolate import Interpolate as Interpolate
from ._linear import (
    Identity as Identity,
    LinearObservation as LinearObservation,
    Subsample as Subsample,
)
from ._power import Power as Power
from .base import (
    AbstractLinearObservation as AbstractLinearObservation,
    AbstractObservation as AbstractObservation,
)
