"""The driver: runs the pure loop (`assimilate`) over long series and live streams in
chunks, resumes from checkpoints, and hands each chunk's results to sinks (output
files, checkpoints, progress)."""

import hashlib
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import numpy as np
from jax.sharding import Mesh

from ._assimilate import (
    Solution,
    check_key,
    check_run_inputs,
    check_t0,
    initial_result,
    make_solution,
    run_cycles,
)
from ._belief import AbstractBelief
from ._custom_types import Array, Float, PRNGKeyArray, RealScalarLike
from ._io import check_output_paths, fingerprint
from ._sharding import gather, is_main_process, place_like, shard
from ._sinks import AbstractSink, Checkpoint, ChunkResult, ProgressBar, RunInfo
from ._streams import ObservationSeries, ObservationStream, batch_records
from .dynamics import AbstractDynamics
from .filters import AbstractFilter


# A gap between two observation times longer than this many times the median gap
# is refused unless `max_gap` allows it: one time of 1e9 hours in a sensor file would
# otherwise integrate for days, inside one compiled call that no signal interrupts.
GAP_FACTOR = 1000.0


class NothingToResume(ValueError):
    """Raised on `resume=True` when the checkpoint already covers every record."""


def key_data(key) -> list[int]:
    """The key's bits (typed `jr.key` or raw `jr.PRNGKey`), to recognise it on resume."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jr.key_data(key)
    return np.asarray(key).ravel().tolist()


def _digest(digest, series: ObservationSeries) -> None:
    """Add the records of `series` to a running hash, record by record (so the hash
    does not depend on how the records were chunked); nothing without a hash (a run
    without a checkpoint needs none)."""
    if digest is None:
        return
    fields = [np.asarray(series.times), np.asarray(series.values), np.asarray(series.mask)]
    if series.noise_std is not None:
        fields.append(np.asarray(series.noise_std))
    for i in range(len(series)):
        for field in fields:
            digest.update(np.ascontiguousarray(field[i]).tobytes())


def _records(observations, start: int, size: int, digest):
    """`(first record, chunk)` from record `start` on, `size` records at a time; the
    records before `start` (assimilated before a resume) are hashed into `digest`."""
    if isinstance(observations, ObservationSeries):
        _digest(digest, observations[:start])
        for lo in range(start, len(observations), size):
            yield lo, observations[lo : min(lo + size, len(observations))]
        return
    operator, records = observations.observation, iter(observations.records)
    buffer: list = []
    for i in range(start):
        record = next(records, None)
        if record is None:
            raise ValueError(
                f"The stream ended after {i} records, but the checkpoint has assimilated "
                f"{start}: resume with the same stream."
            )
        buffer.append(record)
        if len(buffer) == 1000 or i == start - 1:
            _digest(digest, batch_records(operator, buffer, i + 1 - len(buffer)))
            buffer = []
    lo = start
    for record in records:
        buffer.append(record)
        if len(buffer) == size:
            yield lo, batch_records(operator, buffer, lo)
            lo, buffer = lo + size, []
    if buffer:
        yield lo, batch_records(operator, buffer, lo)


def _check_gaps(times, t_prev, first: int, max_gap: float | None, typical: float | None):
    """Refuse a gap between observation times beyond `max_gap` (default: `GAP_FACTOR`
    times the `typical` gap)."""
    t = np.concatenate([[float(t_prev)], np.asarray(times, np.float64)])
    gaps = np.diff(t)
    limit = max_gap if max_gap is not None else (None if typical is None else GAP_FACTOR * typical)
    if limit is None or not np.any(gaps > limit):
        return
    i = int(np.nonzero(gaps > limit)[0][0])
    raise ValueError(
        f"Observation record {first + i} at time {t[i + 1]!r} comes {gaps[i]:.6g} model time "
        f"units after the previous one, beyond the limit {limit:.6g} (`max_gap`; default "
        f"{GAP_FACTOR:g} x the median gap): the forecast would run for very long. Pass a "
        "larger `max_gap` (CLI: --max-gap) if the gap is real."
    )


def assimilate_stream(
    filter: AbstractFilter,
    dynamics: AbstractDynamics,
    observations: ObservationSeries | ObservationStream,
    belief0: AbstractBelief,
    *,
    key: PRNGKeyArray,
    t0: RealScalarLike = 0.0,
    truth: Float[Array, " K *state"] | None = None,
    sinks: tuple[AbstractSink, ...] | list[AbstractSink] = (),
    chunk_size: int | None = None,
    resume: bool = False,
    max_gap: float | None = None,
    scores: bool = True,
    save_ensembles: bool = False,
    throw: bool = True,
    mesh: Mesh | None = None,
    over: str = "members",
) -> Solution:
    r"""Run a filter through a series or a live stream in chunks, handing each chunk's
    results to `sinks`; continue an interrupted run from its checkpoint.

    Each chunk of records is one compiled call of the same loop as `assimilate`
    (chunks of the same length compile once); cycle `k` uses `fold_in(key, k)`, so the
    numbers do not depend on chunking, streaming or resuming: a resumed run is
    bit-identical to an uninterrupted one.

    **Arguments** (as `assimilate`, and):

    - `observations`: an `ObservationSeries`, or an `ObservationStream` whose records
      are pulled one chunk at a time (e.g. a generator fed by a sensor).
    - `sinks`: where results go as they are produced: `NetCDFOutput(path)` (a CF
      file appended after every chunk, complete at every moment), `Checkpoint(path,
      every=K)`, `ProgressBar()`. Output and checkpoint paths are locked for the run.
    - `chunk_size`: records per compiled call. Default: 1 for a stream (every record
      is assimilated as soon as it arrives); for a series all records at once, or 100
      with sinks. Keep chunks short enough that Ctrl-C is honoured quickly: signals
      are seen between calls.
    - `resume`: continue from the `Checkpoint` sink's file (same filter, model,
      operator, belief structure, key and the same first records, all checked), with
      the same `observations` from their start; the records done are skipped and the
      output file is cut back to the checkpoint (repairing a damaged tail). With no
      checkpoint file yet (a run killed during start-up) the run starts afresh with a
      warning.
    - `max_gap`: the longest allowed time between observations (default: 1000 times
      the series' median gap; streams: no limit unless given).
    - `mesh`, `over`: shard the belief over devices (as `assimilate`); in a multi-process
      run process 0 writes the files, all processes a sharded checkpoint (orbax).

    **Returns:** a `Solution` over the records this call assimilated.
    """
    is_stream = isinstance(observations, ObservationStream)
    state_shape, sinks, checkpoint, truth, chunk_size, t0 = _checked(
        filter, dynamics, observations, belief0, key, t0, truth, sinks, chunk_size, resume,
        max_gap, save_ensembles,
    )  # fmt: skip
    k, typical = _length_and_gap(observations, is_stream)
    run_id = _run_id(filter, dynamics, observations.observation, key, mesh, over)

    # Where to start: the beginning or a checkpoint ------------------------------------
    resume = check_resume(checkpoint, [p for s in sinks for p in s.paths()], resume)
    carry, start, meta = (shard(belief0, mesh, over), t0, initial_result()), 0, {}
    if resume:
        carry, start, meta = _load(checkpoint, carry, run_id)
    if not resume and not is_stream:
        check_t0(t0, observations.times)
    # A running hash of the records assimilated: a resume must see the same ones.
    digest = None if checkpoint is None else hashlib.sha256()
    chunks = _records(observations, start, chunk_size, digest)
    if resume:
        chunks = _check_skipped(chunks, digest, meta, start, checkpoint)

    # The loop, chunk by chunk -------------------------------------------------------
    def step(carry, lo, chunk):
        belief, t_start, result = carry
        if not float(chunk.times[0]) > float(t_start):
            raise ValueError(
                f"Observation record {lo} is at time {float(chunk.times[0])!r}, not after "
                f"the previous time {float(t_start)!r} (times must increase strictly; "
                "`t0` must precede the first record)."
            )
        _check_gaps(chunk.times, t_start, lo, max_gap, typical)
        truth_chunk = None if truth is None else truth[lo : lo + len(chunk)]
        first = jnp.asarray(lo, jnp.int32)
        belief, result, out = run_cycles(
            filter, dynamics, chunk, belief, t_start, truth_chunk, first, key, result,
            save_ensembles, scores, mesh, over,
        )  # fmt: skip
        out["times"] = chunk.times
        return (belief, chunk.times[-1], result), out

    info = RunInfo(state_shape, start, k, resume, run_id)
    carry, outputs = _drive(step, carry, chunks, sinks, info, digest)
    if not outputs:
        raise ValueError("`observations` holds no records to assimilate.")
    out = jtu.tree_map(lambda *xs: jnp.concatenate([jnp.asarray(x) for x in xs]), *outputs)
    return make_solution(out, carry[0], carry[2], throw)


def _length_and_gap(observations, is_stream: bool):
    """The number of records (None for a stream) and the median gap between them."""
    k = None if is_stream else len(observations)
    typical = None if is_stream or k < 2 else float(np.median(np.diff(observations.times)))
    return k, typical


def _run_id(filter, dynamics, operator, key, mesh, over) -> dict:
    """What identifies a run for its checkpoint: the settings' fingerprint, the key and
    the device layout (sharded sums round differently: a resume on another layout
    would not continue the same numbers)."""
    layout = "1 device" if mesh is None else f"{mesh.devices.size} devices over {over}"
    return dict(
        fingerprint=fingerprint(filter, dynamics, operator), key=key_data(key), layout=layout
    )


def _checked(
    filter, dynamics, observations, belief0, key, t0, truth, sinks, chunk_size, resume, max_gap,
    save_ensembles,
):  # fmt: skip
    """Every check of `assimilate_stream`'s inputs, before anything is compiled or
    written; returns `(state_shape, sinks, checkpoint, truth, chunk_size, t0)`."""
    is_stream = isinstance(observations, ObservationStream)
    if not (is_stream or isinstance(observations, ObservationSeries)):
        raise TypeError(
            "`observations` must be an ObservationSeries or an ObservationStream; got "
            f"{type(observations).__name__}."
        )
    check_key(key)
    dtype = None if is_stream else observations.values.dtype
    k = None if is_stream else len(observations)
    state_shape, truth = check_run_inputs(
        filter, dynamics, observations.observation, belief0, dtype,
        truth=truth, records=k, save_ensembles=save_ensembles,
    )  # fmt: skip
    sinks, checkpoint = _ordered_sinks(sinks)
    if chunk_size is None:
        chunk_size = 1 if is_stream else (100 if sinks else max(k, 1))
    if not (isinstance(chunk_size, int) and chunk_size >= 1):
        raise ValueError(f"`chunk_size` must be a positive int; got {chunk_size!r}.")
    if max_gap is not None and not max_gap > 0:
        raise ValueError(f"`max_gap` must be positive; got {max_gap!r}.")
    t0 = jnp.asarray(t0, jnp.result_type(float) if is_stream else observations.times.dtype)
    if not math.isfinite(float(t0)):
        raise ValueError(f"`t0` must be finite; got {float(t0)!r}.")
    return state_shape, sinks, checkpoint, truth, chunk_size, t0


def _ordered_sinks(sinks) -> tuple[tuple[AbstractSink, ...], Checkpoint | None]:
    """The sinks checked, checkpoints last (one is only taken of a chunk every other
    sink has written), their paths distinct; and the checkpoint, if any."""
    sinks = tuple(sinks)
    for i, sink in enumerate(sinks):
        if not isinstance(sink, AbstractSink):
            raise TypeError(f"`sinks[{i}]` must be a sink; got {type(sink).__name__}.")
    checkpoints = [s for s in sinks if isinstance(s, Checkpoint)]
    if len(checkpoints) > 1:
        raise ValueError("`sinks` holds more than one Checkpoint.")
    sinks = tuple(s for s in sinks if not isinstance(s, Checkpoint)) + tuple(checkpoints)
    check_output_paths([(type(s).__name__, p) for s in sinks for p in s.paths()], [])
    # Multi-process runs: files are written once, by process 0 (checkpoints: by all).
    sinks = tuple(s for s in sinks if s.every_process or is_main_process())
    return sinks, (checkpoints[0] if checkpoints else None)


def check_resume(checkpoint: Checkpoint | None, outputs, resume: bool) -> bool:
    """Whether a run resumes from `checkpoint`, before anything is written: True if
    `resume` and the checkpoint exists. With `resume` but no checkpoint yet (a run
    stopped before its first one) the run starts afresh with a warning, unless that
    would overwrite one of the existing `outputs` (another run's files): refused.
    Without `resume`, an existing checkpoint is refused (`Checkpoint.check_writable`).

    **Raises:** `ValueError` for the refusals above."""
    if checkpoint is None:
        if resume:
            raise ValueError("`resume=True` needs a `Checkpoint` sink to resume from.")
        return False
    if not resume:
        checkpoint.check_writable()
        return False
    if checkpoint.path.exists():
        return True
    for path in outputs:
        if Path(path) != checkpoint.path and Path(path).exists():
            raise ValueError(
                f"Cannot resume: there is no checkpoint {str(checkpoint.path)!r}, and "
                f"starting afresh would overwrite the existing {str(path)!r}. Give the "
                "checkpoint that run wrote, or move the file away."
            )
    import warnings

    warnings.warn(
        f"No checkpoint {str(checkpoint.path)!r} yet (the run stopped before its first "
        "checkpoint): starting from the beginning.",
        stacklevel=3,
    )
    return False


def _load(checkpoint: Checkpoint, like, run_id: dict):
    """`(carry, records done, meta)` from the checkpoint, refusing another run's; the
    belief laid out as `like`'s (a file checkpoint is read to the host)."""
    carry, meta = checkpoint.load(like)
    carry = (place_like(carry[0], like[0]), *carry[1:])
    for name, what in (
        ("fingerprint", "filter, model or observation operator"),
        ("key", "key"),
        ("layout", "device layout"),
    ):
        if meta.get(name) != run_id[name]:
            theirs = f" ({meta.get(name)}; this run: {run_id[name]})" if name == "layout" else ""
            raise ValueError(
                f"The checkpoint {str(checkpoint.path)!r} comes from a run with another "
                f"{what}{theirs}; resume with the same settings (or start afresh without "
                "resume)."
            )
    return carry, int(meta["records"]), meta


def _check_skipped(chunks, digest, meta, start: int, checkpoint: Checkpoint):
    """The chunks after a resume, once the records skipped (hashed when the first chunk
    is pulled) are checked to be those the checkpoint assimilated."""
    first = next(chunks, None)
    if digest.hexdigest() != meta.get("records_sha256"):
        raise ValueError(
            f"The first {start} records of `observations` differ from those the checkpoint "
            f"{str(checkpoint.path)!r} assimilated; resume with the same observations."
        )
    if first is None:
        raise NothingToResume(
            f"Nothing left to assimilate: the checkpoint already covers all {start} records."
        )
    return _prepend(first, chunks)


def _drive(step, carry, chunks, sinks, info: RunInfo, digest):
    """Run `carry, outputs = step(carry, first record, chunk)` over `chunks`, handing
    each chunk's results to every sink; the sinks are closed however the run stops."""
    started: list[AbstractSink] = []
    outputs, last = [], None
    try:
        for sink in sinks:
            sink.start(info)
            started.append(sink)
        for lo, chunk in chunks:
            carry, out = step(carry, lo, chunk)
            _digest(digest, chunk)
            done = lo + len(chunk)
            sha = None if digest is None else digest.hexdigest()
            meta = dict(info.run_id, records=done, records_sha256=sha)
            out = gather(out) if sinks else out
            result = ChunkResult(lo, done, out, carry, meta)
            outputs.append(out)
            for sink in sinks:
                sink.write(result)
            last = result  # every sink has it: a checkpoint may now be taken of it
    finally:
        for sink in reversed(started):
            sink.close(last)
    return carry, outputs


def _prepend(first, rest):
    yield first
    yield from rest


def progress_sinks(progress: bool | None, description: str | None = None) -> list[AbstractSink]:
    """`[ProgressBar()]` if `progress` (None: when standard error is a terminal or a
    notebook is running), else `[]`."""
    if progress is None:
        import sys

        progress = sys.stderr.isatty() or "ipykernel" in sys.modules
    return [ProgressBar(description)] if progress else []
