"""Score-based diffusion: forward SDEs, score networks, denoising score matching,
reverse-time samplers and likelihood guidance."""

from ._guidance import (
    AbstractGuidance as AbstractGuidance,
    DampedGuidance as DampedGuidance,
    DPSGuidance as DPSGuidance,
    GaussianGuidance as GaussianGuidance,
    posterior_score as posterior_score,
)
from ._networks import (
    Conv as Conv,
    FiLM as FiLM,
    GaussianResidual as GaussianResidual,
    LocalScore as LocalScore,
    MLPScore as MLPScore,
    UNetScore as UNetScore,
    score_function as score_function,
    time_embedding as time_embedding,
)
from ._positive import LogTransform as LogTransform
from ._samplers import (
    euler_maruyama as euler_maruyama,
    predictor_corrector as predictor_corrector,
    probability_flow as probability_flow,
    reverse_em_step as reverse_em_step,
)
from ._sde import (
    GBMSDE as GBMSDE,
    VESDE as VESDE,
    VPSDE as VPSDE,
    AbstractSDE as AbstractSDE,
    CosineVPSDE as CosineVPSDE,
    EnSFSDE as EnSFSDE,
    ScheduledVESDE as ScheduledVESDE,
    SubVPSDE as SubVPSDE,
    gaussian_score as gaussian_score,
)
from ._smc import smc_posterior as smc_posterior
from ._smdp import (
    ResNetScore as ResNetScore,
    fit_smdp as fit_smdp,
    forward_trajectory as forward_trajectory,
    jittered_times as jittered_times,
    power_law_fields as power_law_fields,
    radial_log_amplitude as radial_log_amplitude,
    reconstruction_mse as reconstruction_mse,
    reverse_step as reverse_step,
    reverse_trajectory as reverse_trajectory,
    smdp_loss as smdp_loss,
    spectral_error as spectral_error,
)
from ._training import (
    FitResult as FitResult,
    dsm_loss as dsm_loss,
    fit as fit,
    load_network as load_network,
    save_network as save_network,
    train_step as train_step,
)
