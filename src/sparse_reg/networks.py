"""MLPs and policy/value heads, with the regularisers the paper compares.

Every network is a plain Flax module whose weight matrices are called ``kernel``:
that name is how :mod:`sparse_reg.sparsity` knows what it may prune (biases and
norm scales stay dense).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0

@dataclass(frozen=True)
class NetworkConfig:
    """Architecture and architectural regularisers shared by all networks of an agent.

    dropout: rate on every hidden layer (not the output), active only when a dropout
        key is passed to the forward pass.
    layer_norm: LayerNorm after every hidden layer's linear map (not the output).
    spectral_norm: spectral normalisation of the penultimate linear layer
        (the last hidden layer), as Miyato et al. recommend.
    kernel_init: initialisation of every weight matrix, a name in ``KERNEL_INITS``:
        "lecun_normal" (Flax's default) or "xavier_normal" (PyTorch's ``xavier_normal_``,
        which the paper's code uses for its IQL and AWAC networks). Biases start at zero.
    """

    hidden_dims: tuple[int, ...] = (256, 256)
    dropout: float = 0.0
    layer_norm: bool = False
    spectral_norm: bool = False
    kernel_init: str = "lecun_normal"

    def __post_init__(self):
        if self.kernel_init not in KERNEL_INITS:
            raise ValueError(f"unknown weight initialisation '{self.kernel_init}': choose one of {', '.join(KERNEL_INITS)}")


# Names users pick from. xavier_normal is an untruncated normal with variance 2 / (fan_in + fan_out),
# exactly torch.nn.init.xavier_normal_; Flax's own glorot_normal truncates.
KERNEL_INITS = {
    "lecun_normal": nn.initializers.lecun_normal(),
    "xavier_normal": nn.initializers.variance_scaling(1.0, "fan_avg", "normal"),
}


class SpectralDense(nn.Module):
    """Dense layer whose kernel is divided by its largest singular value.

    The singular vectors come from power iteration started from a fixed vector on
    every call and are treated as constants for the gradient (as PyTorch's
    ``spectral_norm`` does); being stateless keeps the update a pure function.
    """

    features: int
    power_iterations: int = 10
    kernel_init: str = "lecun_normal"

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", KERNEL_INITS[self.kernel_init], (x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        sigma = spectral_norm_estimate(kernel, self.power_iterations)
        return x @ (kernel / sigma) + bias


def spectral_norm_estimate(kernel: jax.Array, iterations: int) -> jax.Array:
    """Largest singular value of ``kernel`` by power iteration, differentiable in ``kernel`` only."""
    v = jnp.ones((kernel.shape[1],), kernel.dtype) / jnp.sqrt(kernel.shape[1])
    w = jax.lax.stop_gradient(kernel)
    for _ in range(iterations):
        u = w @ v
        u = u / (jnp.linalg.norm(u) + 1e-12)
        v = w.T @ u
        v = v / (jnp.linalg.norm(v) + 1e-12)
    return u @ kernel @ v


class MLP(nn.Module):
    """ReLU MLP; regularisers apply to hidden layers only, never to the output layer."""

    hidden_dims: Sequence[int]
    output_dim: int
    dropout: float = 0.0
    layer_norm: bool = False
    spectral_norm: bool = False
    kernel_init: str = "lecun_normal"

    @nn.compact
    def __call__(self, x, train: bool = False):
        params = {} if self.is_initializing() else self.variables.get("params", {})
        if isinstance(params.get("Dense_0", {}).get("kernel"), dict):  # the live-units layout's kernels
            return self._live_units(x, params)
        init = KERNEL_INITS[self.kernel_init]
        for i, width in enumerate(self.hidden_dims):
            penultimate = i == len(self.hidden_dims) - 1
            if self.spectral_norm and penultimate:
                x = SpectralDense(width, kernel_init=self.kernel_init)(x)
            else:
                x = nn.Dense(width, kernel_init=init)(x)
            if self.layer_norm:
                x = nn.LayerNorm()(x)
            x = nn.relu(x)
            if self.dropout > 0:
                x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.output_dim, kernel_init=init)(x)

    def _live_units(self, x, params):
        """The same MLP in the live-units layout (sparse_reg.live_layout): each kernel is a dict whose
        ``block`` is a dense matmul over the layer's first units (permuted so that the live ones come
        first); the previous layer's next units are constant (no kept input), ``relu(b)``, and reach
        this layer through ``const``; ``dead`` entries are read by nothing. Hidden biases are whole."""
        if self.dropout > 0 or self.layer_norm or self.spectral_norm:
            raise ValueError("live units support plain MLPs only (no dropout, LayerNorm or spectral norm)")
        depth = len(self.hidden_dims)
        h, const = x, None
        for i in range(depth + 1):
            kernel, bias = params[f"Dense_{i}"]["kernel"], params[f"Dense_{i}"]["bias"]
            width = kernel["block"].shape[-1]
            y = h @ kernel["block"]
            if "const" in kernel:
                y = y + const @ kernel["const"]
            y = y + bias[:width]
            if i == depth:
                return y
            following = params[f"Dense_{i + 1}"]["kernel"]
            if "const" in following:
                const = nn.relu(bias[width: width + following["const"].shape[-2]])
            h = nn.relu(y)


def supports_live_units(module: nn.Module) -> bool:
    """Whether ``module`` (an MLP or a head built on one here) can run in the live-units layout
    (sparse_reg.live_layout): plain MLPs, without dropout, LayerNorm or spectral norm."""
    config = getattr(module, "config", None)
    if isinstance(module, MLP):
        flags = (module.dropout > 0, module.layer_norm, module.spectral_norm)
    elif isinstance(module, (DeterministicActor, GaussianActor, StateValue, TwinQ)) and isinstance(config, NetworkConfig):
        flags = (config.dropout > 0, config.layer_norm, config.spectral_norm)
    else:
        return False
    return not any(flags)


def _mlp(config: NetworkConfig, output_dim: int) -> MLP:
    return MLP(config.hidden_dims, output_dim, config.dropout, config.layer_norm, config.spectral_norm, config.kernel_init)


class DeterministicActor(nn.Module):
    """a = max_action * tanh(MLP(s)) (BC, TD3+BC)."""

    config: NetworkConfig
    action_dim: int
    max_action: float = 1.0

    @nn.compact
    def __call__(self, obs, train: bool = False):
        return self.max_action * jnp.tanh(_mlp(self.config, self.action_dim)(obs, train))


class GaussianActor(nn.Module):
    """Diagonal Gaussian with state-independent log-std (IQL, AWAC).

    ``tanh_mean`` squashes the mean into [-1, 1] (IQL's reference policy); AWAC's
    reference policy leaves it unsquashed and clips sampled actions instead. The log-std is
    clipped to [``log_std_min``, LOG_STD_MAX] (the paper's code clips at −5, CORL at −20).
    Returns (mean, log_std); the mean is also the deterministic action.
    """

    config: NetworkConfig
    action_dim: int
    tanh_mean: bool = True
    log_std_min: float = LOG_STD_MIN

    @nn.compact
    def __call__(self, obs, train: bool = False):
        mean = _mlp(self.config, self.action_dim)(obs, train)
        if self.tanh_mean:
            mean = jnp.tanh(mean)
        log_std = self.param("log_std", nn.initializers.zeros, (self.action_dim,))
        return mean, jnp.clip(log_std, self.log_std_min, LOG_STD_MAX)


def gaussian_log_prob(mean: jax.Array, log_std: jax.Array, action: jax.Array) -> jax.Array:
    """Log-density of a diagonal Gaussian, summed over action dimensions."""
    z = (action - mean) * jnp.exp(-log_std)
    return jnp.sum(-0.5 * z**2 - log_std - 0.5 * jnp.log(2 * jnp.pi), axis=-1)


class StateValue(nn.Module):
    """V(s)."""

    config: NetworkConfig

    @nn.compact
    def __call__(self, obs, train: bool = False):
        return _mlp(self.config, 1)(obs, train).squeeze(-1)


class TwinQ(nn.Module):
    """Two independent Q(s, a) networks in one module; returns both, shape (2, batch).

    They are one *network* for Sparse-Reg: their weights compete in one global top-k,
    as in the paper's code where both heads live in one critic module.
    """

    config: NetworkConfig

    @nn.compact
    def __call__(self, obs, action, train: bool = False):
        ensemble = nn.vmap(
            MLP,
            variable_axes={"params": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=None,
            out_axes=0,
            axis_size=2,
        )
        c = self.config
        x = jnp.concatenate([obs, action], axis=-1)
        return ensemble(c.hidden_dims, 1, c.dropout, c.layer_norm, c.spectral_norm, c.kernel_init)(x, train).squeeze(-1)
