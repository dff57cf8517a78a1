"""Convolutional VAE for fixed-size spectrograms (channels x bins x frames).

With the defaults it is the classic FSDD sound-generation VAE: input 1 x 256 x 64;
encoder convolutions of 512, 256, 128, 64, 32 filters, kernel 3, strides 2, 2, 2, 2,
(2, 1), each followed by ReLU and batch norm; dense layers to the mean and log-variance
of a 128-d latent; a mirrored decoder of transposed convolutions; a sigmoid output.

Optional: conditioning on a class label (a CVAE: a learned embedding of the label is
appended to the latent, and to the flattened encoder features unless
``condition_encoder=False``), a learned class-conditional prior p(z | y), residual blocks
after every scale, other normalisations and activations.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "leaky_relu": lambda: nn.LeakyReLU(0.2), "gelu": nn.GELU, "silu": nn.SiLU}
NORMS = ("batch", "group", "none")


def _pair(x: int | Sequence[int]) -> tuple[int, int]:
    return (int(x), int(x)) if isinstance(x, int) else (int(x[0]), int(x[1]))


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    return nn.Identity()


class ResidualBlock(nn.Module):
    def __init__(self, channels: int, norm: str, activation: str) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            ACTIVATIONS[activation](),
            _norm(norm, channels),
            nn.Conv2d(channels, channels, 3, padding=1),
            _norm(norm, channels),
        )
        self.act = ACTIVATIONS[activation]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.body(x))


class ConvVAE(nn.Module):
    """Args:
        input_shape: (channels, bins, frames) of the spectrograms.
        filters, kernels, strides: one entry per encoder convolution (a stride may be
            an int or a (freq, time) pair); the decoder mirrors them.
        latent_dim: size of the latent.
        norm: ``batch`` | ``group`` | ``none``; activation: ``relu`` | ``leaky_relu`` |
            ``gelu`` | ``silu``. Order per layer: conv, activation, norm (as the original).
        n_classes: when > 0, a conditional VAE on labels in ``[0, n_classes)``.
        class_dim: size of the label embedding.
        condition_encoder: a conditional VAE also gives the label to the encoder.
        prior: ``standard`` (N(0, I)) or ``class`` (conditional VAEs: a learned diagonal
            Gaussian per class, initialised to N(0, I)). With a class prior the latent may
            carry the class, and prior samples of a class fall where that class's clips
            are encoded, instead of relying on the decoder to use the label.
        residual_blocks: residual blocks after every encoder and decoder scale.
        output_activation: ``sigmoid`` (inputs in [0, 1]) or ``none``.
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (1, 256, 64),
        filters: Sequence[int] = (512, 256, 128, 64, 32),
        kernels: Sequence[int] = (3, 3, 3, 3, 3),
        strides: Sequence[int | Sequence[int]] = (2, 2, 2, 2, (2, 1)),
        latent_dim: int = 128,
        norm: str = "batch",
        activation: str = "relu",
        n_classes: int = 0,
        class_dim: int = 16,
        residual_blocks: int = 0,
        output_activation: str = "sigmoid",
        condition_encoder: bool = True,
        prior: str = "standard",
    ) -> None:
        super().__init__()
        if not (len(filters) == len(kernels) == len(strides)):
            raise ValueError(f"filters, kernels and strides need one entry per layer, got {len(filters)}, {len(kernels)}, {len(strides)}")
        if norm not in NORMS or activation not in ACTIVATIONS:
            raise ValueError(f"norm must be one of {NORMS} and activation one of {sorted(ACTIVATIONS)}")
        if output_activation not in ("sigmoid", "none"):
            raise ValueError(f"output_activation must be 'sigmoid' or 'none', got {output_activation!r}")
        if prior not in ("standard", "class"):
            raise ValueError(f"prior must be 'standard' or 'class', got {prior!r}")
        if prior == "class" and n_classes <= 0:
            raise ValueError("prior='class' needs a conditional VAE: set n_classes > 0")
        self.input_shape = tuple(int(s) for s in input_shape)
        self.latent_dim = latent_dim
        self.n_classes = n_classes
        strides = [_pair(s) for s in strides]

        layers: list[nn.Module] = []
        channels = self.input_shape[0]
        height, width = self.input_shape[1:]
        for f, k, s in zip(filters, kernels, strides, strict=True):
            layers += [nn.Conv2d(channels, f, k, stride=s, padding=k // 2), ACTIVATIONS[activation](), _norm(norm, f)]
            layers += [ResidualBlock(f, norm, activation) for _ in range(residual_blocks)]
            channels = f
            height, width = -(-height // s[0]), -(-width // s[1])
        self.encoder = nn.Sequential(*layers)
        self.bottleneck_shape = (channels, height, width)
        flat = channels * height * width

        self.class_embedding = nn.Embedding(n_classes, class_dim) if n_classes > 0 else None
        cond = class_dim if n_classes > 0 else 0
        self.condition_encoder = condition_encoder and n_classes > 0
        enc_cond = cond if self.condition_encoder else 0
        self.to_mu = nn.Linear(flat + enc_cond, latent_dim)
        self.to_logvar = nn.Linear(flat + enc_cond, latent_dim)
        self.from_latent = nn.Linear(latent_dim + cond, flat)
        # per class: mean and log-variance of p(z | y); zeros = N(0, I) at the start
        self.class_prior = nn.Embedding(n_classes, 2 * latent_dim) if prior == "class" else None
        if self.class_prior is not None:
            nn.init.zeros_(self.class_prior.weight)

        layers = []
        # mirror: transposed convs for layers n-1 .. 1 with their own filters and strides,
        # then one to the input channels with the first layer's kernel and stride
        for i in reversed(range(1, len(filters))):
            k, s = kernels[i], strides[i]
            layers += [
                nn.ConvTranspose2d(channels, filters[i], k, stride=s, padding=k // 2, output_padding=(s[0] - 1, s[1] - 1)),
                ACTIVATIONS[activation](),
                _norm(norm, filters[i]),
            ]
            layers += [ResidualBlock(filters[i], norm, activation) for _ in range(residual_blocks)]
            channels = filters[i]
        k, s = kernels[0], strides[0]
        layers.append(
            nn.ConvTranspose2d(channels, self.input_shape[0], k, stride=s, padding=k // 2, output_padding=(s[0] - 1, s[1] - 1))
        )
        self.decoder = nn.Sequential(*layers)
        self.output_activation = nn.Sigmoid() if output_activation == "sigmoid" else nn.Identity()

    def _condition(self, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if self.class_embedding is None:
            return x
        if labels is None:
            raise ValueError("this VAE is conditional: pass the class labels")
        if labels.is_floating_point():
            # soft labels (B, n_classes), e.g. a blend of two classes for interpolation:
            # the embedding of a mixture is the mixture of the embeddings
            embedding = labels @ self.class_embedding.weight
        else:
            embedding = self.class_embedding(labels)
        return torch.cat([x, embedding], dim=-1)

    def encode(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of q(z | x), each ``(B, latent_dim)``."""
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"expected spectrograms of shape (B, {', '.join(map(str, self.input_shape))}), got {tuple(x.shape)}")
        h = self.encoder(x).flatten(1)
        if self.condition_encoder:
            h = self._condition(h, labels)
        return self.to_mu(h), self.to_logvar(h)

    def prior(self, labels: torch.Tensor | None, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of p(z) (or p(z | y) with a class prior), ``(B, latent_dim)``;
        ``n`` rows when there are no labels."""
        if self.class_prior is not None:
            if labels is None:
                raise ValueError("this VAE has a class-conditional prior: pass the class labels")
            return self.class_prior(labels).chunk(2, dim=-1)
        rows = n if labels is None else labels.shape[0]
        zeros = self.to_mu.weight.new_zeros(rows, self.latent_dim)
        return zeros, zeros

    def decode(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Spectrograms from latents ``(B, latent_dim)``; ``labels`` are class indices
        ``(B,)`` or class weights ``(B, n_classes)``."""
        h = self.from_latent(self._condition(z, labels)).reshape(z.shape[0], *self.bottleneck_shape)
        out = self.decoder(h)[..., : self.input_shape[1], : self.input_shape[2]]
        return self.output_activation(out)

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None):
        """``(reconstruction, mu, logvar)``."""
        mu, logvar = self.encode(x, labels)
        return self.decode(self.reparameterize(mu, logvar), labels), mu, logvar

    def sample(
        self, n: int, labels: torch.Tensor | None = None, generator: torch.Generator | None = None,
        temperature: float = 1.0,
    ) -> torch.Tensor:
        """Decode ``n`` draws from the prior (conditioned on ``labels`` for a CVAE);
        ``temperature`` scales the prior's standard deviation."""
        mu, logvar = self.prior(labels, n)
        eps = torch.randn(n, self.latent_dim, generator=generator, device=mu.device)
        return self.decode(mu + temperature * eps * torch.exp(0.5 * logvar), labels)
