r"""Score-based filters: the analysis is a likelihood-guided reverse diffusion.

`EnsembleScoreFilter` (Bao, Zhang & Zhang 2024, "EnSF") needs no training: the prior
score of the noised forecast at pseudo-time $t$ is the exact score of the Gaussian
mixture $p_t(x) = \frac1N \sum_j N(x; \alpha_t x_j, \sigma_t^2 I)$ centred on the forecast
members $x_j$,

$$\nabla \log p_t(x) = \sum_j w_j(x)\,\frac{\alpha_t x_j - x}{\sigma_t^2}, \qquad
w(x) = \operatorname{softmax}_j\Big(-\frac{|x - \alpha_t x_j|^2}{2\sigma_t^2}\Big),$$

(optionally over a random mini-batch of members at each pseudo-time step), plus the
damped likelihood score $h(t)\,\nabla_x \log p(y \mid x)$ at $x = x_t$. Posterior samples
come from the reverse SDE by Euler–Maruyama from $t = 1$ to `t_min`.
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jax import lax

from .._custom_types import Array, Float
from .._ensemble import Ensemble, flatten_members
from ..diffusion import AbstractSDE, DampedGuidance, EnSFSDE
from ..diffusion._samplers import _em_step
from ._enkf import _as_inflation, unflatten
from ._inflation import AbstractInflation
from .base import AbstractEnsembleFilter


def mixture_score(
    x: Float[Array, "n d"], members: Float[Array, "k d"], alpha, sigma2
) -> Float[Array, "n d"]:
    r"""The score of $\frac1k \sum_j N(\alpha m_j, \sigma^2 I)$ at each row of `x`.

    Squared distances come from $|x|^2 - 2\alpha x \cdot m_j + \alpha^2 |m_j|^2$ (two
    matrix products), so memory stays $O((n + k) d)$: no $(n, k, d)$ array is formed.
    """
    alpha = jnp.asarray(alpha, x.dtype)
    sigma2 = jnp.asarray(sigma2, x.dtype)
    centres = alpha * members
    sq = jnp.sum(x**2, axis=1)[:, None] - 2 * (x @ centres.T) + jnp.sum(centres**2, axis=1)[None, :]
    weights = jax.nn.softmax(-jnp.maximum(sq, 0) / (2 * sigma2), axis=1)
    return (weights @ centres - x) / sigma2


def _one_minus_t(t):
    return 1 - t


class EnsembleScoreFilter(AbstractEnsembleFilter):
    r"""The ensemble score filter (EnSF; Bao, Zhang & Zhang 2024): training-free, the
    prior score is a Monte-Carlo mixture over the forecast members (see the module).

    **Arguments:**

    - `steps`: pseudo-time steps `K` of the reverse SDE (100, as the paper).
    - `sde`: the forward SDE (default `EnSFSDE(eps_alpha=0.05, t_min=t_min)`: $\alpha_t =
      1 - 0.95 t$, $\sigma_t^2 = t$).
    - `t_min`: where the reverse SDE stops when `sde` is not given (default 1e-3). With
      few members the mixture prior pins samples to members as $t \to 0$, so the last
      steps act like a likelihood-gradient nudge of size ~ `t_min * likelihood_scale`.
    - `damping`: `h(t)`, the weight of the likelihood score (default `1 - t`).
    - `likelihood_scale`: tempering factor on the log-likelihood (1: none).
    - `minibatch`: if given, the prior score at each pseudo-time step uses this many
      members drawn at random (cost $O(N \cdot \text{minibatch} \cdot d)$ per step).
    - `paired`: sample `i` uses only member `i` as its prior kernel (the authors'
      reference code): no mixture weights, so samples cannot all collapse onto one
      member; each analysis member is its forecast member moved by the guided diffusion.
    - `inflation`: applied to the analysis anomalies (as the other ensemble filters).

    Cost per analysis: `steps` x (one $N \times N \times d$ mixture score + one gradient
    of the observation log-likelihood per member); memory $O(N d)$.
    """

    steps: int = eqx.field(static=True)
    sde: AbstractSDE
    damping: Callable = eqx.field(static=True)
    likelihood_scale: Float[Array, ""]
    minibatch: int | None = eqx.field(static=True)
    paired: bool = eqx.field(static=True)
    inflation: AbstractInflation

    def __init__(
        self,
        steps: int = 100,
        sde: AbstractSDE | None = None,
        t_min: float = 1e-3,
        damping: Callable = _one_minus_t,
        likelihood_scale=1.0,
        minibatch: int | None = None,
        paired: bool = False,
        inflation=None,
    ):
        if int(steps) != steps or steps < 2:
            raise ValueError(f"`steps` must be an integer >= 2; got {steps!r}.")
        if minibatch is not None and (int(minibatch) != minibatch or minibatch < 1):
            raise ValueError(f"`minibatch` must be a positive integer or None; got {minibatch!r}.")
        scale = np.asarray(likelihood_scale)
        if not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
            raise ValueError(f"`likelihood_scale` must be positive; got {likelihood_scale!r}.")
        if sde is not None and not isinstance(sde, AbstractSDE):
            raise TypeError(f"`sde` must be an AbstractSDE; got {type(sde).__name__}.")
        self.steps = int(steps)
        self.sde = EnSFSDE(t_min=t_min) if sde is None else sde
        self.damping = damping
        self.likelihood_scale = jnp.asarray(likelihood_scale)
        self.minibatch = None if minibatch is None else int(minibatch)
        self.paired = bool(paired)
        self.inflation = _as_inflation(inflation)

    def update(self, belief, observation, y, mask=None, *, key):
        forecast = flatten_members(belief.members)
        n, d = forecast.shape
        state_shape = belief.state_shape
        dtype = forecast.dtype
        scale = self.likelihood_scale.astype(dtype)
        guidance = DampedGuidance(observation, y, mask, self.damping)
        batch = n if self.minibatch is None else min(self.minibatch, n)

        def score(x, t, members):
            alpha, sigma2 = self.sde.alpha(t), self.sde.sigma(t) ** 2
            if self.paired:
                prior = (alpha * forecast - x) / sigma2
            else:
                prior = mixture_score(x, members, alpha, sigma2)
            xs = x.reshape(n, *state_shape)
            lik = jax.vmap(lambda z: guidance(z, t, self.sde, None))(xs)
            return prior + scale * lik.reshape(n, d)

        times = self.sde.time_grid(self.steps).astype(dtype)
        init_key, loop_key = jr.split(key)
        x0 = self.sde.prior_sample((n, d), key=init_key, dtype=dtype)

        def body(x, inputs):
            i, t, t_next, k = inputs
            batch_key, step_key = jr.split(k)
            if batch == n:
                members = forecast
            else:
                members = forecast[jr.choice(batch_key, n, (batch,), replace=False)]
            step_score = lambda x, t: score(x, t, members)
            return _em_step(self.sde, step_score, x, t, t_next, step_key, i == self.steps - 1), None

        inputs = (jnp.arange(self.steps), times[:-1], times[1:], jr.split(loop_key, self.steps))
        analysis, _ = lax.scan(body, x0, inputs)
        return unflatten(self.inflation(forecast, analysis), Ensemble(belief.members))
