"""One job per input file: the loop shared by ``predict.py`` and ``separate.py``, which
never drops, mixes or lies about a file.

A tool supplies two things: where the outputs of an input file go (:class:`FileJob`) and a
function that produces them. This module does everything around that:

Output folder
    :func:`check_output_folder` runs before any model is loaded: a path that is a file,
    that cannot be created (a file in its way) or that is not writable is one error line.

Inputs
    :func:`find_inputs` finds the audio files under ``input`` and leaves out everything
    under the output folder, so an output folder inside the input folder is never read back
    as input (``input=songs output=songs`` therefore finds nothing to do).

Outputs
    :func:`place_outputs` mirrors the input tree under the output folder (``in/a/x.wav``
    -> ``out/a/x...``; a single file goes to the top of ``out``) and refuses, before any
    work, two inputs that would write the same outputs (``x.wav`` and ``x.flac``), and
    outputs that would land inside the input folder but outside the output folder (an input
    folder below the output folder whose layout maps back into itself).

Settings record
    Beside each input's outputs, a small JSON file (its :attr:`FileJob.record`:
    ``out/a/x.settings.json`` for predict, ``out/a/x/settings.json`` for separate) holds
    the input's path, the names of the outputs and the settings that shaped them (model,
    decoder, chunking, ...: whatever the tool passes as ``settings``). It is written last,
    after every output of that input is in place, so a record vouches for a complete set.

Reruns into the same output folder
    An input whose outputs all exist is not redone (unless ``overwrite=true``); it is
    counted as *kept*. Kept outputs written with other settings than this run's are kept
    too - never silently: the run ends with a warning naming how many files and which
    settings differ, and that ``overwrite=true`` redoes them. Outputs with no record
    beside them (written by an older audiolab, or by hand) count as other settings. An
    input with any output missing, or with outputs its record does not list, is redone.
    Only the settings of this run are compared: a setting the record has and this run does
    not use (``voicing_threshold`` of a run with ``plot=false``) does not matter.

Writing and interruptions
    Each job's outputs are claimed as ``<output>.partial`` files when it starts, written
    there by the tool, and renamed into place together (with the record) in one step that
    a signal cannot split. SIGINT and SIGTERM stop the run: the current file's ``.partial``
    files and the folders created only for it are removed, the summary is printed and the
    process exits with 130 (SIGINT) or 143 (SIGTERM). A file that fails leaves the same
    nothing behind.

Summary
    One line counts the files exactly: ``separated 3 of 4 files into out (2 written, 1
    kept, 1 failed)``. Failed files are then one ``error:`` line (exit status 1) that gives
    each failure's reason.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from audiolab.utils.errors import AudiolabError

log = logging.getLogger("audiolab")


class OutputLocationError(AudiolabError):
    """The output folder is a file, cannot be created or is not writable."""


def partial_path(path: Path) -> Path:
    """Where ``path`` is written until it is complete."""
    return path.with_name(path.name + ".partial")


# -- the output folder ---------------------------------------------------------------------


def check_output_folder(out: str | Path) -> Path:
    """``out`` as a path, once it is clear that outputs can be written there: an existing
    writable folder, or a path whose nearest existing parent is one (nothing is created)."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise OutputLocationError(f"output {out} is a file, not a folder: pass output=<a folder>")
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise OutputLocationError(
            f"output {out} cannot be created: {existing} is a file, not a folder; pass output=<a folder>"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "it" if existing == out else existing
        raise OutputLocationError(
            f"output {out} is not writable (no permission to write in {where}); pass output=<a folder you can write to>"
        )
    return out


# -- inputs and where their outputs go -----------------------------------------------------


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def find_inputs(source: Path, out: Path) -> list[Path]:
    """The audio files of ``source``: the file itself, or every audio file of the folder
    (recursively) that is not under the output folder, when that is inside it. (An input
    folder inside the output folder is the user's choice of files; :func:`place_outputs`
    makes sure no output lands in it.)"""
    from audiolab.audio.io import find_audio_files

    real_out = out.expanduser().resolve()
    inside = source.is_dir() and _inside(real_out, source.expanduser().resolve())
    return find_audio_files(source, exclude=real_out if inside else None)


def place_outputs(files: Sequence[Path], source: Path, out: Path, place: Callable[[Path], Path]) -> list[Path]:
    """``out / place(<path of the file below source>)`` for each file (below its own folder
    for a single file): the path its outputs derive from (``a/x.csv``, ``a/x/``). Refused
    before any work: two inputs that would share one, and outputs that would land in the
    input folder outside the output folder (the next run would read them as input)."""
    base = source if source.is_dir() else source.parent
    placed = [out / place(f.relative_to(base)) for f in files]
    seen: dict[Path, Path] = {}
    for f, p in zip(files, placed, strict=True):
        if p in seen:
            raise AudiolabError(f"{seen[p]} and {f} would both write {p}: rename one of them or run them separately")
        seen[p] = f
    if source.is_dir():
        real_source = source.expanduser().resolve()
        for f, p in zip(files, placed, strict=True):
            if _inside(p.resolve(), real_source) and not _inside(out.expanduser().resolve(), real_source):
                raise AudiolabError(
                    f"the outputs of {f} would go to {p}, inside the input folder {source}, where the next run "
                    "would take them as input; pass another output folder"
                )
    return placed


@dataclass(frozen=True)
class FileJob:
    """An input file, every file its job writes, and its settings record."""

    source: Path
    outputs: tuple[Path, ...]
    record: Path

    def partial(self, output: Path) -> Path:
        """Where the tool writes ``output`` (renamed into place when the job is done)."""
        return partial_path(output)


def model_identity(ckpt: str | Path) -> dict[str, str]:
    """How a settings record names a model: a built-in name as it is; a checkpoint file by
    its absolute path and modification time (a retrained ``last.ckpt`` is another model)."""
    path = Path(str(ckpt)).expanduser()
    if not path.is_file():
        return {"model": str(ckpt)}
    modified = datetime.fromtimestamp(path.stat().st_mtime).isoformat(timespec="seconds")
    return {"model": str(path.resolve()), "model_modified": modified}


# -- settings records ----------------------------------------------------------------------

_NO_RECORD = "no settings record"


def _plain(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings as JSON gives them back (lists, not tuples or ListConfigs)."""
    return json.loads(json.dumps(settings, default=list))


def _read_record(job: FileJob) -> dict[str, Any] | None:
    try:
        record = json.loads(job.record.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("settings"), dict) else None


def _write_record(job: FileJob, settings: dict[str, Any]) -> None:
    record = {
        "input": str(job.source.resolve()),
        "outputs": [os.path.relpath(o, job.record.parent) for o in job.outputs],
        "settings": settings,
    }
    partial = partial_path(job.record)
    partial.write_text(json.dumps(record, indent=2) + "\n")
    partial.replace(job.record)


def _differences(job: FileJob, settings: dict[str, Any]) -> dict[str, Any] | None:
    """None: the job must run (an output is missing or not vouched for). Otherwise the
    settings whose recorded value differs from this run's, ``{name: old value}`` (empty:
    the same settings)."""
    if not all(o.exists() for o in job.outputs):
        return None
    if not job.record.exists():
        return {_NO_RECORD: None}
    record = _read_record(job)
    listed = {os.path.normpath(job.record.parent / name) for name in (record or {}).get("outputs", [])}
    if record is None or not all(os.path.normpath(o) in listed for o in job.outputs):
        return None
    old = record["settings"]
    return {k: old.get(k, "unset") for k, v in settings.items() if old.get(k, "unset") != v}


# -- signals -------------------------------------------------------------------------------


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived (a BaseException, like KeyboardInterrupt: nothing that
    handles errors swallows it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class SignalGuard:
    """While :meth:`installed`, SIGINT and SIGTERM raise :class:`Interrupted` wherever the
    program is, except inside :meth:`held`: there the signal waits for :meth:`check`.
    Signals after the first are ignored (the run is already cleaning up)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._holding = False

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            return
        self.signum = signum
        if not self._holding:
            raise Interrupted(signum)

    @contextmanager
    def installed(self) -> Iterator[SignalGuard]:
        if threading.current_thread() is not threading.main_thread():
            yield self  # signals are only delivered to the main thread
            return
        previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    @contextmanager
    def held(self) -> Iterator[None]:
        """A step that a signal must not cut in two."""
        self._holding = True
        try:
            yield
        finally:
            self._holding = False

    def check(self) -> None:
        """Raise :class:`Interrupted` for a signal that arrived while held."""
        if self.signum is not None:
            raise Interrupted(self.signum)


# -- the loop ------------------------------------------------------------------------------


@dataclass
class Tally:
    """What happened to each input."""

    total: int
    written: list[FileJob] = field(default_factory=list)
    kept: int = 0
    kept_other: list[dict[str, Any]] = field(default_factory=list)  # per file: {setting: old value}
    failed: list[tuple[Path, str]] = field(default_factory=list)
    interrupted: tuple[int, Path | None] | None = None  # (signal, the file it cut short)

    @property
    def written_paths(self) -> list[Path]:
        return [o for job in self.written for o in job.outputs]


def _new_folders(job: FileJob) -> list[Path]:
    """The folders this job has to create, deepest first."""
    missing: set[Path] = set()
    for folder in {o.parent for o in (*job.outputs, job.record)}:
        while not folder.exists():
            missing.add(folder)
            folder = folder.parent
    return sorted(missing, key=lambda p: len(p.parts), reverse=True)


def _clean_up(job: FileJob, created: list[Path]) -> None:
    """Remove what an unfinished job left: its ``.partial`` files and the folders made
    for it (those that hold nothing else)."""
    for path in (*job.outputs, job.record):
        partial_path(path).unlink(missing_ok=True)
    for folder in created:
        try:
            folder.rmdir()
        except OSError:
            pass  # not empty: something else lives there


def _commit(job: FileJob, settings: dict[str, Any]) -> None:
    """Rename every ``.partial`` output into place, then write the record."""
    unwritten = [p for p in map(job.partial, job.outputs) if not p.is_file() or p.stat().st_size == 0]
    if unwritten:
        raise RuntimeError(f"the job of {job.source} did not write {', '.join(map(str, unwritten))}")
    job.record.unlink(missing_ok=True)  # the old record vouches for the old outputs only
    for output in job.outputs:
        job.partial(output).replace(output)
    _write_record(job, settings)


def _named(message: str, path: Path) -> str:
    return message if path.name in message else f"{path}: {message}"


def _run_job(
    job: FileJob,
    settings: dict[str, Any],
    produce: Callable[[FileJob], None],
    overwrite: bool,
    guard: SignalGuard,
    tally: Tally,
    created: list[Path],
) -> None:
    """One input: kept, or claimed, produced and committed; or failed, or interrupted
    (:class:`Interrupted` goes on up), leaving nothing behind. ``created`` receives the
    folders made for it."""
    differences = None if overwrite else _differences(job, settings)
    if differences is not None:
        tally.kept += 1
        if differences:
            tally.kept_other.append(differences)
        return
    created += _new_folders(job)
    try:
        for folder in reversed(created):
            folder.mkdir()
        for output in job.outputs:
            job.partial(output).touch()  # claimed: this file is being worked on
        produce(job)
        with guard.held():
            _commit(job, settings)
            tally.written.append(job)
    except BaseException as exc:
        with guard.held():
            _clean_up(job, created)
        if isinstance(exc, AudiolabError):
            message = _named(str(exc), job.source)
            log.error(f"skipped: {message}")
            tally.failed.append((job.source, message))
            return
        if isinstance(exc, OSError):
            raise AudiolabError(f"could not write the outputs of {job.source}: {exc}") from None
        raise


def run_jobs(
    jobs: Sequence[FileJob],
    settings: dict[str, Any],
    produce: Callable[[FileJob], None],
    overwrite: bool = False,
) -> Tally:
    """Run ``produce(job)`` for every job whose outputs are not there yet (every job with
    ``overwrite``). ``produce`` writes each of ``job.outputs`` to ``job.partial(output)``;
    an :class:`AudiolabError` it raises fails that file only, and the others go on. A
    signal ends the loop (:attr:`Tally.interrupted`)."""
    from tqdm.auto import tqdm

    settings = _plain(settings)
    tally = Tally(len(jobs))
    guard = SignalGuard()
    with guard.installed(), tqdm(jobs, desc="files", unit="file", disable=len(jobs) == 1) as bar:
        try:
            for job in bar:
                guard.check()
                bar.set_postfix_str(job.source.name)
                created: list[Path] = []
                try:
                    _run_job(job, settings, produce, overwrite, guard, tally, created)
                except Interrupted as exc:
                    with guard.held():
                        _clean_up(job, created)  # again, in case the signal cut the first one short
                    tally.interrupted = (exc.signum, job.source)
                    break
            else:
                guard.check()  # a signal held while the last file was committed
        except Interrupted as exc:  # between two files
            tally.interrupted = (exc.signum, None)
    return tally


def _describe_differences(kept_other: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    settings = _plain(settings)
    old: dict[str, list] = {}
    for differences in kept_other:
        for name, value in differences.items():
            if value not in old.setdefault(name, []):
                old[name].append(value)
    parts = []
    for name, values in old.items():
        if name == _NO_RECORD:
            parts.append(f"{len([d for d in kept_other if _NO_RECORD in d])} without a settings record")
        else:
            was = " or ".join(json.dumps(v) for v in values)
            parts.append(f"{name} was {was}, now {json.dumps(settings[name])}")
    return "; ".join(parts)


def finish(tally: Tally, action: str, out: Path, settings: dict[str, Any], failure: str = "could not be read") -> None:
    """Print the summary line and end the run the way it went: a warning for outputs kept
    with other settings, exit status 130/143 after a signal, one error line for failures.

    ``action`` opens the summary (``separated`` -> ``separated 3 of 4 files into out
    (...)``); ``failure`` says what failed files could not be."""
    done = len(tally.written) + tally.kept
    counts = f"{len(tally.written)} written, {tally.kept} kept, {len(tally.failed)} failed"
    left = tally.total - done - len(tally.failed)
    if left:
        counts += f", {left} not done"
    print(f"{action} {done} of {tally.total} files into {out} ({counts})", flush=True)
    if tally.kept_other:
        n = len(tally.kept_other)
        log.warning(
            f"kept {n} file{'s' if n > 1 else ''} whose outputs were written with other settings "
            f"({_describe_differences(tally.kept_other, settings)}); pass overwrite=true to redo them"
        )
    if tally.interrupted is not None:
        signum, path = tally.interrupted
        cut = f"during {path}: its partial outputs were removed" if path else "between two files"
        print(
            f"interrupted by {signal.Signals(signum).name} {cut}; run the same command again to do "
            "the files not done",
            file=sys.stderr,
            flush=True,
        )
        raise SystemExit(128 + signum)
    if not tally.failed:
        return
    if tally.total == 1:
        raise AudiolabError(tally.failed[0][1])
    others = tally.total - len(tally.failed)
    if others == 0:
        rest = "none was written"
    elif tally.kept == 0:
        rest = "the others were written"
    else:
        rest = "the others were written or kept"
    raise AudiolabError(
        f"{len(tally.failed)} of {tally.total} files {failure} ({rest}): " + "; ".join(m for _, m in tally.failed)
    )
