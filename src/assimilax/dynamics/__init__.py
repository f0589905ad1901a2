"""Dynamical models: each advances one member's state from `t0` to `t1`."""

from ._electrode import (
    ElectrodeDynamics as ElectrodeDynamics,
    ElectrodeParameters as ElectrodeParameters,
    electrode_solution as electrode_solution,
    gp_covariance as gp_covariance,
    porosity_fields as porosity_fields,
    sample_conditions as sample_conditions,
)
from ._linear import (
    DiscreteLinearDynamics as DiscreteLinearDynamics,
    LinearDynamics as LinearDynamics,
)
from ._lorenz import Lorenz63 as Lorenz63, Lorenz96 as Lorenz96
from ._shocks import Shocked as Shocked
from ._spectral import (
    AbstractSemilinearSPDE as AbstractSemilinearSPDE,
    AbstractSpectralSPDE as AbstractSpectralSPDE,
    Burgers as Burgers,
    KuramotoSivashinsky as KuramotoSivashinsky,
    NavierStokes2D as NavierStokes2D,
    PeriodicGrid as PeriodicGrid,
    SpatialSpectrum as SpatialSpectrum,
    StochasticHeat as StochasticHeat,
    etdrk4_coefficients as etdrk4_coefficients,
    gaussian_random_field as gaussian_random_field,
)
from .base import (
    AbstractAdditiveNoiseDynamics as AbstractAdditiveNoiseDynamics,
    AbstractDynamics as AbstractDynamics,
)
