"""The porous-electrode dataset (issue 17): operating points x porosity fields through the
finite-volume solver, as an xarray dataset, and the scaling a score model trains on."""

import dataclasses

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from .._custom_types import PRNGKeyArray
from ..dynamics import (
    ElectrodeParameters,
    electrode_solution,
    porosity_fields,
    sample_conditions,
)


def electrode_dataset(
    key: PRNGKeyArray,
    conditions: int = 250,
    fields: int = 100,
    *,
    time: float | None = None,
    params: ElectrodeParameters | None = None,
    operating_points=None,
):
    """`conditions` operating points (`sample_conditions`, or the given
    `operating_points`, `(k, 3)` rows of length scale, `u0`, `f_right`) x `fields`
    porosity draws each, solved in one vmapped call: an `xarray.Dataset` with `c`, `phi`
    and `eps` over `(sample, x)` and `length_scale`, `u0`, `f_right`, `condition` over
    `sample` (samples ordered by condition). `time=None` is the steady state, else the
    original recipe's state at `time` seconds."""
    import xarray as xr

    if not jax.config.jax_enable_x64:
        raise ValueError(
            "electrode_dataset needs float64: call jax.config.update('jax_enable_x64', True) "
            "first (in float32 the potential's nearly singular system loses its digits)."
        )
    params = ElectrodeParameters() if params is None else params
    k_cond, k_eps = jr.split(key)
    if operating_points is None:
        points = sample_conditions(k_cond, conditions, params)
    else:
        points = jnp.asarray(operating_points, float)
        if points.ndim != 2 or points.shape[1] != 3:
            raise ValueError(f"`operating_points` must have shape (k, 3); got {points.shape}.")
    draw = lambda k, ell: porosity_fields(k, ell, fields, params)
    eps = jax.vmap(draw)(jr.split(k_eps, points.shape[0]), points[:, 0])
    solve = lambda e, p: electrode_solution(e, p[1], p[2], params, time=time)
    per_condition = jax.vmap(jax.vmap(solve, in_axes=(0, None)))
    solution = jax.jit(per_condition)(eps, points)  # (k, fields, 2, cells)
    k = points.shape[0]
    flat = lambda a: np.asarray(a).reshape(k * fields, *a.shape[2:])
    repeat = lambda a: np.repeat(np.asarray(a), fields)
    x = np.asarray(params.centres())
    return xr.Dataset(
        {
            "c": (("sample", "x"), flat(solution[:, :, 0]), {"units": "mol m-3"}),
            "phi": (("sample", "x"), flat(solution[:, :, 1]), {"units": "V"}),
            "eps": (("sample", "x"), flat(eps), {"long_name": "porosity"}),
            "length_scale": ("sample", repeat(points[:, 0]), {"units": "m"}),
            "u0": ("sample", repeat(points[:, 1]), {"units": "V"}),
            "f_right": ("sample", repeat(points[:, 2]), {"units": "A m-2"}),
            "condition": ("sample", np.repeat(np.arange(k), fields)),
        },
        coords={"x": ("x", x, {"units": "m"})},
        attrs={"time": "steady" if time is None else f"{time} s", "fields": fields},
    )


@dataclasses.dataclass(frozen=True)
class ElectrodeScaling:
    """The original's normalisation: `c` and `phi` each by one global mean and std;
    conditions `(log length, u0, f_right)` min–max scaled to [0, 1] over their ranges."""

    c_mean: float
    c_std: float
    phi_mean: float
    phi_std: float
    log_length: tuple[float, float]

    @classmethod
    def fit(cls, ds, params: ElectrodeParameters | None = None) -> "ElectrodeScaling":
        params = ElectrodeParameters() if params is None else params
        c, phi = np.asarray(ds["c"]), np.asarray(ds["phi"])
        low, high = np.log(params.length / 50), np.log(params.length / 5)
        return cls(
            float(c.mean()), float(c.std()), float(phi.mean()), float(phi.std()), (low, high)
        )

    def states(self, ds) -> np.ndarray:
        """`(samples, 2, cells)` standardised `[c, phi]` of a dataset."""
        return self.standardise(np.stack([np.asarray(ds["c"]), np.asarray(ds["phi"])], axis=1))

    def standardise(self, fields) -> np.ndarray:
        """Standardised states from physical `(..., 2, cells)` `[c, phi]`."""
        fields = np.asarray(fields)
        c = (fields[..., 0, :] - self.c_mean) / self.c_std
        phi = (fields[..., 1, :] - self.phi_mean) / self.phi_std
        return np.stack([c, phi], axis=-2)

    def physical(self, states) -> tuple[np.ndarray, np.ndarray]:
        """`(c, phi)` in physical units from standardised states `(..., 2, cells)`."""
        states = np.asarray(states)
        return (
            states[..., 0, :] * self.c_std + self.c_mean,
            states[..., 1, :] * self.phi_std + self.phi_mean,
        )

    def conditions(self, length_scale, u0, f_right) -> np.ndarray:
        """`(..., 3)` network conditions from operating points (arrays or scalars)."""
        low, high = self.log_length
        scaled = (np.log(np.asarray(length_scale)) - low) / (high - low)
        u = (np.asarray(u0) + 0.2) / 0.4
        f = np.asarray(f_right) / 50.0
        return np.stack(np.broadcast_arrays(scaled, u, f), axis=-1)

    def dataset_conditions(self, ds) -> np.ndarray:
        return self.conditions(ds["length_scale"].values, ds["u0"].values, ds["f_right"].values)
