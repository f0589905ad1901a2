"""Experiments: model presets (`MODELS`), filters and observations by name, truth runs
(`simulate`), twin experiments and their dataset/summary schema, synthetic sensor files."""

from ._dataset import (
    SUMMARY_COLUMNS as SUMMARY_COLUMNS,
    status as status,
    summarise as summarise,
    twin_dataset as twin_dataset,
)
from ._electrode import (
    ElectrodeScaling as ElectrodeScaling,
    electrode_dataset as electrode_dataset,
)
from ._learned import (
    cache_path as cache_path,
    learned_prior as learned_prior,
    load_learned_prior as load_learned_prior,
    regime_run as regime_run,
    save_learned_prior as save_learned_prior,
    train_learned_prior as train_learned_prior,
)
from ._markets import (
    MARKETS as MARKETS,
    market_prices as market_prices,
    price_windows as price_windows,
)
from ._presets import MODELS as MODELS, ModelSetup as ModelSetup, get_model as get_model
from ._regimes import REGIMES as REGIMES, Regime as Regime, get_regime as get_regime
from ._registry import (
    FILTERS as FILTERS,
    OPTIONS as OPTIONS,
    make_filter as make_filter,
    make_observation as make_observation,
)
from ._sensors import make_sensors as make_sensors
from ._simulate import (
    climatology_states as climatology_states,
    climatology_statistics as climatology_statistics,
    domain_lengths as domain_lengths,
    perturbations as perturbations,
    simulate as simulate,
)
from ._sweep import (
    best_setting as best_setting,
    stack_filters as stack_filters,
    sweep as sweep,
)
from ._twin import twin_experiment as twin_experiment
