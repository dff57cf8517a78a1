"""museval evaluation of whole tracks (BSSEval v4) on test, and every N validation epochs.

On test, the estimates are those the test step made: the SeparationModule separates every
whole test track with its overlap-add ``separate()`` and returns them from ``test_step``
(``{"estimates": (B, S, C, T)}``), and this callback queues them for scoring as each batch
ends, so no track is separated twice. Scoring runs in worker processes (museval is
single-threaded and slow), overlapping the test loop's next tracks. A track the test loop
did not hand over (another split, ``callbacks.museval.test_split``; a limited test loop)
is separated here, in this process, on the module's device, with the same ``separate()``.

Validation sees excerpts, not whole tracks: after every ``every_n_val_epochs``-th
validation epoch the whole validation tracks are separated here.

One JSON per track in museval's format goes to ``<output_dir>/<split>/<track>.json``;
museval's ``EvalStore`` aggregates them (median over frames, then over tracks), and the
aggregate goes to the loggers, to ``<output_dir>/<split>_aggregate.json`` and, in memory,
to :attr:`MusevalCallback.aggregates` (what ``eval.py``'s report shows).
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
from collections.abc import Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch
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


@dataclass
class MusevalResult:
    """The aggregate of one evaluation (rank zero): ``record`` is what
    ``<tag>_aggregate.json`` holds, ``rows`` the per-track table (one dict per track and
    target, :data:`TABLE_COLUMNS`)."""

    tag: str
    record: dict
    rows: list[dict]


@dataclass
class _Evaluation:
    """One split being evaluated on this rank: what is scored, where it goes, and the
    worker pool."""

    stage: str
    split: str
    tag: str
    dataset: object
    plan: EstimatePlan
    settings: ScoreSettings
    folder: Path
    names: list[str]
    identities: list[dict]
    paths: list[Path]
    todo: list[int]
    reused: list[str]
    # where each model target's reference sits in a test batch's targets, when the mode's
    # references are all model targets (None: read them with the split's tracks)
    reference_rows: list[int] | None
    start: float = field(default_factory=time.perf_counter)
    submitted: set[int] = field(default_factory=set)
    handed_over: list[str] = field(default_factory=list)
    separated: list[str] = field(default_factory=list)
    pool: ProcessPoolExecutor | None = None
    pending: dict[Future, str] = field(default_factory=dict)

    def wants(self, i: int | None) -> bool:
        return i is not None and i in self._todo_set and i not in self.submitted

    def __post_init__(self) -> None:
        self._todo_set = set(self.todo)
        self.index = {name: i for i, name in enumerate(self.names)}


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
        test_split: the split scored on test. The test loop's own split (the datamodule's
            ``test_split``, else ``test``) is scored from the test step's estimates; another
            one is separated here after the test loop.
        val_split: the split scored after validation epochs.
        output_dir: where the JSON files go (default ``<run dir>/museval``). A track whose
            complete JSON with the same settings is already there is not scored again:
            point this at an interrupted run's folder to resume it.

    DDP: rank ``r`` scores tracks ``r, r + world_size, ...`` (the ones Lightning's
    distributed sampler gives its test loop; a padded repeat of another rank's track is
    left to that rank), and rank zero aggregates every track's JSON.
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
        # what the latest evaluation did on this rank: folder, tracks scored and reused,
        # which of them the test step handed over and which were separated here
        self.last_run: dict | None = None
        # the latest aggregate of each stage ("test", "val"), on rank zero
        self.aggregates: dict[str, MusevalResult] = {}
        self._current: _Evaluation | None = None

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

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._abandon()
        if self.test_split == getattr(trainer.datamodule, "test_split", "test"):
            self._current = self._begin(
                trainer, pl_module, "test", self.test_split, self.test_backend, self.test_split
            )

    def on_test_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        """Queue the whole-track estimates the test step returned for scoring."""
        run = self._current
        if run is None or run.stage != "test":
            return
        estimates = outputs.get("estimates") if isinstance(outputs, Mapping) else None
        names = batch.get("name") if isinstance(batch, Mapping) else None
        if estimates is None or names is None:
            return  # nothing handed over: separated here at the end of the test epoch
        for b, name in enumerate(names):
            i = run.index.get(name)
            if not run.wants(i):  # another rank's track, or one already scored
                continue
            references = None
            if run.reference_rows is not None and "targets" in batch:
                references = batch["targets"][b][run.reference_rows]
            self._submit(run, i, estimates[b], batch["mixture"][b], references)
            run.handed_over.append(name)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        run, self._current = self._current, None
        if run is None:
            self.evaluate(
                trainer, pl_module, "test", self.test_split, self.test_backend, self.test_split
            )
        else:
            self._complete(trainer, pl_module, run)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._abandon()

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._abandon()

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
        """Separate and score this rank's share of the ``split`` tracks into
        ``<root>/<tag>/``, then (rank zero) aggregate every track's JSON, write the outputs
        and log them."""
        self._abandon()
        return self._complete(trainer, pl_module, self._begin(trainer, pl_module, stage, split, backend, tag))

    def _begin(self, trainer, pl_module, stage: str, split: str, backend: str, tag: str) -> _Evaluation:
        """What this rank scores of ``split``: its share of the tracks, less those whose
        complete JSON is already in ``<root>/<tag>/``."""
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
        covered = set(MODES[mode]) <= set(model_targets)
        return _Evaluation(
            stage=stage,
            split=split,
            tag=tag,
            dataset=dataset,
            plan=plan,
            settings=settings,
            folder=folder,
            names=names,
            identities=identities,
            paths=paths,
            todo=todo,
            reused=[names[i] for i in mine if i not in todo],
            reference_rows=[model_targets.index(t) for t in MODES[mode]] if covered else None,
        )

    def _submit(
        self,
        run: _Evaluation,
        i: int,
        estimates: torch.Tensor,
        mixture: torch.Tensor,
        references: torch.Tensor | None = None,
    ) -> None:
        """Queue track ``i`` for scoring: the model's estimates ``(S_model, C, T)`` of its
        ``mixture`` ``(C, T)``, formed into the mode's estimates; ``references`` ``(S_mode,
        C, T)`` (None: read with the track)."""
        name = run.names[i]
        run.submitted.add(i)
        if references is None:
            references = run.dataset[i]["targets"]
        estimates = run.plan(estimates.detach().cpu(), mixture.detach().cpu())
        references = references.detach().cpu()
        if estimates.shape != references.shape:
            n = min(estimates.shape[-1], references.shape[-1])
            log.warning(
                f"museval: the estimates of {name!r} {tuple(estimates.shape)} and its references "
                f"{tuple(references.shape)} differ in length; both are cut to {n} samples"
            )
            estimates, references = estimates[..., :n], references[..., :n]
        job = TrackJob(
            name=name,
            # (S, C, T) -> (S, T, C), museval's layout
            references=references.transpose(1, 2).numpy(),
            estimates=estimates.transpose(1, 2).float().numpy(),
            settings=run.settings,
            path=str(run.paths[i]),
            identity=run.identities[i],
        )
        if self.workers == 0:
            self._finish(name, functools.partial(evaluate_track, job))
            return
        if run.pool is None:
            run.pool = ProcessPoolExecutor(
                max_workers=min(self.workers, len(run.todo)),
                # spawn: a fork would copy this process's threads and CUDA state
                mp_context=multiprocessing.get_context("spawn"),
                # the pool is the parallelism: one BLAS / torch thread per worker; and an
                # allocator that keeps freed memory for the next track
                initializer=evaluation_worker,
                initargs=(1,),
            )
        # at most `workers` tracks wait for scoring: memory stays bounded while the pool
        # stays busy
        while len(run.pending) >= self.workers:
            done, _ = wait(run.pending, return_when=FIRST_COMPLETED)
            for future in done:
                self._finish(run.pending.pop(future), future.result)
        run.pending[run.pool.submit(evaluate_track, job)] = name
        log.debug(f"museval: queued {name!r} ({len(run.submitted)}/{len(run.todo)})")

    def _separate_rest(self, run: _Evaluation, pl_module: L.LightningModule) -> None:
        """Separate here the tracks of ``run`` that nobody handed over, and queue them."""
        rest = [i for i in run.todo if i not in run.submitted]
        if not rest:
            return
        was_training = pl_module.training
        pl_module.eval()
        try:
            with torch.no_grad():
                for i in rest:
                    track = run.dataset[i]
                    estimates = pl_module.separate(track["mixture"])
                    self._submit(run, i, estimates, track["mixture"], track["targets"])
                    run.separated.append(track["name"])
        finally:
            pl_module.train(was_training)

    def _complete(self, trainer, pl_module, run: _Evaluation) -> Aggregate | None:
        """Score what is left of ``run``, wait for the workers, then (rank zero) aggregate,
        write and log."""
        self._current = run
        try:
            self._separate_rest(run, pl_module)
            for future in wait(run.pending).done:
                self._finish(run.pending.pop(future), future.result)
        finally:
            self._current = None
            if run.pool is not None:
                run.pool.shutdown(wait=True, cancel_futures=True)
        self.last_run = {
            "folder": run.folder,
            "evaluated": [run.names[i] for i in run.todo],
            "reused": run.reused,
            "handed_over": run.handed_over,
            "separated": run.separated,
            "seconds": time.perf_counter() - run.start,
        }
        settings = run.settings
        log.info(
            f"museval {run.tag} ({settings.mode}, {settings.backend}): {len(run.todo)} track(s) "
            f"scored in {self.last_run['seconds']:.1f} s ({len(run.handed_over)} from the test "
            f"step, {len(run.separated)} separated here), {len(run.reused)} reused from {run.folder}"
        )
        trainer.strategy.barrier("museval")
        if not trainer.is_global_zero:
            return None
        docs = {name: read_scores(path) for name, path in zip(run.names, run.paths, strict=True)}
        missing = [
            n
            for n, i in zip(run.names, run.identities, strict=True)
            if not is_complete(docs[n], settings, i)
        ]
        if missing:
            raise MusevalError(
                f"no complete museval scores for {missing} in {run.folder} after every rank "
                "finished; a rank or worker failed: see the log above"
            )
        result = aggregate(docs, settings.targets)
        rows = [[row[c] for c in TABLE_COLUMNS] for row in result.rows]
        record = self._record(run, trainer, result)
        self._write(run, record, result, rows)
        self._log(trainer, pl_module, run.stage, result, rows)
        self.aggregates[run.stage] = MusevalResult(run.tag, record, result.rows)
        return result

    def _abandon(self) -> None:
        """Stop the workers of an evaluation that will not complete (an exception)."""
        run, self._current = self._current, None
        if run is not None and run.pool is not None:
            run.pool.shutdown(wait=False, cancel_futures=True)

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

    # -- outputs ------------------------------------------------------------------------
    @staticmethod
    def _record(run: _Evaluation, trainer: L.Trainer, result: Aggregate) -> dict:
        """What ``<tag>_aggregate.json`` holds."""
        settings = run.settings
        return {
            "split": run.split,
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
            "track_folder": str(run.folder),
        }

    def _write(self, run: _Evaluation, record: dict, result: Aggregate, rows: list[list]) -> None:
        """``<tag>_aggregate.json`` and the per-track table as ``<tag>_tracks.csv`` and
        ``.md``, beside the track folder (museval's loaders glob every JSON inside it)."""
        tag, folder, settings = run.tag, run.folder, run.settings
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

    # -- eval.py's report -----------------------------------------------------------------
    def report(self, out: Path, stage: str = "test"):
        """The ``stage`` aggregate as a :class:`~audiolab.reports.Report` (None before one
        was made here): the scores per target (median over frames, then over tracks) and
        box plots of the per-track values (median over frames), drawn into ``out``."""
        from audiolab.reports import Report, pyplot, save_figure

        result = self.aggregates.get(stage)
        if result is None:
            return None
        data, report = result.record, Report()
        scores = data["scores"]
        rows = [[t, *[scores[t][m] for m in METRICS]] for t in scores]
        report.headline += [(f"museval/sdr_{t}", scores[t]["SDR"], None) for t in scores]
        frames = data["settings"]["window_seconds"]
        report.sections.append(
            f"## museval (BSSEval v4, mode `{data['mode']}`, backend `{data['backend']}`)\n\n"
            f"Median over {frames:g}-s frames, then over {len(data['tracks'])} tracks of split "
            f"`{data['split']}`.\n\n" + markdown_table(["target", *METRICS], rows)
        )
        if result.rows:
            plt = pyplot()
            targets = list(scores)
            fig, axes = plt.subplots(1, 2, figsize=(2.2 * len(targets) + 3, 3.6))
            for ax, metric in zip(axes, ("SDR", "uSDR"), strict=True):
                values = [[r[metric] for r in result.rows if r["target"] == t] for t in targets]
                ax.boxplot(values, showmeans=True)
                ax.set_xticks(range(1, len(targets) + 1), targets)
                ax.set_ylabel(f"{metric} (dB)")
                ax.set_title("museval SDR, median over frames" if metric == "SDR" else "whole-track uSDR")
            name = save_figure(fig, Path(out) / "sdr_per_track.png")
            report.sections.append(
                f"Per-track scores ({result.tag}_tracks.csv):\n\n![per-track SDR](report/{name})\n"
            )
        return report
