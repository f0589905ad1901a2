"""Run-time outcomes of an assimilation, returned rather than hidden as NaN."""

import equinox as eqx


class RESULTS(eqx.Enumeration):
    """What happened in an assimilation run (the first failure is kept)."""

    successful = ""
    forecast_not_finite = (
        "The forecast became NaN or infinite: the dynamics blew up from this belief. "
        "Check the model's time step and the initial ensemble."
    )
    analysis_not_finite = (
        "The analysis became NaN or infinite: the filter diverged. Try more inflation, "
        "a larger ensemble or stronger localisation."
    )
