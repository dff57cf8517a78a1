"""Spectrogram grids and audio of a VAE's reconstructions and prior samples."""

from __future__ import annotations

import logging

import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import default_collate

from audiolab.audio.features import spectrogram_to_audio
from audiolab.utils.media import figure_to_array, log_audio, log_image
from audiolab.utils.plots import as_numpy_audio, spectrogram_grid

log = logging.getLogger("audiolab")


class VAEMediaCallback(Callback):
    """After every ``every_n_epochs`` validation epoch (rank zero only): a grid of
    ``n_items`` validation spectrograms (spread evenly over the validation set), their reconstructions and as many prior
    samples (conditioned on the same labels for a conditional VAE), and ``n_audio`` of
    each as sound (Griffin-Lim, for linear log-spectrogram features).

    The media go to the run folder (``media/``) and to W&B / TensorBoard when used."""

    def __init__(self, n_items: int = 8, n_audio: int = 2, every_n_epochs: int = 1, griffin_lim_iters: int = 32, seed: int = 0) -> None:
        self.n_items = n_items
        self.n_audio = n_audio
        self.every_n_epochs = every_n_epochs
        self.griffin_lim_iters = griffin_lim_iters
        self.seed = seed

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        loader = trainer.val_dataloaders
        dataset = (loader[0] if isinstance(loader, list) else loader).dataset
        # items spread evenly over the validation set (it is ordered: all of one digit first)
        picks = torch.linspace(0, len(dataset) - 1, min(self.n_items, len(dataset))).round().long().tolist()
        batch = default_collate([dataset[i] for i in picks])
        batch = {k: v.to(pl_module.device) for k, v in batch.items()}
        labels = pl_module.labels(batch)
        was_training = pl_module.training
        pl_module.eval()
        generator = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        recon = pl_module.reconstruct(batch["spec"], labels)
        samples = pl_module.sample(len(batch["spec"]), labels, generator=generator)
        pl_module.train(was_training)

        step = trainer.global_step
        titles = [f"digit {int(d)}" for d in batch["digit"]] if "digit" in batch else None
        figure = spectrogram_grid({"input": batch["spec"], "reconstruction": recon, "prior sample": samples}, titles)
        log_image(trainer, "val/spectrograms", figure_to_array(figure), step)
        self._log_audio(trainer, pl_module, batch, recon, samples, step)

    def _log_audio(self, trainer, pl_module, batch, recon, samples, step) -> None:
        hp = getattr(trainer.datamodule, "hparams", {})
        if hp.get("feature") != "log_spectrogram" or self.n_audio <= 0:
            return
        n = min(self.n_audio, len(recon))
        lo, hi = batch["min"][:n], batch["max"][:n]
        prior_lo, prior_hi = pl_module.db_range[0].expand(n), pl_module.db_range[1].expand(n)
        length = round(hp["duration"] * hp["sample_rate"])
        kwargs = dict(n_fft=hp["n_fft"], hop_length=hp["hop_length"], n_iter=self.griffin_lim_iters, length=length)
        for name, spec, a, b in (
            ("reconstruction", recon[:n], lo, hi),
            ("prior_sample", samples[:n], prior_lo, prior_hi),
        ):
            waves = spectrogram_to_audio(spec, a, b, **kwargs)
            for i, wave in enumerate(waves):
                log_audio(trainer, f"val/audio/{name}_{i}", as_numpy_audio(wave), hp["sample_rate"], step)
