"""museval evaluation of whole tracks (BSSEval v4) on test, and every N validation epochs.

Each whole track of the split is separated in this process, on the module's device, with
the module's own overlap-add ``separate()``; its estimates are scored in worker processes
(museval is single-threaded and slow), so scoring track i overlaps separating track i+1.
One JSON per track in museval's format goes to ``<output_dir>/<split>/<track>.json``;
museval's ``EvalStore`` aggregates them (median over frames, then over tracks), and the
aggregate goes to the loggers and to ``<output_dir>/<split>_aggregate.json``.
"""

from __future__ import annotations

import csv
import functools
import importlib.metadata
import io
import json
import logging
import multiprocessing
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback, WeightAveraging

from audiolab.metrics.track_eval import (
    BACKENDS,
    METRICS,
    MODES,
    Aggregate,
    EstimatePlan,
    MusevalError,
    ScoreSettings,
    TrackJob,
    aggregate,
    evaluate_track,
    is_complete,
    plan_estimates,
    read_scores,
    resolve_mode,
    write_text_atomic,
)
from audiolab.utils.media import log_table, markdown_table
from audiolab.utils.threads import evaluation_worker

log = logging.getLogger("audiolab")

TABLE_COLUMNS = ["track", "target", *METRICS, "uSDR", "cSDR"]


class MusevalCallback(Callback):
    """Score whole tracks with BSSEval v4 the way museval does, and log the aggregate.

    Args:
        mode: ``vocals_accompaniment`` (vocals scored against accompaniment), ``four_stems``
            (vocals, drums, bass, other against each other) or ``auto`` (four_stems when the
            model separates the four stems). Missing estimates are formed from the model's
            targets (see :func:`~audiolab.metrics.track_eval.plan_estimates`); the mode and
            how each estimate was formed are recorded in every output.
        test_backend, val_backend: ``museval`` (museval itself), ``fast`` (audiolab's
            :func:`~audiolab.metrics.bss_eval.bss_eval_v4`) or ``both`` (museval's scores are
            written; the largest difference per metric is recorded and a warning is given
            above ``tolerance_db``).
        every_n_val_epochs: also evaluate the ``val_split`` tracks after every N-th
            validation epoch (0: never).
        workers: scoring processes per rank (0: score in this process, one track after
            the other).
        window_seconds, hop_seconds: BSSEval frames (museval: 1 s and 1 s); the cSDR chunks
            are ``window_seconds`` long.
        output_dir: where the JSON files go (default ``<run dir>/museval``). A track whose
            complete JSON with the same settings is already there is not scored again:
            point this at an interrupted run's folder to resume it.
    """

    def __init__(
        self,
        mode: str = "auto",
        test_backend: str = "museval",
        val_backend: str = "fast",
        every_n_val_epochs: int = 0,
        workers: int = 2,
        window_seconds: float = 1.0,
        hop_seconds: float = 1.0,
        tolerance_db: float = 0.01,
        test_split: str = "test",
        val_split: str = "valid",
        output_dir: str | None = None,
    ) -> None:
        if mode != "auto":
            resolve_mode(mode, [])
        for key, value in (("test_backend", test_backend), ("val_backend", val_backend)):
            if value not in BACKENDS:
                raise MusevalError(
                    f"callbacks.museval.{key} must be one of {', '.join(BACKENDS)}; got {value!r}"
                )
        if workers < 0 or every_n_val_epochs < 0:
            raise MusevalError(
                "callbacks.museval.workers and every_n_val_epochs must be >= 0 (0: in process, "
                f"never); got {workers} and {every_n_val_epochs}"
            )
        if not (window_seconds > 0 and hop_seconds > 0):
            raise MusevalError(
                "callbacks.museval.window_seconds and hop_seconds must be positive; got "
                f"{window_seconds} and {hop_seconds}"
            )
        self.mode = mode
        self.test_backend = test_backend
        self.val_backend = val_backend
        self.every_n_val_epochs = every_n_val_epochs
        self.workers = workers
        self.window_seconds = float(window_seconds)
        self.hop_seconds = float(hop_seconds)
        self.tolerance_db = tolerance_db
        self.test_split = test_split
        self.val_split = val_split
        self.output_dir = output_dir
        # what the latest evaluation did on this rank: folder, tracks scored and reused
        self.last_run: dict | None = None

    # -- hooks --------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # A weight-averaging callback (EMA) swaps the averaged weights in when validation
        # starts and back out in its own on_validation_epoch_end; callbacks run in list
        # order, so this one must run before it to score the weights validation scored.
        # (Moving this callback to an earlier place while Lightning loops over the list
        # only shifts callbacks that have already been called.)
        callbacks = trainer.callbacks
        first = next((i for i, c in enumerate(callbacks) if isinstance(c, WeightAveraging)), None)
        mine = callbacks.index(self)
        if first is not None and first < mine:
            callbacks.insert(first, callbacks.pop(mine))

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        n = self.every_n_val_epochs
        if trainer.sanity_checking or n <= 0 or (trainer.current_epoch + 1) % n:
            return
        tag = f"{self.val_split}_epoch{trainer.current_epoch:03d}"
        self.evaluate(trainer, pl_module, "val", self.val_split, self.val_backend, tag)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.evaluate(
            trainer, pl_module, "test", self.test_split, self.test_backend, self.test_split
        )

    # -- evaluation ---------------------------------------------------------------------
    def root(self, trainer: L.Trainer) -> Path:
        """The folder of all outputs: ``output_dir`` or ``<run dir>/museval``."""
        if self.output_dir:
            return Path(self.output_dir).expanduser()
        return Path(trainer.default_root_dir) / "museval"

    def evaluate(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        stage: str,
        split: str,
        backend: str,
        tag: str,
    ) -> Aggregate | None:
        """Score this rank's share of the ``split`` tracks into ``<root>/<tag>/``, then (rank
        zero) aggregate every track's JSON, write the outputs and log them."""
        datamodule = trainer.datamodule
        if not hasattr(datamodule, "full_tracks"):
            raise MusevalError(
                "callbacks.museval scores whole MUSDB tracks: it needs data=musdb or "
                f"data=musdb_synth (a DataModule with full_tracks()), not {type(datamodule).__name__}"
            )
        if not (hasattr(pl_module, "separate") and hasattr(pl_module, "targets")):
            raise MusevalError(
                f"callbacks.museval evaluates source separation models; {type(pl_module).__name__} "
                "has no separate() and targets: use it with model=tfc_tdf, spleeter, ..."
            )
        model_targets = list(pl_module.targets)
        mode = resolve_mode(self.mode, model_targets)
        dataset = datamodule.full_tracks(split, targets=MODES[mode])
        plan = plan_estimates(mode, model_targets, datamodule.definitions)
        settings = ScoreSettings(
            mode=mode,
            targets=plan.targets,
            recipes=plan.recipes,
            backend=backend,
            sample_rate=int(datamodule.sample_rate),
            window_seconds=self.window_seconds,
            hop_seconds=self.hop_seconds,
        )
        folder = self.root(trainer) / tag
        names = [ref.name for ref in dataset.tracks]
        identities = [{"n_samples": ref.n_samples, "rate": ref.rate} for ref in dataset.tracks]
        paths = [folder / f"{name}.json" for name in names]
        # DDP: every rank scores every world_size-th track; the files are how they meet
        mine = range(trainer.global_rank, len(names), trainer.world_size)
        todo = [i for i in mine if not is_complete(read_scores(paths[i]), settings, identities[i])]
        reused = [names[i] for i in mine if i not in todo]
        start = time.perf_counter()
        self._score(pl_module, dataset, plan, settings, paths, identities, todo)
        self.last_run = {
            "folder": folder,
            "evaluated": [names[i] for i in todo],
            "reused": reused,
            "seconds": time.perf_counter() - start,
        }
        log.info(
            f"museval {tag} ({mode}, {backend}): {len(todo)} track(s) scored in "
            f"{self.last_run['seconds']:.1f} s, {len(reused)} reused from {folder}"
        )
        trainer.strategy.barrier("museval")
        if not trainer.is_global_zero:
            return None
        docs = {name: read_scores(path) for name, path in zip(names, paths, strict=True)}
        missing = [
            n
            for n, i in zip(names, identities, strict=True)
            if not is_complete(docs[n], settings, i)
        ]
        if missing:
            raise MusevalError(
                f"no complete museval scores for {missing} in {folder} after every rank finished; "
                "a rank or worker failed: see the log above"
            )
        result = aggregate(docs, settings.targets)
        rows = [[row[c] for c in TABLE_COLUMNS] for row in result.rows]
        self._write(folder, tag, split, trainer, settings, result, rows)
        self._log(trainer, pl_module, stage, result, rows)
        return result

    def _score(
        self,
        pl_module: L.LightningModule,
        dataset,
        plan: EstimatePlan,
        settings: ScoreSettings,
        paths: list[Path],
        identities: list[dict],
        todo: list[int],
    ) -> None:
        """Separate the ``todo`` tracks here and score them in the worker pool."""
        if not todo:
            return
        pool = None
        if self.workers > 0:
            pool = ProcessPoolExecutor(
                max_workers=min(self.workers, len(todo)),
                # spawn: a fork would copy this process's threads and CUDA state
                mp_context=multiprocessing.get_context("spawn"),
                # the pool is the parallelism: one BLAS / torch thread per worker; and an
                # allocator that keeps freed memory for the next track
                initializer=evaluation_worker,
                initargs=(1,),
            )
        pending: dict[Future, str] = {}
        was_training = pl_module.training
        pl_module.eval()
        try:
            for n_done, i in enumerate(todo, 1):
                track = dataset[i]
                estimates = plan(pl_module.separate(track["mixture"]), track["mixture"])
                job = TrackJob(
                    name=track["name"],
                    # (S, C, T) -> (S, T, C), museval's layout
                    references=track["targets"].transpose(1, 2).numpy(),
                    estimates=estimates.transpose(1, 2).float().numpy(),
                    settings=settings,
                    path=str(paths[i]),
                    identity=identities[i],
                )
                if pool is None:
                    self._finish(track["name"], functools.partial(evaluate_track, job))
                    continue
                # at most `workers` tracks wait for scoring: memory stays bounded while the
                # pool stays busy
                while len(pending) >= self.workers:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        self._finish(pending.pop(future), future.result)
                pending[pool.submit(evaluate_track, job)] = track["name"]
                log.debug(f"museval: separated {track['name']!r} ({n_done}/{len(todo)})")
            for future in wait(pending).done:
                self._finish(pending.pop(future), future.result)
        finally:
            pl_module.train(was_training)
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)

    @staticmethod
    def _finish(name: str, result) -> None:
        """Collect one track's result, naming the track when scoring it failed."""
        try:
            extra = result()
        except BrokenProcessPool as err:
            raise MusevalError(
                f"a museval worker process died while scoring {name!r} (out of memory?): lower "
                "callbacks.museval.workers"
            ) from err
        except ValueError as err:  # museval's and bss_eval_v4's refusals (silent sources)
            raise MusevalError(f"museval could not score track {name!r}: {err}") from err
        log.info(f"museval: scored {name!r} in {extra['seconds']:.1f} s")

    def _write(
        self,
        folder: Path,
        tag: str,
        split: str,
        trainer: L.Trainer,
        settings: ScoreSettings,
        result: Aggregate,
        rows: list[list],
    ) -> None:
        """``<tag>_aggregate.json`` and the per-track table as ``<tag>_tracks.csv`` and
        ``.md``, beside the track folder (museval's loaders glob every JSON inside it)."""
        record = {
            "split": split,
            "epoch": trainer.current_epoch,
            "mode": settings.mode,
            "backend": settings.backend,
            "settings": settings.record(),
            "museval_version": importlib.metadata.version("museval"),
            "frames_agg": "median",
            "tracks_agg": "median",
            "tracks": sorted({row["track"] for row in result.rows}),
            "scores": result.scores,
            "usdr_mean_over_tracks": result.usdr,
            "csdr_median_over_tracks": result.csdr,
            "backends": result.backends,
            "track_folder": str(folder),
        }
        base = folder.parent
        write_text_atomic(base / f"{tag}_aggregate.json", json.dumps(record, indent=2) + "\n")
        text = io.StringIO()
        writer = csv.writer(text)
        writer.writerow(TABLE_COLUMNS)
        writer.writerows(rows)
        write_text_atomic(base / f"{tag}_tracks.csv", text.getvalue())
        title = f"museval {tag}: mode {settings.mode}, backend {settings.backend}\n\n"
        write_text_atomic(base / f"{tag}_tracks.md", title + markdown_table(TABLE_COLUMNS, rows))
        if result.backends:
            worst = result.backends["max_abs_diff"]
            off = {m: v for m, v in worst.items() if v > self.tolerance_db}
            off.update(
                {
                    m: "NaN/inf positions differ"
                    for m, v in result.backends["mismatched_non_finite"].items()
                    if v
                }
            )
            if off:
                log.warning(
                    f"museval and audiolab's bss_eval_v4 disagree on {tag} beyond "
                    f"{self.tolerance_db} dB: {off} (largest |difference| per metric over all "
                    f"frames; per track in the JSON files of {folder}); museval's scores are the ones reported"
                )

    def _log(self, trainer, pl_module, stage: str, result: Aggregate, rows: list[list]) -> None:
        prefix = f"{stage}/museval"
        for target, scores in result.scores.items():
            for metric, value in scores.items():
                pl_module.log(f"{prefix}/{metric.lower()}_{target}", value, rank_zero_only=True)
            pl_module.log(f"{prefix}/usdr_{target}", result.usdr[target], rank_zero_only=True)
            pl_module.log(f"{prefix}/csdr_{target}", result.csdr[target], rank_zero_only=True)
        log_table(trainer, f"{prefix}/tracks", TABLE_COLUMNS, rows, trainer.global_step)
