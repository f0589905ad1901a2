"""The embedded standard settings of each model (`MODELS`): the published twin
experiments they come from, the filter settings tuned for them and the RMSEs expected."""

import dataclasses
import math
from collections.abc import Callable, Mapping

import numpy as np

from ..dynamics import (
    AbstractDynamics,
    Burgers,
    KuramotoSivashinsky,
    Lorenz63,
    Lorenz96,
    NavierStokes2D,
    SpatialSpectrum,
    StochasticHeat,
)
from ..filters import RTPS


# Standard settings ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ModelSetup:
    """The standard twin-experiment settings of one model.

    `filter_defaults` maps a filter name to the keyword arguments that tune it for this
    setting (ensemble size `members`); `expected_rmse` maps a filter name to the
    time-averaged analysis RMSE expected at the default settings, with its `source`.
    `observe` is the default sensor layout (see `make_observation`). For the SPDEs
    `dim` is the number of grid points per axis on a fixed domain.
    """

    name: str
    make_dynamics: Callable[[int], AbstractDynamics]
    default_dim: int
    fixed_dim: bool
    obs_interval: float
    obs_std: float
    members: int
    spinup_time: float
    init_std: float
    initial_state: Callable[[int], np.ndarray]
    filter_defaults: Mapping[str, Mapping[str, float]]
    expected_rmse: Mapping[str, float]
    source: str
    observe: str = "all"
    init_length_scale: float | None = None
    # One model time unit in physical time, for sensor files (Lorenz-96: 0.05 = 6 h).
    time_unit: str = "1 day"

    def start(self, dim: int) -> dict:
        """The `twin_experiment` keywords that start a run of this model at dimension
        `dim`: `x0`, `spinup_time`, `init_std`, `init_length_scale`."""
        return dict(
            x0=self.initial_state(dim),
            spinup_time=self.spinup_time,
            init_std=self.init_std,
            init_length_scale=self.init_length_scale,
        )


def _lorenz96_x0(dim: int) -> np.ndarray:
    x = np.full(dim, 8.0)
    x[0] += 0.01
    return x


MODELS: dict[str, ModelSetup] = {
    # Sakov & Oke (2008) / DAPPER `mods.Lorenz96.sakov2008`: all 40 observed every
    # 0.05 with unit noise variance.
    "lorenz96": ModelSetup(
        name="lorenz96",
        make_dynamics=lambda dim: Lorenz96(dim),
        default_dim=40,
        fixed_dim=False,
        obs_interval=0.05,
        obs_std=1.0,
        members=20,
        spinup_time=20.0,
        init_std=1.0,
        initial_state=_lorenz96_x0,
        time_unit="5 days",
        filter_defaults={
            "etkf": {"inflation": 1.02},
            "letkf": {"inflation": 1.02, "radius": 4.0},
            # Local, as the LETKF; weights kept balanced (ESS 0.9 N): arctan d=40 0.041.
            "hybrid": {"inflation": 1.02, "radius": 4.0, "max_local_observations": 32},
            # The perturbed-observation EnKF needs far more inflation at N=20
            # (measured: 1.25 gives 0.35; 1.08 diverges; N=30 with 1.08 gives 0.24).
            "enkf": {"inflation": 1.25},
            # DAPPER `mods.Lorenz96.bocquet2010_m40` tuning for thousands of particles;
            # a particle filter needs far more than the default 20 members here.
            "pf": {"threshold": 0.2, "regularisation": 1.2},
            # Measured (issue 6): the paper's defaults (scale 1, t_min 1e-3) lose track
            # here (RMSE 4.2, spread collapses onto one member); this nudges enough.
            "ensf": {"likelihood_scale": 10.0, "t_min": 0.01},
            # SDA-style guidance measured best of damped/SDA/DPS (DPS diverged).
            "sf": {"guidance": "sda"},
            # DAPPER `mods.Lorenz96.sakov2008`'s tunings (N=24/40 there).
            "enkf-n": {"rotate": True},
            "denkf": {"inflation": 1.01},
            "extkf": {"inflation": 10.0},
            "var3d": {"scale": 0.02},
            "ienks": {"inflation": 1.02},
            "serial": {"inflation": 1.02, "radius": 4.0},
            "enks": {"inflation": 1.02, "lag": 4},
            # Measured at N=20 (300 cycles): RHF 0.35 and the LETKF 0.35 at infl 1.05
            # radius 4; the NS-EnKF 0.44. The local PF (500 cycles, seed 0): 0.37
            # against the LETKF's 0.19 (RTPS 0.5 suits N=40: 0.33 vs 0.21, seed 1).
            "rhf": {"inflation": 1.05, "radius": 4.0},
            "ns-enkf": {"inflation": 1.05, "radius": 4.0},
            "lpf": {"radius": 2.0, "ess_target": 0.5, "inflation": RTPS(0.8)},
        },
        expected_rmse={"etkf": 0.193, "letkf": 0.206},
        source=(
            "DAPPER 1.7 run on this machine type (ETKF N=20 infl 1.02; LETKF N=20 radius 4); "
            "Sakov & Oke (2008) Table 1: 0.18-0.20"
        ),
    ),
    # Sakov, Oliver & Bertino (2012) / DAPPER `mods.Lorenz63.sakov2012`: all three
    # observed every 0.25 with noise variance 2.
    "lorenz63": ModelSetup(
        name="lorenz63",
        make_dynamics=lambda dim: Lorenz63(),
        default_dim=3,
        fixed_dim=True,
        obs_interval=0.25,
        obs_std=float(np.sqrt(2.0)),
        members=10,
        spinup_time=10.0,
        init_std=float(np.sqrt(2.0)),
        initial_state=lambda dim: np.array([1.509, -1.531, 25.46]),
        filter_defaults={
            # DAPPER's 1.02 loses track on seed 0 of `assimilax twin --model lorenz63
            # --cycles 300` (RMSE 2.20); 1.05 holds on seeds 0-2 (0.60-0.64, 1.02: 0.61-0.64
            # where it holds).
            "etkf": {"inflation": 1.05, "rotate": True},
            # On 3 variables localisation is moot: a radius far beyond the domain.
            "letkf": {"inflation": 1.05, "radius": 1000.0},
            # Measured here, 10,000 cycles, seeds 0-2: infl 1.04 gives 0.66-0.72,
            # 1.08 gives 0.62-0.64 (DAPPER's table: 0.65 with 1.04).
            "enkf": {"inflation": 1.08},
            # DAPPER `mods.Lorenz63.sakov2012`: N=100 reg 2.4 NER 0.3 gives 0.38.
            "pf": {"threshold": 0.3, "regularisation": 2.4},
            # Measured at N=10, 1000 cycles: 0.616 (ETKF 0.671); an ESS target of 0.5 N
            # loses track at N=10 but is best at N=100 (0.53/0.48, ETKF 0.58).
            "hybrid": {"inflation": 1.05},
            # DAPPER `mods.Lorenz63.sakov2012`'s tunings.
            "enkf-n": {"rotate": True},
            "extkf": {"inflation": 180.0},
            "var3d": {"scale": 0.1},
            "ienks": {"inflation": 1.02, "rotate": True},
            "serial": {"inflation": 1.02, "rotate": True},
            # Anderson (2010) setting (DAPPER `anderson2010rhf`, N=50): 0.93 at 1.10.
            "rhf": {"inflation": 1.10},
            "ns-enkf": {"inflation": 1.05},
            "lpf": {"inflation": RTPS(0.5)},
            "enks": {"inflation": 1.02, "rotate": True, "lag": 2},
        },
        expected_rmse={"etkf": 0.60, "enkf": 0.65},
        source=(
            "DAPPER `mods.Lorenz63.sakov2012` table: ETKF N=10 infl 1.02 0.60; PertObs EnKF "
            "N=10 infl 1.04 0.65 (ours 0.62-0.64 with 1.08); PF at N=100 (not the default N): 0.38"
        ),
    ),
}


def _ks_x0(dim: int) -> np.ndarray:
    # Kassam & Trefethen (2005): cos(x/16)(1 + sin(x/16)) on [0, 32π).
    x = 32 * np.pi * np.arange(dim) / dim
    return np.cos(x / 16) * (1 + np.sin(x / 16))


def _heat2d(dim: int) -> StochasticHeat:
    return StochasticHeat(dim, 2, diffusivity=0.05, noise=SpatialSpectrum(1.0, 1.0))


def _burgers(dim: int) -> Burgers:
    return Burgers(dim, viscosity=0.05, noise=SpatialSpectrum(0.5, 1.0))


def _ns2d(dim: int) -> NavierStokes2D:
    return NavierStokes2D(dim, noise=SpatialSpectrum(0.2, 0.5))


# The SPDE settings: the field's climatological std is measured after spin-up; the
# observation noise is about 0.2 of it, on a sensor lattice (every 4th grid point).
MODELS.update(
    {
        # Bocquet, Farchi & Malartic (2019) / DAPPER `mods.KS.bocquet2019`: L = 32π,
        # 128 points, all observed every 1.0 with unit noise variance (climatology 1.3).
        "ks": ModelSetup(
            name="ks",
            make_dynamics=lambda dim: KuramotoSivashinsky(dim, 32 * math.pi),
            default_dim=128,
            fixed_dim=False,
            obs_interval=1.0,
            obs_std=1.0,
            members=20,
            spinup_time=150.0,
            init_std=1.0,
            init_length_scale=2.0,
            initial_state=_ks_x0,
            filter_defaults={
                "etkf": {"inflation": 1.03, "rotate": True},
                "letkf": {"inflation": 1.02, "radius": 28.0},
                "hybrid": {"inflation": 1.02, "radius": 28.0, "max_local_observations": 32},
                "enkf": {"inflation": 1.1},
                # Measured (issue 6): the Lorenz-96 tuning carries over; the paper's
                # scale 1 / t_min 1e-3 lose track here too (RMSE 1.58, spread 0.01).
                "ensf": {"likelihood_scale": 10.0, "t_min": 0.01},
                # A bare MLP prior fails here (NaN); see `ScoreFilter.pretrain`.
                "sf": {"guidance": "sda", "gaussian_residual": True},
            },
            expected_rmse={"etkf": 0.115, "letkf": 0.11},
            source=(
                "DAPPER `mods.KS.bocquet2019` tuning notes: ETKF N=20 infl 1.03; LETKF N=16 "
                "radius 28 infl 1.02; climatology 1.3"
            ),
        ),
        # Stochastic heat, 32 x 32 on [0, 2π)^2, alpha = 0.05, noise std 1 with
        # correlation length 1: field std 1.9, lag-0.5 correlation 0.83.
        "heat2d": ModelSetup(
            name="heat2d",
            make_dynamics=_heat2d,
            default_dim=32,
            fixed_dim=False,
            obs_interval=0.5,
            obs_std=0.4,
            members=20,
            spinup_time=50.0,
            init_std=1.9,
            init_length_scale=1.0,
            initial_state=lambda dim: np.zeros((dim, dim)),
            filter_defaults={
                "etkf": {"inflation": 1.02},
                "letkf": {"inflation": 1.02, "radius": 4.0},
                "hybrid": {"inflation": 1.02, "radius": 4.0, "max_local_observations": 32},
                "enkf": {"inflation": 1.05},
            },
            expected_rmse={},
            source="no published reference; measured RMSEs in the issue-5 closing note",
            observe="every:4",
        ),
        # Stochastically forced viscous Burgers, 128 points on [0, 2π), nu = 0.05:
        # travelling shocks, field std 0.75, lag-0.5 correlation 0.8.
        "burgers": ModelSetup(
            name="burgers",
            make_dynamics=_burgers,
            default_dim=128,
            fixed_dim=False,
            obs_interval=0.5,
            obs_std=0.15,
            members=20,
            spinup_time=50.0,
            init_std=0.75,
            init_length_scale=1.0,
            initial_state=lambda dim: np.zeros(dim),
            filter_defaults={
                "etkf": {"inflation": 1.05},
                "letkf": {"inflation": 1.05, "radius": 8.0},
                "hybrid": {"inflation": 1.05, "radius": 8.0, "max_local_observations": 32},
                "enkf": {"inflation": 1.1},
            },
            expected_rmse={},
            source="no published reference; measured RMSEs in the issue-5 closing note",
            observe="every:4",
        ),
        # Kolmogorov flow (forcing sin(4y), drag 0.1, nu = 0.01) with weak stochastic
        # forcing, 64 x 64: vorticity std 3.9, lag-0.5 correlation ~0.7.
        "ns2d": ModelSetup(
            name="ns2d",
            make_dynamics=_ns2d,
            default_dim=64,
            fixed_dim=False,
            obs_interval=0.5,
            obs_std=0.8,
            members=20,
            spinup_time=60.0,
            init_std=1.0,
            init_length_scale=0.5,
            initial_state=lambda dim: np.zeros((dim, dim)),
            filter_defaults={
                "etkf": {"inflation": 1.05},
                "letkf": {"inflation": 1.05, "radius": 6.0},
                "hybrid": {"inflation": 1.05, "radius": 6.0, "max_local_observations": 32},
                "enkf": {"inflation": 1.1},
            },
            expected_rmse={},
            source="no published reference; measured RMSEs in the issue-5 closing note",
            observe="every:4",
        ),
    }
)


def get_model(name: str) -> ModelSetup:
    """The `ModelSetup` called `name`, or a `ValueError` listing the known ones."""
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r}; choose one of {', '.join(sorted(MODELS))}.")
    return MODELS[name]
