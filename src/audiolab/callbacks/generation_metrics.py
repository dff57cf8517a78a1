"""Generation quality of a VAE on the test stage, measured by a classifier trained with
audiolab (``experiment=digit_classifier_fsdd``).

``samples_per_class`` prior samples per class are scored by the classifier:
``test/gen_acc`` (conditional VAEs: share classified as the requested class),
``test/gen_is`` (Inception Score) and ``test/gen_fd`` (Frechet distance of the classifier
embeddings to the real test split), beside the real data's values as reference:
``test/real_acc``, ``test/real_is`` (test split) and ``test/real_fd`` (validation vs test
split). These are whole-set metrics (not means over batches): the test batches are
collected here, and under DDP every rank scores all of them and logs the same values.
"""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from audiolab.utils.errors import AudiolabError


class GenerationMetricsCallback(Callback):
    """Inception Score, Frechet distance and accuracy of a VAE's prior samples.

    Args:
        classifier_ckpt: checkpoint of a ClassifierModule; ``None`` turns the callback off
            (``callbacks=vae`` lists it that way).
        samples_per_class: prior samples per class (at the module's ``sample_temperature``,
            seed 0).
    """

    def __init__(self, classifier_ckpt: str | None = None, samples_per_class: int = 50) -> None:
        if samples_per_class < 1:
            raise AudiolabError(
                f"callbacks.generation_metrics.samples_per_class must be >= 1, got {samples_per_class}"
            )
        self.classifier_ckpt = str(classifier_ckpt) if classifier_ckpt else None
        self.samples_per_class = int(samples_per_class)
        self._real: list[dict[str, torch.Tensor]] = []

    @property
    def active(self) -> bool:
        return self.classifier_ckpt is not None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.active and not (hasattr(pl_module, "sample") and hasattr(pl_module, "conditional")):
            raise AudiolabError(
                "callbacks.generation_metrics scores a VAE's prior samples; "
                f"{type(pl_module).__name__} has no sample(): use it with model=vae or vae_baseline"
            )

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._real = []

    def on_test_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if self.active:
            key = pl_module.hparams.label_key
            self._real.append({k: batch[k].detach() for k in ("spec", key)})

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.active:
            return
        try:
            metrics = self.compute(trainer, pl_module)
        finally:
            self._real = []
        pl_module.log_dict(metrics, sync_dist=True)

    @torch.no_grad()
    def compute(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        """The metrics of the test batches collected so far (every rank's, under DDP)."""
        from audiolab.metrics.generation import frechet_distance, inception_score
        from audiolab.utils.checkpoint import load_module

        if not self._real:
            raise AudiolabError("callbacks.generation_metrics: the test stage saw no batches to compare with")
        device = pl_module.device
        classifier, _ = load_module(self.classifier_ckpt, device)
        key = pl_module.hparams.label_key
        n_classes = classifier.hparams.n_classes

        def score(specs: torch.Tensor):
            probs, feats = [], []
            for chunk in specs.split(128):
                feats.append(classifier.net.embed(chunk))
                probs.append(torch.softmax(classifier.net.head(feats[-1]), dim=-1))
            return torch.cat(probs), torch.cat(feats)

        real_spec = torch.cat([b["spec"] for b in self._real])
        real_labels = torch.cat([b[key] for b in self._real])
        if trainer.world_size > 1:
            # Each DDP rank saw its share of the test split (the same number of clips on
            # every rank: Lightning's sampler pads the split). IS and FD are not means over
            # clips, so every rank scores all the clips and logs the same values.
            real_spec = pl_module.all_gather(real_spec).flatten(0, 1)
            real_labels = pl_module.all_gather(real_labels).flatten(0, 1)
        real_probs, real_feats = score(real_spec)
        val_spec = torch.cat([b["spec"].to(device) for b in trainer.datamodule.val_dataloader()])
        _, val_feats = score(val_spec)

        labels = torch.arange(n_classes, device=device).repeat_interleave(self.samples_per_class)
        generator = torch.Generator(device=device).manual_seed(0)
        conditional = pl_module.conditional
        samples = torch.cat([
            pl_module.sample(len(chunk), chunk if conditional else None, generator=generator)
            for chunk in labels.split(128)
        ])
        gen_probs, gen_feats = score(samples)
        metrics = {
            "test/real_acc": (real_probs.argmax(-1) == real_labels).float().mean().item(),
            "test/real_is": inception_score(real_probs).item(),
            "test/real_fd": frechet_distance(val_feats, real_feats).item(),
            "test/gen_is": inception_score(gen_probs).item(),
            "test/gen_fd": frechet_distance(gen_feats, real_feats).item(),
        }
        if conditional:
            metrics["test/gen_acc"] = (gen_probs.argmax(-1) == labels).float().mean().item()
        return metrics
