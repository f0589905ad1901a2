"""Shared test helpers: tolerances and the lists of every filter and observation."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from assimilax.diffusion import VPSDE
from assimilax.filters import (
    ETKF,
    LETKF,
    RTPS,
    BootstrapFilter,
    DEnKF,
    EnKFN,
    EnsembleScoreFilter,
    ScoreFilter,
    SerialEnSRF,
    StochasticEnKF,
)
from assimilax.observations import Arctan, Identity, LinearObservation, Subsample


def tree_allclose(x, y, *, rtol=1e-5, atol=1e-8):
    return eqx.tree_equal(x, y, typematch=True, rtol=rtol, atol=atol)


class StandardNormalNoise(eqx.Module):
    """The exact noise predictor `eps = sigma(t) x_t` of standard-normal data under the
    VP SDE, scaled by a trainable `w` (1: exact): a score network with a known answer."""

    w: jax.Array

    def __call__(self, x, t, cond=None):
        return self.w.astype(x.dtype) * VPSDE().sigma(t).astype(x.dtype) * x


# Every ensemble filter, in a small configuration (the shared conformance tests).
all_ensemble_filters = [
    ETKF(),
    ETKF(inflation=1.05),
    StochasticEnKF(inflation=1.02),
    LETKF(radius=2.0, inflation=RTPS(0.5)),
    LETKF(radius=2.0, max_local_observations=3),
    EnKFN(rotate=True),
    DEnKF(inflation=1.02),
    SerialEnSRF(inflation=1.02, radius=2.0, rotate=True),
    BootstrapFilter(threshold=1.0, regularisation=1.0),
    BootstrapFilter("residual", threshold=0.5, jitter_duplicates_only=False),
    EnsembleScoreFilter(steps=10),
    ScoreFilter(
        StandardNormalNoise(jnp.ones(())),
        VPSDE(),
        jnp.full(8, 8.0),
        1.0,
        steps=20,
        finetune_steps=2,
        batch_size=8,
    ),
]


def all_observations(dim: int):
    """Every observation operator on a flat state of size `dim` (>= 6)."""
    rng = np.random.default_rng(0)
    return [
        Identity(dim, noise_std=0.5),
        Subsample(dim, jnp.array([0, 2, 5]), noise_std=jnp.array([0.3, 0.4, 0.5])),
        Subsample.every(dim, 2, noise_covariance=0.5 * jnp.eye(dim // 2) + 0.1),
        LinearObservation(rng.standard_normal((4, dim)), noise_std=0.7, locations=jnp.arange(4.0)),
        Arctan(Identity(dim, noise_std=0.2)),
    ]
