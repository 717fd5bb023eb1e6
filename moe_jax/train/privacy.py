"""The privacy budget of DP-SGD: the `dp` config section and its accountant.

DP-SGD (Abadi et al. 2016) releases, at every step, the sum of the batch's per-example
gradients, each clipped to L2 norm C (`dp.clip_norm`), plus Gaussian noise of standard
deviation sigma C (sigma = `dp.noise_multiplier`). With each example in a batch with
probability q = batch / training examples, one step is the Poisson-subsampled Gaussian
mechanism, and T steps are its T-fold composition: the accountant (Google's
dp-accounting, RDP by default or PLD) turns (q, sigma, T) into the epsilon spent at
`dp.delta`. With `dp.target_epsilon` instead of a noise multiplier, sigma is the
smallest noise that keeps T = train.steps steps within that epsilon.

What the accounting assumes, stated plainly:
  - one example per row (data.packing = "pad"): the clipped unit is one example, the
    unit the guarantee protects; a packed row holds several and would protect none alone;
  - Poisson sampling with rate q: the input pipeline deals fixed-size batches from a
    shuffled stream, the common practice of Abadi et al. and the DP libraries, whose
    guarantee is not exactly this one (Chua et al. 2024 show shuffled batches can leak
    more than the Poisson analysis says); read the epsilon as the Poisson figure;
  - everything the model keeps from training goes through the noised sum: the router's
    balancing bias rule reads the batch's expert loads, an un-noised count of what the
    examples chose, so it must be frozen (model.bias_update_rate = 0) under DP.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import ml_collections

from moe_jax.models.config import ConfigError

ACCOUNTANTS = ("rdp", "pld")


def dp_config() -> ml_collections.ConfigDict:
    """The `dp` section of a training config (off by default)."""
    c = ml_collections.ConfigDict()
    c.enabled = False
    c.clip_norm = 1.0  # C: each example's gradient is scaled to at most this L2 norm
    c.noise_multiplier = -1.0  # sigma (noise std / C); -1: derive it from target_epsilon
    c.target_epsilon = -1.0  # the epsilon train.steps steps may spend; -1: noise_multiplier given
    c.delta = 1e-5
    c.accountant = "rdp"  # or "pld" (tighter, slower)
    return c


def dp_event(sampling_rate: float, noise_multiplier: float, steps: int):
    """The DpEvent of `steps` DP-SGD steps: Poisson sampling at q around a Gaussian."""
    import dp_accounting

    step = dp_accounting.PoissonSampledDpEvent(sampling_rate, dp_accounting.GaussianDpEvent(noise_multiplier))
    return dp_accounting.SelfComposedDpEvent(step, steps)


def _accountant(name: str):
    from dp_accounting import pld, rdp

    return rdp.RdpAccountant() if name == "rdp" else pld.PLDAccountant()


@functools.lru_cache(maxsize=4096)
def epsilon(sampling_rate: float, noise_multiplier: float, steps: int, delta: float,
            accountant: str = "rdp") -> float:
    """Epsilon spent by `steps` steps at `delta`; inf without noise, 0 before any step."""
    if steps <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    a = _accountant(accountant)
    a.compose(dp_event(sampling_rate, noise_multiplier, steps))
    return float(a.get_epsilon(delta))


def noise_for_epsilon(target_epsilon: float, sampling_rate: float, steps: int, delta: float,
                      accountant: str = "rdp") -> float:
    """The smallest noise multiplier whose `steps` steps spend at most `target_epsilon`."""
    import dp_accounting

    sigma = dp_accounting.calibrate_dp_mechanism(
        lambda: _accountant(accountant), lambda s: dp_event(sampling_rate, s, steps),
        target_epsilon, delta, dp_accounting.LowerEndpointAndGuess(0.0, 1.0), tol=1e-4)
    return float(sigma)


@dataclasses.dataclass(frozen=True)
class PrivacySettings:
    clip_norm: float
    noise_multiplier: float
    delta: float
    sampling_rate: float  # q = batch size / training examples
    steps: int  # the run's steps, which target_epsilon budgets for
    accountant: str = "rdp"

    def epsilon(self, steps: int) -> float:
        """Epsilon spent after `steps` steps."""
        return epsilon(self.sampling_rate, self.noise_multiplier, int(steps), self.delta, self.accountant)

    def describe(self) -> str:
        return (f"DP-SGD: clip {self.clip_norm}, noise multiplier {self.noise_multiplier:.4f}, "
                f"q = {self.sampling_rate:.4g}, {self.accountant.upper()} accountant; epsilon "
                f"{self.epsilon(self.steps):.3f} at delta {self.delta:g} after {self.steps} steps")


def _positive(section, name: str) -> float:
    value = section[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ConfigError(f"dp.{name}", value, "a finite number > 0")
    return float(value)


def check_dp_config(config) -> None:
    """The `dp` section and what DP-SGD needs of the rest of the config (no device work)."""
    dp = config.get("dp")
    if dp is None or not dp.get("enabled", False):
        return
    _positive(dp, "clip_norm")
    delta = _positive(dp, "delta")
    if delta >= 1:
        raise ConfigError("dp.delta", delta, "a probability in (0, 1), well below 1 / training examples")
    if dp.accountant not in ACCOUNTANTS:
        raise ConfigError("dp.accountant", dp.accountant, f"one of {ACCOUNTANTS}")
    given_noise, given_target = dp.noise_multiplier != -1, dp.target_epsilon != -1
    if given_noise == given_target:
        raise ConfigError("dp.noise_multiplier", dp.noise_multiplier,
                          "either a noise multiplier >= 0 or dp.target_epsilon > 0 (the other -1), "
                          f"not both or neither (dp.target_epsilon = {dp.target_epsilon})")
    if given_noise and not (math.isfinite(dp.noise_multiplier) and dp.noise_multiplier >= 0):
        raise ConfigError("dp.noise_multiplier", dp.noise_multiplier, "a finite number >= 0")
    if given_target:
        _positive(dp, "target_epsilon")
    if config.data.get("packing") != "pad":
        raise ConfigError("data.packing", config.data.get("packing"),
                          '"pad" under dp.enabled: one example per row, the unit DP-SGD clips')
    if config.model.get("bias_update_rate", 0.0) != 0.0:
        raise ConfigError("model.bias_update_rate", config.model.bias_update_rate,
                          "0 under dp.enabled: the bias rule reads the batch's expert loads, which "
                          "DP-SGD would release without noise")
    num_train = config.data.get("num_train", 0)
    if not isinstance(num_train, int) or num_train < config.train.batch_size:
        raise ConfigError("data.num_train", num_train,
                          f"at least train.batch_size = {config.train.batch_size} (q = batch / examples)")


def privacy_settings(config) -> PrivacySettings | None:
    """The run's PrivacySettings (noise derived from dp.target_epsilon when asked), or
    None when the `dp` section is absent or off."""
    check_dp_config(config)
    dp = config.get("dp")
    if dp is None or not dp.enabled:
        return None
    q = config.train.batch_size / config.data.num_train
    steps = config.train.steps
    sigma = dp.noise_multiplier
    if sigma == -1:
        sigma = noise_for_epsilon(dp.target_epsilon, q, steps, dp.delta, dp.accountant)
    return PrivacySettings(clip_norm=float(dp.clip_norm), noise_multiplier=float(sigma),
                           delta=float(dp.delta), sampling_rate=q, steps=steps, accountant=dp.accountant)
