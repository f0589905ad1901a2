"""Dynamical models: each advances one member's state from `t0` to `t1`."""

from ._linear import LinearDynamics as LinearDynamics
from ._lorenz import Lorenz63 as Lorenz63, Lorenz96 as Lorenz96
from .base import (
    AbstractAdditiveNoiseDynamics as AbstractAdditiveNoiseDynamics,
    AbstractDynamics as AbstractDynamics,
)
