"""Filters: every one has `init`, `forecast` and `update` on the shared interfaces."""

from ._enkf import (
    ETKF as ETKF,
    DEnKF as DEnKF,
    InnovationTerms as InnovationTerms,
    StochasticEnKF as StochasticEnKF,
    innovation_terms as innovation_terms,
)
from ._enkf_n import AdaptiveInflation as AdaptiveInflation, EnKFN as EnKFN
from ._evidence import log_evidence as log_evidence
from ._extended import (
    ExtendedKalmanFilter as ExtendedKalmanFilter,
    OptimalInterpolation as OptimalInterpolation,
    Var3D as Var3D,
)
from ._hybrid import HybridScoreFilter as HybridScoreFilter
from ._ienks import (
    IEnKS as IEnKS,
    WindowAnalysis as WindowAnalysis,
    WindowEnsemble as WindowEnsemble,
)
from ._inflation import (
    RTPP as RTPP,
    RTPS as RTPS,
    AbstractInflation as AbstractInflation,
    MultiplicativeInflation as MultiplicativeInflation,
    NoInflation as NoInflation,
)
from ._kalman import KalmanFilter as KalmanFilter
from ._learned import (
    LearnedPriorFilter as LearnedPriorFilter,
    ensemble_frame as ensemble_frame,
    local_frame as local_frame,
    training_pairs as training_pairs,
)
from ._letkf import LETKF as LETKF
from ._local_pf import LocalParticleFilter as LocalParticleFilter
from ._localisation import (
    GaspariCohn as GaspariCohn,
    gaspari_cohn as gaspari_cohn,
    periodic_distance as periodic_distance,
)
from ._particle import (
    RESAMPLING as RESAMPLING,
    AbstractParticleFilter as AbstractParticleFilter,
    BootstrapFilter as BootstrapFilter,
    OptimalProposalFilter as OptimalProposalFilter,
    ProposalEnsemble as ProposalEnsemble,
    resample as resample,
)
from ._score import (
    EnsembleScoreFilter as EnsembleScoreFilter,
    ScoreEnsemble as ScoreEnsemble,
    ScoreFilter as ScoreFilter,
    mixture_score as mixture_score,
)
from ._serial import (
    AbstractSerialFilter as AbstractSerialFilter,
    Anamorphosis as Anamorphosis,
    NormalScoreEnKF as NormalScoreEnKF,
    RankHistogramFilter as RankHistogramFilter,
    SerialEnSRF as SerialEnSRF,
    adjustment_increments as adjustment_increments,
    rank_histogram_increments as rank_histogram_increments,
)
from ._smoother import (
    AbstractLaggedEnsemble as AbstractLaggedEnsemble,
    EnKS as EnKS,
    LaggedEnsemble as LaggedEnsemble,
    rts_smoother as rts_smoother,
)
from .base import (
    AbstractEnsembleFilter as AbstractEnsembleFilter,
    AbstractFilter as AbstractFilter,
)
