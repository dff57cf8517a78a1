"""predict.py, separate.py and generate.py against bad input and bad output locations.

Each tool runs as a subprocess (``python src/<tool>.py``) where the exit status and the
``error:`` line matter; in-process (the task functions) where only the logic does. Every
case checks what was written against the exact set of files expected: outputs of good
files complete, nothing for bad ones, no ``.partial`` files, no empty folders.

Models are tiny and untrained (built from the real configs, not trained): a 2-target
TFC-TDF separator at 8 kHz and a conditional VAE, each built once per module; predict uses
the CREPE tiny weights that ship with audiolab.

Time: about two minutes on two cores (the signal and rerun cases are marked slow). The bad
input files go through one run per tool, and each case checks its own part of that run:
one subprocess per case and tool would cost a minute more (each start imports torch and
Lightning)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import REPO_ROOT, compose_config, run_cli

from audiolab.utils.errors import AudiolabError

SEP_RATE = 8000
SEP_OUTPUTS = ("vocals.wav", "drums.wav", "accompaniment.wav")  # targets + mixture - vocals
VAE_RATE, VAE_SECONDS = 22050, 0.74
EXIT_SIGTERM = 128 + signal.SIGTERM


# -- models ------------------------------------------------------------------------------


def build_checkpoint(path: Path, overrides: list[str], run_dir: Path) -> Path:
    """An audiolab checkpoint of an untrained model: the stored config of a composed train
    config and the weights it starts with (what load_module needs, nothing trained)."""
    import hydra
    import torch
    from omegaconf import OmegaConf

    cfg = compose_config("train", overrides, run_dir)
    module = hydra.utils.instantiate(cfg.model)
    config = OmegaConf.to_container(cfg, resolve=True)
    torch.save({"state_dict": module.state_dict(), "audiolab": {"format": 1, "config": config}}, path)
    return path


@pytest.fixture(scope="module")
def sep_ckpt(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sep_model")
    tiny = [
        "experiment=separation_synth",
        f"data.sample_rate={SEP_RATE}",
        "data.targets=[vocals,drums]",
        "data.chunk_seconds=0.5",
        "model.net.n_fft=256",
        "model.net.hop_length=64",
        "model.net.dim_f=128",
        "model.net.num_subbands=2",
        "model.net.num_scales=2",
        "model.net.channels=4",
        "model.net.channel_growth=4",
        "model.net.growth=4",
        "model.net.num_tfc_layers=1",
        "model.net.min_bottleneck_units=4",
    ]
    return build_checkpoint(folder / "sep.ckpt", tiny, folder / "run")


@pytest.fixture(scope="module")
def vae_ckpt(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("vae_model")
    tiny = ["data=fsdd", "model=vae", "model.net.filters=[4,4,4,4,4]", "model.net.latent_dim=4", "model.net.class_dim=2"]
    return build_checkpoint(folder / "vae.ckpt", tiny, folder / "run")


# -- input files -------------------------------------------------------------------------


def tone(seconds: float, rate: int, channels: int = 1, f0: float = 220.0) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * f0 * t) + 0.05 * np.sin(2 * np.pi * 3 * f0 * t)
    return np.repeat(wave[:, None], channels, axis=1).astype(np.float32)


def write_case(folder: Path, case: str) -> Path:
    """The file of a bad-input case in ``folder``."""
    path = folder / CASES[case].name
    path.parent.mkdir(parents=True, exist_ok=True)
    if case == "empty":
        path.write_bytes(b"")
    elif case == "text":
        path.write_text("shopping list: milk, eggs\n" * 20)
    elif case in ("truncated_header", "truncated_data"):
        sf.write(path, tone(0.5, 8000), 8000, subtype="PCM_16")  # 4000 samples, 2 bytes each
        whole = path.read_bytes()
        path.write_bytes(whole[:30] if case == "truncated_header" else whole[: 44 + 2 * 1000])
    elif case == "nan":
        audio = tone(0.5, 8000)
        audio[2000] = np.nan  # 0.250 s
        sf.write(path, audio, 8000, subtype="FLOAT")
    elif case == "one_sample":
        sf.write(path, np.array([0.1], np.float32), 96000, subtype="FLOAT")
    elif case == "six_channel_96k":
        sf.write(path, tone(0.1, 96000, channels=6), 96000, subtype="PCM_24")
    return path


@dataclass(frozen=True)
class Case:
    name: str  # the file, below the input folder
    # the error line's words about the file, per tool (predict/separate; None: it works)
    message: dict[str, str | None]


def _same(text: str | None) -> dict[str, str | None]:
    return {"predict": text, "separate": text, "generate": text}


CASES = {
    "empty": Case("empty.wav", _same("cannot read {path}: the file is empty (0 bytes)")),
    "text": Case("notes.wav", _same("cannot read {path}: not a WAV file (another format renamed, or damaged)")),
    "truncated_header": Case("cut_header.wav", _same("cannot read {path}: a damaged or truncated WAV file")),
    "truncated_data": Case(
        "cut_data.wav",
        _same("{path} is truncated: its header announces 4000 samples (0.500 s) but the file holds 1000 (0.125 s)"),
    ),
    "nan": Case("nan.wav", _same("{path} contains NaN or infinite samples (the first at 0.250 s)")),
    # 1 sample at 96 kHz: pitch tracking zero-pads it to one frame, the VAE to its clip
    # length; the separator at 8 kHz gets less than one sample
    "one_sample": Case(
        "one_sample.wav",
        {
            "predict": None,
            "separate": "{path} is too short: 1 sample at 96000 Hz, less than one at the model's 8000 Hz; "
            "the model needs at least 1 sample at 8000 Hz (6 at 96000 Hz)",
            "generate": None,
        },
    ),
    "six_channel_96k": Case("surround_96k.wav", _same(None)),  # any rate and channel count works
}
# two good files with the same name in two folders: two complete, distinct outputs
GOOD = {"a/x.wav": (1.0, SEP_RATE, 2), "b/x.wav": (0.5, 16000, 1)}  # seconds, rate, channels


def write_good(folder: Path) -> list[Path]:
    paths = []
    for name, (seconds, rate, channels) in GOOD.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, tone(seconds, rate, channels, f0=220.0 if name.startswith("a") else 330.0), rate)
        paths.append(path)
    return paths


# -- what a run should leave -------------------------------------------------------------


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()} if folder.exists() else set()


def empty_folders(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_dir() and not any(p.iterdir())]


def outputs_of(tool: str, rel: str) -> set[str]:
    """The files a good input (path below the input folder) gets in the output folder."""
    stem = str(Path(rel).with_suffix(""))
    if tool == "predict":
        return {f"{stem}.csv", f"{stem}.settings.json"}  # plot=false in these runs
    return {f"{stem}/{name}" for name in (*SEP_OUTPUTS, "settings.json")}


def pitch_frames(path: Path) -> int:
    """CREPE frames of a file: 1 + (its length at 16 kHz) // 160."""
    info = sf.info(str(path))
    return 1 + round(info.frames * 16000 / info.samplerate) // 160


def check_complete(tool: str, source: Path, out: Path, rel: str) -> None:
    """The outputs of ``source`` are all there, whole, and vouched for by their record."""
    stem = out / Path(rel).with_suffix("")
    if tool == "predict":
        table = np.loadtxt(stem.with_suffix(".csv"), delimiter=",", skiprows=1, ndmin=2)
        assert table.shape == (pitch_frames(source), 3), (rel, table.shape)
        record = json.loads(stem.with_suffix(".settings.json").read_text())
        assert record["outputs"] == [f"{stem.name}.csv"] and record["settings"]["decoder"] == "viterbi"
    else:
        info = sf.info(str(source))
        length = round(info.frames * SEP_RATE / info.samplerate)
        for name in SEP_OUTPUTS:
            audio, rate = sf.read(stem / name, always_2d=True)
            assert rate == SEP_RATE and audio.shape == (length, 2), (rel, name, audio.shape, length)
            assert np.isfinite(audio).all()
        record = json.loads((stem / "settings.json").read_text())
        assert record["outputs"] == list(SEP_OUTPUTS)
    assert record["input"] == str(source.resolve())


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The one ``error:`` line of stderr (there must be exactly one)."""
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return lines[0]


def tool_args(tool: str, sep_ckpt: Path, vae_ckpt: Path) -> list[str]:
    return {
        "predict": ["ckpt=tiny", "device=cpu", "plot=false"],
        "separate": [f"ckpt={sep_ckpt}", "device=cpu"],
        "generate": [f"ckpt={vae_ckpt}", "digit=3", "steps=2", "griffin_lim_iters=2"],
    }[tool]


# -- bad input files (predict, separate): one run per tool over a folder of them ----------


@dataclass(frozen=True)
class BadRun:
    proc: subprocess.CompletedProcess
    inputs: Path
    out: Path


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory, sep_ckpt, vae_ckpt):
    runs: dict[str, BadRun] = {}

    def run(tool: str) -> BadRun:
        if tool not in runs:
            root = tmp_path_factory.mktemp(f"bad_{tool}")
            inputs = root / "in"
            write_good(inputs)
            for case in CASES:
                write_case(inputs, case)
            out = root / "out"
            proc = run_cli(
                tool, *tool_args(tool, sep_ckpt, vae_ckpt), f"input={inputs}", f"output={out}",
                f"paths.log_dir={root / 'logs'}", check=False,
            )  # fmt: skip
            runs[tool] = BadRun(proc, inputs, out)
        return runs[tool]

    return run


def works(tool: str, case: str) -> bool:
    return CASES[case].message[tool] is None


@pytest.mark.parametrize("tool", ["predict", "separate"])
@pytest.mark.parametrize("case", [*CASES, "same_names"])
def test_bad_input_files(bad_runs, tool, case):
    run = bad_runs(tool)
    line = error_line(run.proc)
    assert run.proc.returncode == 1
    failing = [c for c in CASES if not works(tool, c)]
    action = {"predict": "could not be read", "separate": "could not be separated"}[tool]
    assert line.startswith(f"error: {len(failing)} of {len(CASES) + len(GOOD)} files {action} (the others were written): ")
    good = [*GOOD, *(CASES[c].name for c in CASES if works(tool, c))]
    if case == "same_names":
        for rel in GOOD:
            check_complete(tool, run.inputs / rel, run.out, rel)
        assert outputs_of(tool, "a/x.wav").isdisjoint(outputs_of(tool, "b/x.wav"))
    elif works(tool, case):
        check_complete(tool, run.inputs / CASES[case].name, run.out, CASES[case].name)
        assert CASES[case].name not in line
    else:
        path = run.inputs / CASES[case].name
        assert CASES[case].message[tool].format(path=path) in line
        assert f"skipped: {CASES[case].message[tool].format(path=path)}" in run.proc.stdout  # its own log line
    # nothing but the good files' outputs; a failed file leaves no folder behind
    assert files_under(run.out) == set().union(*(outputs_of(tool, rel) for rel in good))
    assert not empty_folders(run.out)
    verb = {"predict": "tracked pitch in", "separate": "separated"}[tool]
    n = len(good)
    summary = f"{verb} {n} of {n + len(failing)} files into {run.out} ({n} written, 0 kept, {len(failing)} failed)"
    assert summary in run.proc.stdout


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_files_generate(tmp_path, vae_ckpt, case):
    """generate.py reads two recordings (interpolate=[a,b]): in-process, one case each."""
    from audiolab.tasks.generate import generate

    bad = write_case(tmp_path / "in", case)
    good = write_good(tmp_path / "in")[0]
    out = tmp_path / "out"
    overrides = [*tool_args("generate", None, vae_ckpt), f"interpolate=[{bad},{good}]", f"output={out}"]
    cfg = compose_config("generate", overrides, tmp_path / "run")
    if works("generate", case):
        generate(cfg)
        assert files_under(out) == {"interp_000.wav", "interp_001.wav", "interps.png"}
        for name in ("interp_000.wav", "interp_001.wav"):
            audio, rate = sf.read(out / name)
            assert rate == VAE_RATE and audio.shape == (round(VAE_SECONDS * VAE_RATE),) and np.isfinite(audio).all()
    else:
        with pytest.raises(AudiolabError) as info:
            generate(cfg)
        assert CASES[case].message["generate"].format(path=bad) in str(info.value)
        assert not out.exists()


# -- output locations: all three tools, before the model is loaded -----------------------


OUTPUT_PROBLEMS = ("is_a_file", "under_a_file", "unwritable_folder")


def bad_output(tmp_path: Path, problem: str) -> tuple[Path, str]:
    """An output path with ``problem`` and the words the error line must hold."""
    a_file = tmp_path / "taken.txt"
    a_file.write_text("not a folder")
    if problem == "is_a_file":
        return a_file, f"output {a_file} is a file, not a folder"
    if problem == "under_a_file":
        out = a_file / "out"
        return out, f"output {out} cannot be created: {a_file} is a file, not a folder"
    if os.geteuid() == 0:
        pytest.skip("root writes into a chmod 0o500 folder anyway (under_a_file covers an unwritable path)")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    out = locked / "out"
    return out, f"output {out} is not writable (no permission to write in {locked})"


@pytest.mark.parametrize("tool", ["predict", "separate", "generate"])
@pytest.mark.parametrize("problem", OUTPUT_PROBLEMS)
def test_bad_output_location(tmp_path, tool, problem):
    out, words = bad_output(tmp_path, problem)
    good = write_good(tmp_path / "in")[0]
    before = files_under(tmp_path)
    # a checkpoint that does not exist: were it loaded first, the error would be about it
    ckpt = f"ckpt={tmp_path / 'missing.ckpt'}"
    args = {"predict": [ckpt, f"input={good}"], "separate": [ckpt, f"input={good}"], "generate": [ckpt]}[tool]
    proc = run_cli(tool, *args, f"output={out}", f"paths.log_dir={tmp_path / 'logs'}", check=False)
    assert proc.returncode == 1
    line = error_line(proc)
    assert words in line and "missing.ckpt" not in line
    assert {f for f in files_under(tmp_path) if not f.startswith("logs")} == before


@pytest.mark.parametrize("tool", ["predict", "separate", "generate"])
def test_output_is_checked_within_a_second_before_the_model(tmp_path, tool):
    from audiolab.tasks.generate import generate
    from audiolab.tasks.predict import predict_files
    from audiolab.tasks.separate import separate_files

    task = {"predict": predict_files, "separate": separate_files, "generate": generate}[tool]
    out, words = bad_output(tmp_path, "under_a_file")
    good = write_good(tmp_path / "in")[0]
    overrides = [f"ckpt={tmp_path / 'missing.ckpt'}", f"output={out}"] + ([f"input={good}"] if tool != "generate" else [])
    cfg = compose_config(tool, overrides, tmp_path / "run")
    start = time.perf_counter()
    with pytest.raises(AudiolabError, match=re.escape(words)):
        task(cfg)
    assert time.perf_counter() - start < 1.0


# -- inputs that collide, output folder inside the input folder ---------------------------


@pytest.mark.parametrize("tool", ["predict", "separate"])
def test_inputs_that_would_share_outputs_are_refused_before_any_work(tmp_path, tool):
    from audiolab.tasks.predict import predict_files
    from audiolab.tasks.separate import separate_files

    folder = tmp_path / "in"
    folder.mkdir()
    sf.write(folder / "x.wav", tone(0.1, 8000), 8000)
    sf.write(folder / "x.flac", tone(0.1, 8000), 8000)
    out = tmp_path / "out"
    task = {"predict": predict_files, "separate": separate_files}[tool]
    cfg = compose_config(tool, [f"ckpt={tmp_path / 'missing.ckpt'}", f"input={folder}", f"output={out}"], tmp_path / "run")
    with pytest.raises(AudiolabError) as info:
        task(cfg)  # about the names, not the missing checkpoint: nothing was loaded
    message = str(info.value)
    assert f"{folder / 'x.flac'} and {folder / 'x.wav'} would both write" in message
    assert "rename one of them" in message and "\n" not in message
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize("tool", ["predict", "separate"])
def test_output_inside_input_is_never_read_back(tmp_path, sep_ckpt, tool):
    inputs = tmp_path / "in"
    write_good(inputs)
    out = inputs / "out"
    # an audio file already in the output folder (an earlier run's stem): never an input
    (out / "earlier").mkdir(parents=True)
    sf.write(out / "earlier" / "vocals.wav", tone(0.2, 8000, 2), 8000)
    args = [*tool_args(tool, sep_ckpt, None), f"input={inputs}", f"output={out}", f"paths.log_dir={tmp_path / 'logs'}"]
    expected = {"earlier/vocals.wav"}.union(*(outputs_of(tool, rel) for rel in GOOD))
    verb = {"predict": "tracked pitch in", "separate": "separated"}[tool]

    first = run_cli(tool, *args)
    assert f"{verb} 2 of 2 files into {out} (2 written, 0 kept, 0 failed)" in first.stdout
    assert files_under(out) == expected
    second = run_cli(tool, *args)
    assert f"{verb} 2 of 2 files into {out} (0 written, 2 kept, 0 failed)" in second.stdout
    assert files_under(out) == expected
    for rel in GOOD:
        check_complete(tool, inputs / rel, out, rel)


# -- SIGTERM in the middle of a file ------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("tool", ["predict", "separate"])
def test_sigterm_mid_file_leaves_no_partial_output(tmp_path, sep_ckpt, tool):
    inputs = tmp_path / "in"
    inputs.mkdir()
    sf.write(inputs / "a.wav", tone(0.5, SEP_RATE, 2), SEP_RATE)  # done first (sorted)
    (inputs / "sub").mkdir()
    sf.write(inputs / "sub" / "long.wav", tone(120.0, SEP_RATE, 2), SEP_RATE, subtype="PCM_16")
    out = tmp_path / "out"
    extra = ["chunk_seconds=0.25", "batch_size=1"] if tool == "separate" else []
    cmd = [sys.executable, str(REPO_ROOT / "src" / f"{tool}.py"), *tool_args(tool, sep_ckpt, None), *extra,
           f"input={inputs}", f"output={out}", f"paths.log_dir={tmp_path / 'logs'}"]  # fmt: skip
    env = dict(os.environ, PYTHONUNBUFFERED="1", HYDRA_FULL_ERROR="0")
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list((out / "sub").rglob("*.partial")):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no .partial file of sub/long.wav appeared"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == EXIT_SIGTERM, stderr[-3000:]
    assert f"interrupted by SIGTERM during {inputs / 'sub' / 'long.wav'}" in stderr
    verb = {"predict": "tracked pitch in", "separate": "separated"}[tool]
    assert f"{verb} 1 of 2 files into {out} (1 written, 0 kept, 0 failed, 1 not done)" in stdout
    # a.wav complete; of long.wav nothing: no .partial file, no folder made for it
    assert files_under(out) == outputs_of(tool, "a.wav")
    assert not (out / "sub").exists() and not empty_folders(out)
    check_complete(tool, inputs / "a.wav", out, "a.wav")


# -- reruns into the same output folder ---------------------------------------------------


def _run(task, tool: str, overrides: list[str], run_dir: Path, capsys) -> str:
    task(compose_config(tool, overrides, run_dir))
    return capsys.readouterr().out


def test_predict_records_name_the_shipped_weights(tmp_path, capsys, caplog):
    """Outputs of the shipped `fast` model written with other weights (an earlier release)
    are kept with a warning, as for any other setting."""
    import json

    from audiolab.pitch.pretrained import shipped_weights_digest
    from audiolab.tasks.predict import predict_files

    inputs = tmp_path / "in"
    write_good(inputs)
    out = tmp_path / "out"
    base = [f"input={inputs}", f"output={out}", "device=cpu", "plot=false", "ckpt=fast"]
    _run(predict_files, "predict", base, tmp_path / "r1", capsys)
    record_path = out / "a" / "x.settings.json"
    record = json.loads(record_path.read_text())
    assert record["settings"]["model"] == "fast"
    assert record["settings"]["model_weights"] == shipped_weights_digest("fast")
    record["settings"]["model_weights"] = "0123456789abcdef"  # as if written by other weights
    record_path.write_text(json.dumps(record))
    caplog.clear()
    stdout = _run(predict_files, "predict", base, tmp_path / "r2", capsys)
    assert "(0 written, 2 kept, 0 failed)" in stdout
    assert 'kept 1 file whose outputs were written with other settings (model_weights was "0123456789abcdef"' in caplog.text


def test_predict_rerun_with_other_settings_keeps_and_says_so(tmp_path, capsys, caplog):
    from audiolab.tasks.predict import predict_files

    inputs = tmp_path / "in"
    a, b = write_good(inputs)
    out = tmp_path / "out"
    base = [f"input={inputs}", f"output={out}", "device=cpu", "plot=false"]
    stdout = _run(predict_files, "predict", [*base, "decoder=weighted_argmax"], tmp_path / "r1", capsys)
    assert "(2 written, 0 kept, 0 failed)" in stdout
    csv = out / "a" / "x.csv"
    stamp = csv.stat().st_mtime_ns

    caplog.clear()
    stdout = _run(predict_files, "predict", [*base, "hop_length=80"], tmp_path / "r2", capsys)
    assert "(0 written, 2 kept, 0 failed)" in stdout
    assert (
        'kept 2 files whose outputs were written with other settings (decoder was "weighted_argmax", now '
        '"viterbi"; hop_length was 160, now 80); pass overwrite=true to redo them'
    ) in caplog.text
    assert csv.stat().st_mtime_ns == stamp

    caplog.clear()  # the same settings again: kept, no warning
    stdout = _run(predict_files, "predict", [*base, "decoder=weighted_argmax"], tmp_path / "r3", capsys)
    assert "(0 written, 2 kept, 0 failed)" in stdout and "other settings" not in caplog.text

    # plot=true needs a PNG the earlier runs did not write: both files are redone
    stdout = _run(predict_files, "predict", [*base[:-1], "decoder=weighted_argmax"], tmp_path / "r4", capsys)
    assert "(2 written, 0 kept, 0 failed)" in stdout
    assert files_under(out) == {f"{d}/x.{ext}" for d in "ab" for ext in ("csv", "png", "settings.json")}

    stdout = _run(predict_files, "predict", [*base, "overwrite=true"], tmp_path / "r5", capsys)
    assert "(2 written, 0 kept, 0 failed)" in stdout
    assert json.loads((out / "a" / "x.settings.json").read_text())["settings"]["decoder"] == "viterbi"
    check_complete("predict", a, out, "a/x.wav")


def test_separate_rerun_with_other_settings_keeps_and_says_so(tmp_path, sep_ckpt, capsys, caplog):
    from audiolab.tasks.separate import separate_files

    inputs = tmp_path / "in"
    write_good(inputs)
    out = tmp_path / "out"
    base = [f"ckpt={sep_ckpt}", f"input={inputs}", f"output={out}", "device=cpu"]
    stdout = _run(separate_files, "separate", [*base, "targets=[vocals]"], tmp_path / "r1", capsys)
    assert "separated 2 of 2 files" in stdout and "(2 written, 0 kept, 0 failed)" in stdout
    assert files_under(out) == {f"{d}/x/{n}" for d in "ab" for n in ("vocals.wav", "accompaniment.wav", "settings.json")}

    # all targets: drums.wav is missing, so both tracks are redone with every output
    stdout = _run(separate_files, "separate", base, tmp_path / "r2", capsys)
    assert "(2 written, 0 kept, 0 failed)" in stdout
    assert files_under(out) == set().union(*(outputs_of("separate", rel) for rel in GOOD))

    caplog.clear()
    stdout = _run(separate_files, "separate", [*base, "chunk_seconds=0.3", "subtype=PCM_16"], tmp_path / "r3", capsys)
    assert "(0 written, 2 kept, 0 failed)" in stdout
    assert (
        'kept 2 files whose outputs were written with other settings (chunk_seconds was 0.5, now 0.3; '
        'subtype was "FLOAT", now "PCM_16"); pass overwrite=true to redo them'
    ) in caplog.text
    assert sf.info(str(out / "a" / "x" / "vocals.wav")).subtype == "FLOAT"

    # outputs with no record beside them: their settings are unknown, said so too
    (out / "b" / "x" / "settings.json").unlink()
    caplog.clear()
    stdout = _run(separate_files, "separate", base, tmp_path / "r4", capsys)
    assert "(0 written, 2 kept, 0 failed)" in stdout
    assert "kept 1 file whose outputs were written with other settings (1 without a settings record)" in caplog.text

    stdout = _run(separate_files, "separate", [*base, "subtype=PCM_16", "overwrite=true"], tmp_path / "r5", capsys)
    assert "(2 written, 0 kept, 0 failed)" in stdout
    assert sf.info(str(out / "a" / "x" / "vocals.wav")).subtype == "PCM_16"
    assert json.loads((out / "b" / "x" / "settings.json").read_text())["settings"]["subtype"] == "PCM_16"


@pytest.mark.parametrize(
    ("tool", "overrides", "message"),
    [
        ("predict", ["decoder=argmin", "fmin=500", "fmax=100"],
         "decoder must be one of argmax, viterbi, weighted_argmax, got argmin; need 0 < fmin < fmax, got fmin=500"),
        ("separate", ["overlap=1.5", "window=kaiser"],
         "overlap must be in [0, 1), got 1.5; window must be one of hann, triangular, rectangular, got kaiser"),
    ],
)  # fmt: skip
def test_impossible_settings_are_one_line_before_the_first_file(tmp_path, sep_ckpt, tool, overrides, message):
    from audiolab.tasks.predict import predict_files
    from audiolab.tasks.separate import separate_files

    inputs = tmp_path / "in"
    write_good(inputs)
    out = tmp_path / "out"
    task = {"predict": predict_files, "separate": separate_files}[tool]
    base = [f"input={inputs}", f"output={out}", "device=cpu"] + ([f"ckpt={sep_ckpt}"] if tool == "separate" else [])
    with pytest.raises(AudiolabError) as info:
        task(compose_config(tool, [*base, *overrides], tmp_path / "run"))
    assert str(info.value).startswith(message)
    assert not out.exists()
