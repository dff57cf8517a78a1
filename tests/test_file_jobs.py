"""The per-file runner behind predict.py and separate.py (audiolab.utils.file_jobs), with
stand-in tools: signals in the middle of a file and while a file is committed, a tool that
forgets an output, a damaged settings record."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from audiolab.utils import file_jobs
from audiolab.utils.errors import AudiolabError
from audiolab.utils.file_jobs import FileJob, finish, run_jobs

SETTINGS = {"model": "stand-in", "gain": 0.5}


def jobs_for(tmp_path: Path, *names: str) -> list[FileJob]:
    jobs = []
    for name in names:
        source = tmp_path / "in" / f"{name}.wav"
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_bytes(b"stand-in")
        folder = tmp_path / "out" / name
        jobs.append(FileJob(source, (folder / "one.txt", folder / "two.txt"), folder / "settings.json"))
    return jobs


def write_all(job: FileJob) -> None:
    for output in job.outputs:
        job.partial(output).write_text(f"{output.name} of {job.source.name}\n")


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def test_a_signal_mid_file_removes_its_partial_files_and_folder(tmp_path, capsys):
    jobs = jobs_for(tmp_path, "a", "b", "c")

    def produce(job: FileJob) -> None:
        write_all(job)
        if job.source.stem == "b":
            os.kill(os.getpid(), signal.SIGINT)  # delivered before the next line runs
            raise AssertionError("the signal did not stop the file")

    before = signal.getsignal(signal.SIGINT)
    tally = run_jobs(jobs, SETTINGS, produce)
    assert signal.getsignal(signal.SIGINT) is before  # the run's handlers are gone
    assert tally.interrupted == (signal.SIGINT, jobs[1].source)
    assert files_under(tmp_path / "out") == {"a/one.txt", "a/two.txt", "a/settings.json"}
    assert not (tmp_path / "out" / "b").exists()
    with pytest.raises(SystemExit) as info:
        finish(tally, "stood in for", tmp_path / "out", SETTINGS)
    assert info.value.code == 130
    out, err = capsys.readouterr()
    assert f"stood in for 1 of 3 files into {tmp_path / 'out'} (1 written, 0 kept, 0 failed, 2 not done)" in out
    assert f"interrupted by SIGINT during {jobs[1].source}: its partial outputs were removed" in err


def test_a_signal_while_a_file_is_committed_waits_for_it(tmp_path, monkeypatch):
    jobs = jobs_for(tmp_path, "a", "b")
    write_record = file_jobs._write_record

    def record_then_signal(job, settings):
        os.kill(os.getpid(), signal.SIGTERM)  # held: the outputs and the record still go in place
        write_record(job, settings)

    monkeypatch.setattr(file_jobs, "_write_record", record_then_signal)
    produced = []
    tally = run_jobs(jobs, SETTINGS, lambda job: (produced.append(job), write_all(job)))
    assert [j.source.stem for j in produced] == ["a"] and tally.written == [jobs[0]]
    assert tally.interrupted == (signal.SIGTERM, None)  # between two files
    assert files_under(tmp_path / "out") == {"a/one.txt", "a/two.txt", "a/settings.json"}
    record = json.loads((tmp_path / "out" / "a" / "settings.json").read_text())
    assert record == {"input": str(jobs[0].source.resolve()), "outputs": ["one.txt", "two.txt"], "settings": SETTINGS}


def test_a_tool_that_forgets_an_output_is_a_bug_not_a_file(tmp_path):
    jobs = jobs_for(tmp_path, "a")

    def produce_one(job: FileJob) -> None:
        job.partial(job.outputs[0]).write_text("only this\n")

    with pytest.raises(RuntimeError, match="did not write .*two.txt.partial"):
        run_jobs(jobs, SETTINGS, produce_one)
    assert not (tmp_path / "out").exists()  # nothing committed, no empty folder


def test_failed_files_are_counted_and_named_and_the_others_go_on(tmp_path):
    jobs = jobs_for(tmp_path, "a", "b", "c")

    def produce(job: FileJob) -> None:
        write_all(job)
        if job.source.stem != "b":
            raise AudiolabError("holds nothing useful")

    tally = run_jobs(jobs, SETTINGS, produce)
    assert tally.written == [jobs[1]] and [p for p, _ in tally.failed] == [jobs[0].source, jobs[2].source]
    assert files_under(tmp_path / "out") == {"b/one.txt", "b/two.txt", "b/settings.json"}
    with pytest.raises(AudiolabError) as info:
        finish(tally, "stood in for", tmp_path / "out", SETTINGS)
    assert str(info.value) == (
        f"2 of 3 files could not be read (the others were written): {jobs[0].source}: holds nothing useful; "
        f"{jobs[2].source}: holds nothing useful"
    )


def test_a_damaged_record_means_the_file_is_redone(tmp_path):
    jobs = jobs_for(tmp_path, "a")
    assert len(run_jobs(jobs, SETTINGS, write_all).written) == 1
    assert run_jobs(jobs, SETTINGS, write_all).kept == 1
    jobs[0].record.write_text("{ not json")
    tally = run_jobs(jobs, SETTINGS, write_all)
    assert len(tally.written) == 1 and tally.kept == 0
    assert json.loads(jobs[0].record.read_text())["settings"] == SETTINGS
