"""VAE spectrogram generation task: one LightningModule for (conditional) VAEs."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from audiolab.audio.features import min_max_denormalise
from audiolab.metrics.spectral import LogSpectralDistance
from audiolab.models.base import TaskModule
from audiolab.nets.gmm import ClassGaussianMixture
from audiolab.reports import Report, save_figure, test_items
from audiolab.utils.media import markdown_table

RECON_LOSSES = ("mse", "sse", "gaussian")
LATENT_PRIORS = ("model", "gmm")
REPORT_ROWS = [  # (metric, reference metric or None, description) of eval.py's report
    ("test/lsd", None, "log-spectral distance of test reconstructions (dB)"),
    ("test/mse", None, "MSE of test reconstructions (normalised spectrograms)"),
    ("test/gen_acc", "test/real_acc", "conditioned samples classified as their digit (ref: real test clips)"),
    ("test/gen_is", "test/real_is", "Inception Score (ref: real test split)"),
    ("test/gen_fd", "test/real_fd", "Frechet distance to the test split (ref: validation vs test)"),
]


class VAEModule(TaskModule):
    """Trains a VAE on normalised spectrograms.

    Batches are dicts with ``spec`` ``(B, C, bins, frames)`` in [0, 1], the clips' ``min``
    and ``max`` (dB, to measure the log-spectral distance in dB) and, for a conditional
    net, the label named by ``label_key``.

    Loss: ``recon_weight * recon + beta * KL``, where ``recon`` is ``mse`` (mean over every
    value: the classic recipe, with ``recon_weight`` 1e6), ``sse`` (sum over the values of
    an item, mean over items) or ``gaussian`` (the Gaussian negative log-likelihood of an
    item with one shared variance at its maximum-likelihood value, the batch MSE: a
    sigma-VAE, whose balance of reconstruction and KL needs no tuning); ``beta`` ramps linearly from 0 to ``kl_weight`` over
    ``kl_warmup_steps``; with ``free_bits`` > 0 every latent dimension's KL (batch mean) is
    floored at that many nats, so the encoder is not pushed to ignore the input.

    Generation quality (``test/gen_is``, ``test/gen_fd``, ...) is measured by
    :class:`~audiolab.callbacks.generation_metrics.GenerationMetricsCallback`
    (``callbacks.generation_metrics.classifier_ckpt``).

    Args:
        net: a network with ``encode``, ``decode``, ``forward`` and ``sample`` (ConvVAE).
        optimizer, scheduler: partials (``_partial_: true``).
        label_key: batch key of the class label for a conditional net (``n_classes`` > 0).
        latent_prior: ``model`` samples the network's own prior (N(0, I) or its learned
            class prior); ``gmm`` samples a mixture of ``prior_components`` diagonal
            Gaussians per class fitted to the training set's posterior means after every
            validation epoch (an ex-post density estimate: it follows the modes the
            decoder was trained on, e.g. the speakers of a digit).
        sample_temperature: the default temperature of prior samples (the generation
            metrics, logged media, ``generate.py`` without ``temperature=``): it scales the
            prior's standard deviation, 1 being the prior itself. Below 1 the samples keep
            closer to the modes of each class (the "reduced temperature" sampling of Glow,
            Kingma and Dhariwal 2018).
        monitor, monitor_mode: the monitored metric (see :class:`TaskModule`).
        classifier_ckpt, samples_per_class: deprecated (configs and checkpoints of earlier
            versions): a classifier named here is handed to a
            :class:`~audiolab.callbacks.generation_metrics.GenerationMetricsCallback` that
            this module adds to the trainer (:meth:`configure_callbacks`), unless the
            trainer has one with a classifier of its own.
    """

    task = "generation"
    monitor = "val/lsd"
    monitor_mode = "min"

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., object] | None = None,
        recon_loss: str = "mse",
        recon_weight: float = 1.0e6,
        kl_weight: float = 1.0,
        kl_warmup_steps: int = 0,
        free_bits: float = 0.0,
        label_key: str = "digit",
        classifier_ckpt: str | None = None,
        samples_per_class: int | None = None,
        latent_prior: str = "model",
        prior_components: int = 10,
        sample_temperature: float = 1.0,
        monitor: str | None = None,
        monitor_mode: str | None = None,
    ) -> None:
        super().__init__(optimizer, scheduler, monitor=monitor, monitor_mode=monitor_mode)
        if recon_loss not in RECON_LOSSES:
            raise ValueError(f"unknown recon_loss {recon_loss!r}; choose one of {RECON_LOSSES}")
        if latent_prior not in LATENT_PRIORS:
            raise ValueError(f"unknown latent_prior {latent_prior!r}; choose one of {LATENT_PRIORS}")
        if not sample_temperature > 0:
            raise ValueError(f"sample_temperature must be positive (1: the prior itself), got {sample_temperature}")
        self.save_hyperparameters(
            logger=False, ignore=["net", "optimizer", "scheduler", "classifier_ckpt", "samples_per_class"]
        )
        # the deprecated arguments of the generation metrics, for configure_callbacks
        self._generation_metrics = None
        if classifier_ckpt:
            self._generation_metrics = {"classifier_ckpt": str(classifier_ckpt)}
            if samples_per_class is not None:
                self._generation_metrics["samples_per_class"] = int(samples_per_class)
        self._forwarded_callback = None
        self.net = net
        self.val_lsd = LogSpectralDistance()
        self.test_lsd = LogSpectralDistance()
        # running mean of the clips' dB min and max: turns prior samples (which have no
        # min/max of their own) back into sound without the training data
        self.register_buffer("db_range", torch.tensor([-80.0, 0.0]))
        # ex-post prior: a mixture per class fitted to the training set's encodings after
        # every validation epoch, so that each checkpoint carries the one of its weights
        self.latent_mixture = None
        if latent_prior == "gmm":
            self.latent_mixture = ClassGaussianMixture(max(getattr(net, "n_classes", 0), 1), prior_components, net.latent_dim)

    @property
    def conditional(self) -> bool:
        return getattr(self.net, "n_classes", 0) > 0

    def labels(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        return batch[self.hparams.label_key] if self.conditional else None

    # -- generation API ---------------------------------------------------------
    @torch.no_grad()
    def reconstruct(self, spec: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Decode the posterior mean (no sampling noise)."""
        mu, _ = self.net.encode(spec, labels)
        return self.net.decode(mu, labels)

    @torch.no_grad()
    def sample(
        self, n: int, labels: torch.Tensor | None = None, generator: torch.Generator | None = None,
        temperature: float | None = None,
    ) -> torch.Tensor:
        """Spectrograms decoded from the prior; ``labels`` (n,) for a conditional net;
        ``temperature`` scales the prior's standard deviation (1: the model's prior; None:
        ``sample_temperature``)."""
        if temperature is None:
            temperature = self.hparams.get("sample_temperature", 1.0)
        if self.conditional and labels is None:
            raise ValueError(f"this VAE is conditioned on {self.hparams.label_key!r}: pass labels")
        if self.latent_mixture is not None and bool(self.latent_mixture.fitted):
            classes = labels if labels is not None else torch.zeros(n, dtype=torch.long, device=self.device)
            z = self.latent_mixture.sample(classes, generator=generator, temperature=temperature)
            return self.net.decode(z, labels)
        return self.net.sample(n, labels, generator=generator, temperature=temperature)

    @torch.no_grad()
    def fit_latent_mixture(self, dataset) -> None:
        """Fit the ex-post prior to the posterior means of ``dataset`` (in order, so every
        DDP rank fits the same mixture)."""
        from torch.utils.data import DataLoader

        was_training = self.training
        self.eval()
        means, classes = [], []
        for batch in DataLoader(dataset, batch_size=256, shuffle=False):
            spec = batch["spec"].to(self.device)
            labels = batch[self.hparams.label_key].to(self.device) if self.conditional else None
            means.append(self.net.encode(spec, labels)[0])
            classes.append(labels if labels is not None else torch.zeros(len(spec), dtype=torch.long, device=self.device))
        self.train(was_training)
        self.latent_mixture.fit(torch.cat(means), torch.cat(classes))

    @torch.no_grad()
    def interpolate(
        self, spec_a: torch.Tensor, spec_b: torch.Tensor, steps: int = 8, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Decode ``steps`` points on the line between the posterior means of two clips
        ``(C, bins, frames)``; returns ``(steps, C, bins, frames)``. A conditional net takes
        ``labels``: one class for both clips, or ``(2,)`` classes, whose embeddings are then
        blended along the path with the same weights as the latents."""
        if self.conditional and labels is None:
            raise ValueError(f"this VAE is conditioned on {self.hparams.label_key!r}: pass labels")
        pair = None if labels is None else labels.reshape(-1).expand(2).to(spec_a.device)
        mu, _ = self.net.encode(torch.stack([spec_a, spec_b]), pair)
        t = torch.linspace(0, 1, steps, device=mu.device)[:, None]
        z = (1 - t) * mu[0] + t * mu[1]
        if pair is None:
            return self.net.decode(z)
        one_hot = F.one_hot(pair, self.net.n_classes).to(z.dtype)
        return self.net.decode(z, (1 - t) * one_hot[0] + t * one_hot[1])

    # -- training ---------------------------------------------------------------
    def kl_beta(self) -> float:
        warmup = self.hparams.kl_warmup_steps
        ramp = min(1.0, self.global_step / warmup) if warmup > 0 else 1.0
        return self.hparams.kl_weight * ramp

    def _losses(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["spec"]
        labels = self.labels(batch)
        recon, mu, logvar = self.net(x, labels)
        if self.hparams.recon_loss == "mse":
            rec = F.mse_loss(recon, x)
        elif self.hparams.recon_loss == "sse":
            rec = (recon - x).pow(2).flatten(1).sum(dim=1).mean()
        else:
            # Gaussian NLL per item with one variance shared by every value, set to its
            # maximum-likelihood value, the batch MSE (Rybkin et al. 2021, "sigma-VAE"):
            # the reconstruction's weight against the KL follows the actual error instead
            # of a hand-set constant
            mse = F.mse_loss(recon, x)
            rec = 0.5 * x[0].numel() * (torch.log(2 * math.pi * mse.clamp_min(1e-8)) + 1.0)
        # KL(q(z | x) || p(z)) for diagonal Gaussians; p is N(0, I) or the class prior
        prior_mu, prior_logvar = self.net.prior(labels, x.shape[0])
        kl_elem = prior_logvar - logvar + (logvar.exp() + (mu - prior_mu).pow(2)) / prior_logvar.exp() - 1.0
        kl_per_dim = 0.5 * kl_elem.mean(dim=0)
        kl = kl_per_dim.sum()
        kl_term = kl_per_dim.clamp_min(self.hparams.free_bits).sum() if self.hparams.free_bits > 0 else kl
        beta = self.kl_beta()
        loss = self.hparams.recon_weight * rec + beta * kl_term
        return {"loss": loss, "recon": rec, "kl": kl, "beta": torch.tensor(beta), "mu": mu}

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        with torch.no_grad():
            observed = torch.stack([batch["min"].mean(), batch["max"].mean()]).to(self.db_range)
            momentum = 1.0 if self.global_step == 0 else 0.01
            self.db_range.lerp_(observed, momentum)
        out = self._losses(batch)
        n = batch["spec"].shape[0]
        self.log("train/loss", out["loss"], on_step=True, on_epoch=True, prog_bar=True, batch_size=n)
        self.log_dict({f"train/{k}": out[k] for k in ("recon", "kl", "beta")}, on_epoch=True, batch_size=n)
        return out["loss"]

    def evaluation_step(self, batch: dict[str, torch.Tensor], stage: str) -> None:
        out = self._losses(batch)
        x = batch["spec"]
        # the posterior mean from the loss's encoder pass, decoded without sampling noise
        recon = self.net.decode(out["mu"], self.labels(batch))
        db_ref = min_max_denormalise(x, batch["min"][:, None], batch["max"][:, None])
        db_est = min_max_denormalise(recon, batch["min"][:, None], batch["max"][:, None])
        lsd = getattr(self, f"{stage}_lsd")
        lsd.update(db_est, db_ref)
        n = x.shape[0]
        self.log_dict(
            {f"{stage}/loss": out["loss"], f"{stage}/recon": out["recon"], f"{stage}/kl": out["kl"],
             f"{stage}/mse": F.mse_loss(recon, x)},
            on_epoch=True, batch_size=n, sync_dist=True,
        )
        self.log(f"{stage}/lsd", lsd, on_epoch=True, prog_bar=True, batch_size=n)

    def on_validation_epoch_end(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if self.latent_mixture is not None and datamodule is not None and not self.trainer.sanity_checking:
            self.fit_latent_mixture(datamodule.train_dataloader().dataset)

    def configure_callbacks(self):
        """The deprecated ``classifier_ckpt`` argument: a generation-metrics callback with
        it, unless the trainer has one with a classifier already (that one wins)."""
        if self._generation_metrics is None:
            return []
        from audiolab.callbacks.generation_metrics import GenerationMetricsCallback

        own = [
            c
            for c in self.trainer.callbacks
            if isinstance(c, GenerationMetricsCallback) and c is not self._forwarded_callback and c.active
        ]
        if own:
            rank_zero_warn(
                f"model.classifier_ckpt={self._generation_metrics['classifier_ckpt']} is ignored: "
                f"callbacks.generation_metrics.classifier_ckpt={own[0].classifier_ckpt} measures the samples"
            )
            return []
        if self._forwarded_callback is None:
            rank_zero_warn(
                "model.classifier_ckpt and model.samples_per_class are deprecated: the generation metrics "
                "are a callback, callbacks.generation_metrics.classifier_ckpt / .samples_per_class "
                "(callbacks=vae; eval.py: +callbacks=generation_metrics). Handing the classifier to it.",
                category=FutureWarning,
            )
            self._forwarded_callback = GenerationMetricsCallback(**self._generation_metrics)
        return [self._forwarded_callback]

    # -- eval.py's report ---------------------------------------------------------------
    def report(self, datamodule, metrics: dict[str, float], out: Path, trainer=None) -> Report:
        """Reconstruction and generation metrics (the latter beside the real data's values),
        and a grid of test clips, their reconstructions and prior samples."""
        from audiolab.utils.plots import spectrogram_grid

        report = Report()
        rows = []
        for key, ref, what in REPORT_ROWS:
            if key in metrics:
                reference = metrics.get(ref) if ref else None
                report.headline.append((key, metrics[key], reference))
                rows.append([key, metrics[key], "-" if reference is None else reference, what])
        report.sections.append(
            "## Reconstruction and generation\n\n"
            + markdown_table(["metric", "value", "reference", "what"], rows)
        )

        batch = test_items(datamodule, 8)
        if batch is not None and "spec" in batch:
            batch = {k: v.to(self.device) for k, v in batch.items()}
            labels = self.labels(batch)
            generator = torch.Generator(device=self.device).manual_seed(0)
            grid = {
                "test input": batch["spec"],
                "reconstruction": self.reconstruct(batch["spec"], labels),
                "prior sample": self.sample(len(batch["spec"]), labels, generator=generator),
            }
            titles = [f"digit {int(d)}" for d in batch["digit"]] if "digit" in batch else None
            name = save_figure(spectrogram_grid(grid, titles), out / "spectrograms.png")
            report.sections.append(
                "## Spectrograms\n\nTest clips spread over the split, their reconstructions (posterior mean) and "
                "prior samples conditioned on the same labels (seed 0).\n\n"
                f"![spectrograms](report/{name})\n"
            )
        return report
