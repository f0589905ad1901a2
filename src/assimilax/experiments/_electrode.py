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
    """How the score model sees `[c, phi]`: each field minus an offset, over one global
    std per field; conditions `(log length, u0, f_right)` min–max scaled to [0, 1].

    - `residual=False`: the original's normalisation, the offset is each field's
      global mean. Within one operating point the fields then vary by ~0.1 of the
      global std, and a network must resolve the conditional mean to ~1 % of the
      spread before its samples mean anything.
    - `residual=True` (default): the offset is the PDE solved at the mean porosity
      0.35 for the sample's operating point (one solve per operating point), and the
      model learns the porosity-driven deviations from it, O(1) after scaling. The
      potential's deviations are also divided by the applied flux (at least 1 A/m²):
      the reaction is 1e-7 as strong as the conduction, so φ is nearly proportional to
      F_right and its spread over porosity is too (measured: std / F within 3x over
      F = 0.3…47), and without this the low-flux profiles vary 100x less than the
      model's noise floor.

    Offsets and scales come from `offset(points)` and `scale(points)` (float64, like
    every PDE solve); `standardise` and `physical` take them, so sampling can run in
    float32.
    """

    residual: bool
    mean: tuple[float, float]
    std: tuple[float, float]
    log_length: tuple[float, float]
    params: ElectrodeParameters

    @classmethod
    def fit(cls, ds, params: ElectrodeParameters | None = None, *, residual=True):
        params = ElectrodeParameters() if params is None else params
        low, high = np.log(params.length / 50), np.log(params.length / 5)
        fields = np.stack([np.asarray(ds["c"]), np.asarray(ds["phi"])], axis=1)
        mean = tuple(float(m) for m in fields.mean(axis=(0, 2)))
        unit = cls(residual, mean, (1.0, 1.0), (low, high), params)
        points = _points(ds)
        deviation = unit.standardise(fields, unit.offset(points), unit.scale(points))
        std = tuple(float(s) for s in deviation.std(axis=(0, 2)))
        return cls(residual, mean, std, (low, high), params)

    def offset(self, points) -> np.ndarray:
        """`(k, 2, cells)` offsets for operating points `(k, 3)`."""
        points = np.asarray(points, np.float64).reshape(-1, 3)
        if not self.residual:
            return np.broadcast_to(
                np.asarray(self.mean)[:, None], (len(points), 2, self.params.cells)
            )
        eps = jnp.full(self.params.cells, 0.35)
        solve = jax.vmap(lambda p: electrode_solution(eps, p[1], p[2], self.params))
        return np.asarray(jax.jit(solve)(jnp.asarray(points)))

    def scale(self, points) -> np.ndarray:
        """`(k, 2, 1)` scales for operating points `(k, 3)`: each field's std, the
        potential's times max(F_right, 1) / 25 in the residual form."""
        points = np.asarray(points, np.float64).reshape(-1, 3)
        scale = np.broadcast_to(np.asarray(self.std)[:, None], (len(points), 2, 1)).copy()
        if self.residual:
            scale[:, 1, 0] *= np.maximum(points[:, 2], 1.0) / 25.0
        return scale

    def states(self, ds) -> np.ndarray:
        """`(samples, 2, cells)` model states of a dataset."""
        fields = np.stack([np.asarray(ds["c"]), np.asarray(ds["phi"])], axis=1)
        points = _points(ds)
        return self.standardise(fields, self.offset(points), self.scale(points))

    def standardise(self, fields, offset, scale) -> np.ndarray:
        """Model states from physical `(..., 2, cells)` `[c, phi]`, their offsets and
        scales."""
        return (np.asarray(fields) - offset) / scale

    def physical(self, states, offset, scale) -> tuple[np.ndarray, np.ndarray]:
        """`(c, phi)` in physical units from model states `(..., 2, cells)`."""
        fields = np.asarray(states, np.float64) * scale + offset
        return fields[..., 0, :], fields[..., 1, :]

    def conditions(self, length_scale, u0, f_right) -> np.ndarray:
        """`(..., 3)` network conditions from operating points (arrays or scalars)."""
        low, high = self.log_length
        scaled = (np.log(np.asarray(length_scale)) - low) / (high - low)
        u = (np.asarray(u0) + 0.2) / 0.4
        f = np.asarray(f_right) / 50.0
        return np.stack(np.broadcast_arrays(scaled, u, f), axis=-1)

    def dataset_conditions(self, ds) -> np.ndarray:
        return self.conditions(*_points(ds).T)


def _points(ds) -> np.ndarray:
    """`(samples, 3)` operating points of a dataset."""
    return np.stack([ds[v].values for v in ("length_scale", "u0", "f_right")], axis=1)
