# ---
# jupyter:
#   jupytext:
#     formats: py:percent,ipynb
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Assimilating sensor data: files, gaps, live feeds, interruptions
#
# Real observations do not arrive as a tidy array on the model grid. Sensors sit between
# grid points, report at irregular times, drop out, and come with their own error bars.
# This notebook takes a CF netCDF sensor file through `assimilax`:
#
# 1. make a demo file (`assimilax make-sensors` does the same from the shell);
# 2. read it: CF times to model time, sensor positions to an interpolating operator,
#    gaps to a mask, error std per value;
# 3. assimilate it with the LETKF, writing the analyses to a file as they come, with
#    checkpoints; stop the run half-way and resume it to the same numbers;
# 4. feed the same records one by one, as a live sensor would.

# %%
import os
import tempfile
from pathlib import Path

import jax


jax.config.update("jax_enable_x64", True)
import jax.random as jr  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import assimilax as ax  # noqa: E402
from assimilax.experiments import climatology_states, domain_lengths, make_sensors  # noqa: E402


CYCLES = int(os.environ.get("ASSIMILAX_NOTEBOOK_CYCLES", "600"))
workdir = tempfile.TemporaryDirectory(prefix="assimilax-notebook-")  # removed at the end
folder = Path(workdir.name)

# %% [markdown]
# ## 1. A sensor file
# Lorenz-96 with 40 sites; 40 sensors at random positions between the sites, each with
# its own error std (0.75–1.25), reporting at jittered times (CF "hours since
# 2026-01-01", one model time unit = 5 days, so 0.05 = 6 hours). Every second sensor
# reports only at every second time, and 10 % of the values are lost.

# %%
setup = ax.MODELS["lorenz96"]
model = setup.make_dynamics(40)
ds = make_sensors(setup, model, key=jr.key(0), cycles=CYCLES, sensors=40, obs_std=1.0)
ax.write_netcdf(ds, folder / "sensors.nc")
print(ds["observations"].attrs, "\n", ds["time"].attrs)
print(f"{100 * np.isfinite(ds['observations'].values).mean():.0f} % of the values present")

# %% [markdown]
# ## 2. Reading it
# `read_observations` returns the `ObservationSeries` (model times, values, mask, error
# std per value, and an `Interpolate` operator built from the positions), and the
# file's truth, which only a twin-experiment file has.

# %%
data = ax.read_observations(folder / "sensors.nc", model.state_shape, lengths=domain_lengths(model))
series = data.series
print(type(series.observation).__name__, series.observation.obs_dim, "sensors")
print("first times (model units):", np.round(np.asarray(series.times[:4]), 4))

# %% [markdown]
# ## 3. Assimilating it, with an output file and checkpoints
# The initial ensemble knows nothing of the observations: 20 states from the model's
# climate. We stop the run at half-way (here by a sensor feed that breaks down), then
# resume it from the checkpoint; the output file then equals that of a run that was
# never stopped.

# %%
flt = ax.make_filter("letkf", "lorenz96")
ensemble = ax.Ensemble(climatology_states(setup, model, 20, key=jr.key(1)))
belief0 = flt.init(ensemble, key=jr.key(2))
t0 = float(series.times[0]) - setup.obs_interval
run = dict(key=jr.key(3), t0=t0)
feed = ax.ObservationStream(series.observation, series.records())
whole = ax.assimilate_stream(
    flt, model, feed, belief0, sinks=[ax.NetCDFOutput(folder / "whole.nc")], **run
)


def broken_feed(records, after):
    for i, record in enumerate(records):
        if i == after:
            raise ConnectionError("sensor feed lost")
        yield record


stream = ax.ObservationStream(series.observation, broken_feed(series.records(), CYCLES // 2))
out = folder / "run.nc"
sinks = lambda: [ax.NetCDFOutput(out), ax.Checkpoint(folder / "run.checkpoint", every=50)]
try:
    ax.assimilate_stream(flt, model, stream, belief0, sinks=sinks(), **run)
except ConnectionError as e:
    print(f"stopped: {e}; {ax.read_netcdf(out).sizes['time']} cycles are in {out.name}")

stream = ax.ObservationStream(series.observation, series.records())
ax.assimilate_stream(flt, model, stream, belief0, sinks=sinks(), resume=True, **run)
resumed, reference = ax.read_netcdf(out), ax.read_netcdf(folder / "whole.nc")
same = np.array_equal(resumed["analysis_mean"].values, reference["analysis_mean"].values)
print("resumed run identical to the uninterrupted one:", same)
assert same

# %% [markdown]
# ## 4. How well did it do?
# The file's truth (a twin-experiment file has one) lets us score the analysis: after a
# short spin-up from climatology the error falls well below the sensors' error std
# (~1), helped by the model.

# %%
rmse = np.sqrt(np.mean((np.asarray(whole.analysis_mean) - data.truth) ** 2, axis=1))
burn = len(rmse) // 10
scores = {
    "rmse_analysis": float(rmse[burn:].mean()),
    "spread": float(whole.analysis_spread[burn:].mean()),
}
print(scores)
assert scores["rmse_analysis"] < 0.7

fig, axes = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
axes[0].plot(whole.times, rmse, label="analysis RMSE")
axes[0].plot(whole.times, whole.analysis_spread, label="spread")
axes[0].set_yscale("log")
axes[0].legend()
axes[1].plot(whole.times, whole.observed, ".", ms=2)
axes[1].set_ylabel("values observed")
axes[1].set_xlabel("model time")
fig.tight_layout()

# %% [markdown]
# A live feed is the same call (`feed` above) with any iterable of `ObservationRecord(time, values,
# mask, noise_std)`; with `chunk_size=1` (the default for streams) every record is
# assimilated as soon as it arrives, and one compiled step serves them all.

# %% [markdown]
# The files of this walk-through lived in a temporary folder; remove it.

# %%
workdir.cleanup()
