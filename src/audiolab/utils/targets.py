"""What a stored config may build.

A checkpoint carries its run config (``checkpoint["audiolab"]["config"]``), and ``eval.py``,
``predict.py``, ``separate.py``, ``generate.py``, ``resume=`` and
:func:`audiolab.utils.checkpoint.load_module` rebuild the model and data from it with
``hydra.utils.instantiate``. ``weights_only=True`` keeps the tensors from running code, but
``instantiate`` calls whatever ``_target_`` names: ``{_target_: builtins.open, _args_: [f, w]}``
would empty ``f``. So every ``_target_`` of a stored config is looked up in
:data:`ALLOWED_TARGETS` before anything is imported or called.

The registry is explicit, one dotted path per class (or factory) that audiolab's configs
build: a package prefix would not do, since a function of ``audiolab`` that writes files is
no safer than ``builtins.open``. A new class that configs should build is added here (the
test ``tests/test_targets.py`` fails for a ``_target_`` in ``conf/`` that is missing)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from audiolab.utils.errors import CheckpointError

ALLOWED_TARGETS: frozenset[str] = frozenset(
    {
        # task modules
        "audiolab.models.classifier.ClassifierModule",
        "audiolab.models.pitch.PitchModule",
        "audiolab.models.separation.SeparationModule",
        "audiolab.models.vae.VAEModule",
        "audiolab.models.classifier.SpecAugment",
        # networks
        "audiolab.nets.conv_vae.ConvVAE",
        "audiolab.nets.crepe.Crepe",
        "audiolab.nets.gmm.ClassGaussianMixture",
        "audiolab.nets.harmonic_pitch.HarmonicPitchNet",
        "audiolab.nets.spec_classifier.SpecClassifier",
        "audiolab.nets.spleeter.SpleeterUNet",
        "audiolab.nets.tfc_tdf.TfcTdfUNet",
        # data
        "audiolab.data.fsdd.FsddDataModule",
        "audiolab.data.musdb.MusdbDataModule",
        "audiolab.data.pitch_eval.PitchEvalDataModule",
        "audiolab.data.pitch_mix.PitchMixDataModule",
        "audiolab.data.pitch_mix.SpeechSource",
        "audiolab.data.pitch_mix.SynthSource",
        "audiolab.data.pitch_mix.TeacherSource",
        "audiolab.data.slakh.SlakhDataModule",
        "audiolab.data.synth_pitch.SynthPitchDataModule",
        # losses and metrics
        "audiolab.losses.separation.MultiResolutionStftLoss",
        "audiolab.losses.separation.SeparationLoss",
        "audiolab.losses.separation.SpectrogramLoss",
        "audiolab.losses.separation.WaveformL1",
        "audiolab.metrics.pitch.OverallAccuracy",
        "audiolab.metrics.pitch.RawChromaAccuracy",
        "audiolab.metrics.pitch.RawPitchAccuracy",
        "audiolab.metrics.pitch.VoicingFalseAlarm",
        "audiolab.metrics.pitch.VoicingRecall",
        "audiolab.metrics.separation.MeanUsdr",
        "audiolab.metrics.spectral.LogSpectralDistance",
        # callbacks
        "audiolab.callbacks.generation_metrics.GenerationMetricsCallback",
        "audiolab.callbacks.museval.MusevalCallback",
        "audiolab.callbacks.vae_media.VAEMediaCallback",
        "audiolab.callbacks.weights_check.WeightsCheck",
        "lightning.pytorch.callbacks.EMAWeightAveraging",
        "lightning.pytorch.callbacks.EarlyStopping",
        "lightning.pytorch.callbacks.LearningRateMonitor",
        "lightning.pytorch.callbacks.ModelCheckpoint",
        "lightning.pytorch.callbacks.RichModelSummary",
        "lightning.pytorch.callbacks.RichProgressBar",
        # loggers
        "audiolab.utils.loggers.wandb_logger",
        "lightning.pytorch.loggers.csv_logs.CSVLogger",
        "lightning.pytorch.loggers.tensorboard.TensorBoardLogger",
        # trainer, strategies, profilers
        "lightning.pytorch.trainer.Trainer",
        "audiolab.utils.distributed.HydraDDPStrategy",
        "lightning.pytorch.profilers.SimpleProfiler",
        "lightning.pytorch.profilers.AdvancedProfiler",
        # optimizers and schedulers
        "torch.optim.Adam",
        "torch.optim.AdamW",
        "torch.optim.SGD",
        "torch.optim.RMSprop",
        "torch.optim.lr_scheduler.CosineAnnealingLR",
        "torch.optim.lr_scheduler.ExponentialLR",
        "torch.optim.lr_scheduler.OneCycleLR",
        "torch.optim.lr_scheduler.ReduceLROnPlateau",
        "torch.optim.lr_scheduler.StepLR",
    }
)


def iter_targets(node: Any, where: str = "") -> Iterator[tuple[str, Any]]:
    """``(key path, value)`` of every ``_target_`` in a nested config (mappings and lists),
    in the order ``hydra.utils.instantiate`` would meet them."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            path = f"{where}.{key}" if where else str(key)
            if key == "_target_":
                yield path, value
            else:
                yield from iter_targets(value, path)
    elif isinstance(node, Sequence) and not isinstance(node, str | bytes):
        for i, value in enumerate(node):
            yield from iter_targets(value, f"{where}[{i}]")


def check_targets(config: Any, source: str) -> None:
    """Raise a :class:`CheckpointError` naming the first ``_target_`` of ``config`` that is
    not in :data:`ALLOWED_TARGETS` (nothing is imported or called). ``source`` names where
    the config came from (a checkpoint path) for the message."""
    if isinstance(config, DictConfig | ListConfig):
        # interpolations resolved as instantiate would resolve them; a missing value stays
        config = OmegaConf.to_container(config, resolve=True, throw_on_missing=False)
    for path, target in iter_targets(config):
        if not isinstance(target, str) or target not in ALLOWED_TARGETS:
            raise CheckpointError(
                f"{source}: its stored config asks to build {path} = {target!r}, which is not a "
                "class audiolab builds from a stored config; refusing to load it (nothing was "
                "called). Only load checkpoints you trust; a class of your own belongs in "
                "audiolab.utils.targets.ALLOWED_TARGETS"
            )
