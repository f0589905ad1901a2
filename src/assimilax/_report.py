"""Reports of twin experiments: PNG plots and a Markdown summary table.

Plots use matplotlib with the non-interactive Agg backend (no display needed); every
file is written atomically.
"""

import os
from pathlib import Path

import numpy as np

from ._io import atomic_write, read_netcdf
from .experiments import SUMMARY_COLUMNS, status, summarise


_REQUIRED = (
    "truth",
    "analysis_mean",
    "analysis_std",
    "rmse_analysis",
    "spread_analysis",
    "ess_analysis",
    "rank_histogram",
)
# The last cycles shown in the state plots.
_WINDOW = 200


def _check_dataset(ds, source: str) -> None:
    missing = [v for v in _REQUIRED if v not in ds]
    if missing or "burn_in" not in ds.attrs:
        what = ", ".join(missing) if missing else "the `burn_in` attribute"
        raise ValueError(
            f"{source} is not an assimilax twin-experiment file (missing {what}); make one "
            "with `assimilax twin --out FILE.nc`."
        )


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return path


def _plot_errors(ds, path):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4), layout="constrained")
    t = ds["time"].values
    flags = {n: status(row) for n, row in summarise(ds).items()}
    for i, name in enumerate(ds["filter"].values.tolist()):
        color = f"C{i}"
        label = f"{name} RMSE" + (f" ({flags[name]})" if flags[name] else "")
        ax.plot(t, ds["rmse_analysis"].sel(filter=name), color=color, lw=0.8, label=label)
        ax.plot(
            t,
            ds["spread_analysis"].sel(filter=name),
            color=color,
            lw=0.8,
            ls="--",
            label=f"{name} spread",
        )
    burn_in = int(ds.attrs["burn_in"])
    if burn_in:
        ax.axvline(t[burn_in], color="k", lw=0.6, ls=":", label="end of burn-in")
    _log_scale(ax)
    ax.set_xlabel("time")
    ax.set_ylabel("analysis RMSE / spread")
    ax.set_title("Analysis error (solid) and ensemble spread (dashed)")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _save(fig, path)


def _plot_ranks(ds, path):
    import matplotlib.pyplot as plt

    names = ds["filter"].values.tolist()
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        counts = ds["rank_histogram"].sel(filter=name).values.astype(float)
        bins = counts.size
        # Frequency relative to uniform: a calibrated ensemble gives bars near 1.
        relative = counts * bins / max(counts.sum(), 1)
        ax.bar(np.arange(bins), relative, width=0.9, color="C0")
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        ax.set_title(name)
        ax.set_xlabel("rank of the truth")
    axes[0][0].set_ylabel("relative frequency")
    fig.suptitle("Rank histograms after burn-in (flat = calibrated)")
    fig.set_layout_engine("constrained")
    return _save(fig, path)


def _plot_field(ds, path):
    """2-D fields: truth, each filter's analysis mean and its error at the last time."""
    import matplotlib.pyplot as plt

    names = ds["filter"].values.tolist()
    last = ds.isel(time=-1)
    truth = last["truth"].values
    panels = [("truth", truth, None)]
    for name in names:
        mean = last["analysis_mean"].sel(filter=name).values
        panels += [(f"{name}: analysis mean", mean, None), (f"{name}: error", mean - truth, 0)]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), squeeze=False)
    scale = max(float(np.nanmax(np.abs(truth))), 1e-12)
    for ax, (title, field, centre) in zip(axes[0], panels, strict=True):
        limit = scale if centre is None else max(float(np.nanmax(np.abs(field))), 1e-12)
        image = ax.imshow(field.T, origin="lower", cmap="RdBu_r", vmin=-limit, vmax=limit)
        ax.set_title(title, fontsize="small")
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(image, ax=ax, shrink=0.8)
    fig.suptitle(f"Fields at t = {float(last['time']):g}")
    fig.set_layout_engine("constrained")
    return _save(fig, path)


def _plot_state(ds, path):
    """Truth against the analysis: a time series with the ensemble band (+-1.96 std)
    for up to 3 components, a Hovmöller diagram for longer 1-D states, snapshots for 2-D
    fields."""
    import matplotlib.pyplot as plt

    if ds["truth"].ndim == 3:
        return _plot_field(ds, path)
    names = ds["filter"].values.tolist()
    window = slice(max(ds.sizes["time"] - _WINDOW, 0), None)
    sub = ds.isel(time=window)
    t = sub["time"].values
    truth = sub["truth"].values.reshape(t.size, -1)
    d = truth.shape[1]
    if d <= 3:
        fig, axes = plt.subplots(d, 1, figsize=(9, 2.2 * d), sharex=True, squeeze=False)
        for j, ax in enumerate(axes[:, 0]):
            ax.plot(t, truth[:, j], color="k", lw=1.2, label="truth")
            for i, name in enumerate(names):
                mean = sub["analysis_mean"].sel(filter=name).values.reshape(t.size, -1)[:, j]
                std = sub["analysis_std"].sel(filter=name).values.reshape(t.size, -1)[:, j]
                ax.plot(t, mean, color=f"C{i}", lw=0.9, label=f"{name} mean")
                ax.fill_between(t, mean - 1.96 * std, mean + 1.96 * std, color=f"C{i}", alpha=0.2)
            ax.set_ylabel(f"x[{j}]")
        axes[0, 0].legend(
            fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False
        )
        axes[-1, 0].set_xlabel("time")
        fig.suptitle("Truth and analysis mean with the 95 % ensemble band")
    else:
        errors = [
            (name, sub["analysis_mean"].sel(filter=name).values.reshape(t.size, -1) - truth)
            for name in names
        ]
        # One colour scale for the truth, one shared by every error panel.
        panels = [("truth", truth)] + [(f"{n}: analysis - truth", e) for n, e in errors]
        fig, axes = plt.subplots(
            1,
            len(panels),
            figsize=(max(9, 3.0 * len(panels)), 4.2),
            squeeze=False,
            sharey=True,
            layout="constrained",
        )
        scale = max(float(np.nanmax(np.abs(truth))), 1e-12)
        err_scale = max(max(float(np.nanmax(np.abs(e))) for _, e in errors), 1e-12)
        images = []
        for ax, (title, field) in zip(axes[0], panels, strict=True):
            limit = scale if title == "truth" else err_scale
            images.append(
                ax.imshow(
                    field,
                    aspect="auto",
                    origin="lower",
                    cmap="RdBu_r",
                    vmin=-limit,
                    vmax=limit,
                    extent=(-0.5, d - 0.5, t[0], t[-1]),
                    interpolation="nearest",
                )
            )
            ax.set_title(title, fontsize="small")
            ax.set_xlabel("state component")
        axes[0][0].set_ylabel("time")
        fig.colorbar(images[0], ax=axes[0, :1], location="bottom", shrink=0.9, label="truth")
        fig.colorbar(
            images[-1], ax=axes[0, 1:], location="bottom", shrink=0.6, label="analysis error"
        )
        fig.suptitle("Hovmöller diagrams: truth and analysis error (last cycles)")
    if fig.get_layout_engine() is None:
        fig.set_layout_engine("constrained")
    return _save(fig, path)


def _log_scale(ax) -> None:
    """A log y axis where the plotted values allow one (some positive and finite: a
    diverged run's NaN or infinite values are left out of the range), else linear."""
    ys = [np.asarray(line.get_ydata(), float) for line in ax.get_lines()]
    ys = np.concatenate([y.ravel() for y in ys]) if ys else np.zeros(0)
    ok = ys[np.isfinite(ys) & (ys > 0)]
    if ok.size:
        ax.set_yscale("log")
        ax.set_ylim(ok.min() / 1.5, ok.max() * 1.5)


def _plot_ess(ds, path, names):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3), layout="constrained")
    members = int(ds.attrs.get("members", 0)) or None
    for name in names:
        ess = ds["ess_analysis"].sel(filter=name).values
        ax.plot(ds["time"].values, ess, lw=0.8, label=name)
    if members:
        ax.axhline(members, color="k", lw=0.6, ls="--", label="ensemble size")
    _log_scale(ax)
    ax.set_xlabel("time")
    ax.set_ylabel("effective sample size")
    ax.set_title("Particle weights: effective sample size after each update")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _save(fig, path)


def summary_table(ds) -> str:
    """The time-averaged scores of `summarise` as a Markdown table (3 significant
    digits; coverage levels the ensemble cannot resolve, e.g. 95 % with fewer than 40
    members, are left out; a `status` column flags FAILED and DIVERGED filters)."""
    scores = summarise(ds)
    members = int(ds.attrs.get("members", 0))
    columns = [
        c
        for c in SUMMARY_COLUMNS
        if not (c.startswith("coverage_") and members and members * (100 - int(c[9:])) < 200)
    ]
    header = ["filter", *columns, "status"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in scores.items():
        cells = [name, *(f"{row[c]:.3g}" for c in columns), status(row) or "ok"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plot_sweep(ds, path):
    """RMSE (mean over seeds) over the first two grid settings, one panel per ensemble
    size, other settings at their best; the best cell marked (as `best_setting`)."""
    import matplotlib.pyplot as plt

    from .experiments import best_setting

    grid = [d for d in ds["rmse"].dims if d not in ("members", "seed")]
    ok = (ds["failed"].max("seed") == 0) & (ds["diverged"].max("seed") == 0)
    score = ds["rmse"].mean("seed").where(ok)
    if len(grid) > 2:
        score = score.min(grid[2:])
    sizes = ds["members"].values.tolist()
    fig, axes = plt.subplots(1, len(sizes), figsize=(5 * len(sizes), 4), layout="constrained")
    for ax, n, best in zip(np.atleast_1d(axes), sizes, best_setting(ds).values(), strict=True):
        cell = score.sel(members=n)
        x = cell[grid[0]].values
        if len(grid) == 1:
            ax.plot(x, cell.values, "o-")
            ax.set_ylabel("analysis RMSE")
            if best is not None:
                ax.plot(best[grid[0]], best["rmse"], "r*", ms=14)
        else:
            y = cell[grid[1]].values
            mesh = ax.pcolormesh(
                np.arange(y.size), np.arange(x.size), cell.values, shading="nearest"
            )
            ax.set_xticks(np.arange(y.size), [setting_label(v) for v in y], rotation=90)
            ax.set_yticks(np.arange(x.size), [setting_label(v) for v in x])
            ax.set_xlabel(grid[1])
            fig.colorbar(mesh, ax=ax, label="analysis RMSE (blank: failed/diverged)")
            if best is not None:
                i, j = np.argmin(np.abs(x - best[grid[0]])), np.argmin(np.abs(y - best[grid[1]]))
                ax.plot(j, i, "r*", ms=14)
        ax.set_title(f"N={n}" + ("" if best is None else f": best RMSE {best['rmse']:.4g}"))
        ax.set_ylabel(grid[0]) if len(grid) > 1 else ax.set_xlabel(grid[0])
    return _save(fig, path)


def setting_label(value: float) -> str:
    """A swept setting as a label: its value to 3-5 significant digits, the fewest that
    show it exactly (1.05, 1.0556 for 1.0555..., never 1.06 for 1.0556)."""
    value = float(value)
    for digits in (3, 4):
        if abs(float(f"{value:.{digits}g}") - value) <= 1e-9 * max(1.0, abs(value)):
            return f"{value:.{digits}g}"
    return f"{value:.5g}"


def _sweep_header(ds) -> list[str]:
    """What was swept (names, counts, ranges), then the filter's other settings: the
    description is the grid's first cell, not the answer."""
    grid = [d for d in ds["rmse"].dims if d not in ("members", "seed")]
    low, high = ({d: setting_label(float(f(ds[d]))) for d in grid} for f in (np.min, np.max))
    swept = "; ".join(f"`{d}` {ds.sizes[d]} values, {low[d]} to {high[d]}" for d in grid)
    return [
        "# assimilax sweep\n",
        f"Swept: {swept}.\n",
        "The filter's other settings (the swept ones shown at the grid's first cell): "
        f"`{ds.attrs.get('filter_description', '')}`\n",
    ]


def _sweep_report(ds, out: Path) -> list[Path]:
    from .experiments import best_setting

    written = [_plot_sweep(ds, out / "sweep.png")]
    lines = _sweep_header(ds)
    lines.append(f"Best setting per ensemble size ({ds.sizes['seed']} seeds, burn-in "
                 f"{int(ds.attrs['burn_in'])} of {int(ds.attrs['cycles'])} cycles):\n")  # fmt: skip
    for n, best in best_setting(ds).items():
        found = (
            "every setting failed or diverged"
            if best is None
            else ", ".join(
                f"{k} = {setting_label(v) if k != 'rmse' else f'{v:.4g}'}" for k, v in best.items()
            )
        )
        lines.append(f"- N={n}: {found}")
    text = "\n".join(lines) + "\n\n- `sweep.png`\n"
    written.append(atomic_write(out / "summary.md", lambda tmp: Path(tmp).write_text(text)))
    return written


def report(source, out: str | os.PathLike) -> list[Path]:
    """Write the plots and the summary table of a twin experiment into folder `out`.

    - `rmse_spread.png`: analysis RMSE and spread through time, per filter;
    - `rank_histograms.png`: one rank histogram per filter (after burn-in);
    - `state.png`: truth vs analysis mean with the ensemble band (<= 3 components) or
      Hovmöller diagrams of truth and analysis error (longer states);
    - `ess.png`: effective sample size, for filters whose weights vary (particle
      filters) — only if there is one;
    - `summary.md`: the settings and the time-averaged scores as a Markdown table.

    `source` is a dataset from `twin_experiment` or the path of one written to netCDF.
    A `sweep` dataset gets `sweep.png` (the RMSE heat map over the first two settings,
    the best cell starred) and `summary.md` (the best setting per ensemble size).
    Returns the paths written.
    """
    import matplotlib
    import xarray as xr

    matplotlib.use("Agg")
    if isinstance(source, xr.Dataset):
        ds, name = source, "the dataset"
    else:
        ds, name = read_netcdf(source), repr(str(source))
    is_sweep = ds.attrs.get("title") == "assimilax sweep"
    if not is_sweep:
        _check_dataset(ds, name)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"`out` {str(out)!r} exists and is not a folder.")
    out.mkdir(parents=True, exist_ok=True)
    if is_sweep:
        return _sweep_report(ds, out)
    written = [
        _plot_errors(ds, out / "rmse_spread.png"),
        _plot_ranks(ds, out / "rank_histograms.png"),
        _plot_state(ds, out / "state.png"),
    ]
    members = int(ds.attrs.get("members", 0))
    weighted = [
        n
        for n in ds["filter"].values.tolist()
        if not np.allclose(ds["ess_analysis"].sel(filter=n).values, members)
    ]
    if weighted:
        written.append(_plot_ess(ds, out / "ess.png", weighted))
    settings = ", ".join(
        f"{k}={ds.attrs[k]}"
        for k in ("model", "dim", "members", "cycles", "burn_in", "obs_interval", "obs_std", "seed")
        if k in ds.attrs
    )
    text = (
        f"# {ds.attrs.get('title', 'assimilax twin experiment')}\n\n{settings}\n\n"
        f"Time averages after {int(ds.attrs['burn_in'])} burn-in cycles.\n\n"
        f"{summary_table(ds)}\n\n" + "\n".join(f"- `{p.name}`" for p in written) + "\n"
    )
    written.append(atomic_write(out / "summary.md", lambda tmp: Path(tmp).write_text(text)))
    return written
