"""Pitch training data from real audio: teacher labels and their caches, resynthesis,
FSDD and MUSDB18 vocals through the shared DataModules, the weighted mix, and the two
real-audio experiments training a few steps."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio
from helpers import compose_config, require_shared

from audiolab.data.clips import AudioClip
from audiolab.data.fsdd import FsddDataModule
from audiolab.data.musdb import MusdbDataModule, MusdbError
from audiolab.data.pitch_corpus import PitchCorpus, cache_audio, cache_labels, hold_voiced_f0
from audiolab.data.pitch_mix import (
    PitchMixDataModule,
    PitchMixError,
    SpeechSource,
    SynthSource,
    TeacherSource,
)
from audiolab.data.sampling import EpochSampler
from audiolab.data.synth_pitch import SynthPitchDataModule, SynthToneRenderer
from audiolab.pitch import predict
from audiolab.pitch.teacher import Teacher, TeacherConfig, TeacherError

SR = 16000
HOP = 160
# two recordings of every split (takes 0-4 test, 5-9 val, 10+ train), two speakers
FEW = [f"{d}_{s}_{i}.wav" for d in (0, 7) for s in ("george", "theo") for i in (0, 3, 5, 9, 10, 30)]


@pytest.fixture(scope="module")
def few_fsdd(tmp_path_factory):
    recordings = require_shared("fsdd", "recordings")
    dest = tmp_path_factory.mktemp("fsdd") / "recordings"
    dest.mkdir()
    for name in FEW:
        shutil.copyfile(recordings / name, dest / name)  # writable copies (the shared files are read-only)
    return dest


@pytest.fixture(scope="module")
def pitch_cache(tmp_path_factory):
    """One cache for the module's mixes: keyed caches are safe to share, and labels are
    computed once."""
    return tmp_path_factory.mktemp("pitch_cache")


def fsdd_mix(root, cache, num_workers=0, synth_weight=0.0, **source) -> PitchMixDataModule:
    sources = {"fsdd": TeacherSource(FsddDataModule(root=str(root)), **source)}
    if synth_weight:
        sources["synth"] = SynthSource(SynthPitchDataModule(val_clips=2, test_clips=2), weight=synth_weight)
    return PitchMixDataModule(
        sources, ["fsdd"], ["fsdd"], teacher={"model": "tiny"}, cache_dir=str(cache), batch_size=8,
        eval_batch_size=2, train_batches_per_epoch=2, num_workers=num_workers, progress=False,
    )


def take(name: str) -> int:
    return int(name.rsplit("_", 1)[1].split(".")[0])


# -- teacher labels and their caches --------------------------------------------------------


def test_labels_are_cached_by_teacher_config_and_files(few_fsdd, tmp_path, monkeypatch):
    calls = []
    original = Teacher.__call__

    def spy(self, audio):
        calls.append(self.config)
        return original(self, audio)

    monkeypatch.setattr(Teacher, "__call__", spy)
    dm = FsddDataModule(root=str(few_fsdd), speakers=["theo"], digits=[0])
    cache = tmp_path / "cache"

    def label(**teacher):
        clips = dm.audio_clips("val")  # theo's digit 0, takes 5 and 9
        audio = cache_audio(clips, cache, progress=False)
        return audio, cache_labels(audio, Teacher(TeacherConfig(**teacher), HOP), cache, progress=False)

    audio, first = label(model="tiny")
    assert len(calls) == 2
    # the same teacher reads the cache; batch size and device do not change the labels
    assert label(model="tiny", batch_size=7, device="cpu") == (audio, first)
    assert len(calls) == 2
    # any change of what the labels depend on computes them again, into a new folder
    seen = {first}
    for changed in ({"decoder": "weighted_argmax"}, {"silence_db": None}, {"fmin": 50.0}):
        _, labels = label(model="tiny", **changed)
        assert labels not in seen
        seen.add(labels)
    assert len(calls) == 8
    # a rewritten recording is read and labelled again
    path = few_fsdd / "0_theo_5.wav"
    data, rate = sf.read(path)
    sf.write(path, data * 0.5, rate)
    audio2, again = label(model="tiny")
    assert audio2 != audio and again not in seen
    assert len(calls) == 10
    assert not list(cache.rglob(".tmp-*"))


def test_a_failing_teacher_leaves_no_cache(few_fsdd, tmp_path, monkeypatch):
    original = Teacher.__call__
    calls = []

    def flaky(self, audio):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("killed")
        return original(self, audio)

    monkeypatch.setattr(Teacher, "__call__", flaky)
    clips = FsddDataModule(root=str(few_fsdd), speakers=["theo"], digits=[0]).audio_clips("val")
    audio = cache_audio(clips, tmp_path, progress=False)
    teacher = Teacher(TeacherConfig(model="tiny"), HOP)
    with pytest.raises(RuntimeError, match="killed"):
        cache_labels(audio, teacher, tmp_path, progress=False)
    assert not (tmp_path / "labels").exists() or not any((tmp_path / "labels").iterdir())
    labels = cache_labels(audio, teacher, tmp_path, progress=False)
    assert (labels / "meta.json").is_file() and len(calls) == 4


@pytest.mark.parametrize("model", ["pyin", "tiny"])
def test_teacher_on_a_tone_and_silence(model):
    t = torch.arange(int(0.5 * SR)) / SR
    tone = 0.5 * torch.sin(2 * math.pi * 220.0 * t) + 0.2 * torch.sin(2 * math.pi * 440.0 * t)
    audio = torch.cat([tone, torch.zeros(int(0.3 * SR))])
    f0, period = Teacher(TeacherConfig(model=model), HOP)(audio)
    n = 1 + len(audio) // HOP
    assert f0.shape == period.shape == (n,) and f0.dtype == np.float32
    inner = slice(10, 40)  # well inside the tone
    assert np.abs(1200 * np.log2(f0[inner] / 220.0)).max() < 20
    assert period[inner].min() > 0.5
    assert (period[60:] == 0).all()  # digital silence: below silence_db


def test_bad_teacher_config_is_refused():
    with pytest.raises(TeacherError, match="unknown pitch teacher 'huge'"):
        TeacherConfig(model="huge")
    with pytest.raises(TeacherError, match="fmin"):
        TeacherConfig(model="pyin", fmin=3000.0, fmax=2000.0)


def test_unvoiced_frames_hold_the_nearest_voiced_f0_of_their_clip():
    f0 = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9], dtype=np.float32)
    voiced = np.array([0, 1, 0, 0, 1, 0, 0, 0, 1], dtype=bool)
    offsets = np.array([0, 6, 8, 9])  # clips [0, 6), [6, 8) (no voiced frame), [8, 9)
    assert hold_voiced_f0(f0, voiced, offsets).tolist() == [2, 2, 2, 5, 5, 5, 7, 8, 9]


# -- resynthesis --------------------------------------------------------------------------


class ContourTeacher(Teacher):
    """A teacher that 'hears' a designed contour: a glide, a steady note, a gap, a low note."""

    def __call__(self, audio):
        n = 1 + len(audio) // self.hop_length
        i = np.arange(n)
        f0 = np.select(
            [i < 10, i < 60, i < 80, i < 90],
            [200.0, 200.0 * 2.0 ** ((i - 10) / 50), 400.0, 300.0],  # unvoiced gap at 80-89
            150.0,
        ).astype(np.float32)
        period = np.where((i >= 80) & (i < 90), 0.0, 1.0).astype(np.float32)
        return f0, period


@pytest.fixture(scope="module")
def contour_corpus(tmp_path_factory):
    cache = tmp_path_factory.mktemp("contour")
    noise = torch.randn(SR) * 0.1
    clip = AudioClip("noise", ("noise", 1), lambda: (noise, SR))
    audio = cache_audio([clip], cache, progress=False)
    labels = cache_labels(audio, ContourTeacher(TeacherConfig(model="pyin"), HOP), cache, progress=False)
    return PitchCorpus(audio, labels, HOP, voicing_threshold=0.5)


def peak_hz(frames: torch.Tensor) -> np.ndarray:
    """Frequency of the spectral peak of each frame (Hann window, zero-padded FFT,
    parabolic interpolation)."""
    n_fft = 1 << 16
    spec = torch.fft.rfft(frames * torch.hann_window(frames.shape[-1], periodic=False), n=n_fft).abs().log()
    k = spec.argmax(dim=-1)
    a, b, c = (spec.gather(-1, (k + d)[:, None])[:, 0] for d in (-1, 0, 1))
    return ((k + 0.5 * (a - c) / (a - 2 * b + c)) * SR / n_fft).numpy()


def test_resynthesised_frames_have_exactly_their_labels(contour_corpus):
    corpus = contour_corpus
    n = int(corpus.n_frames[0])
    clip, frame = np.zeros(n, dtype=np.int64), np.arange(n)
    f0, voiced = corpus.labels(clip, frame)
    assert voiced.tolist() == [not 80 <= i < 90 for i in range(n)]
    assert f0[82] == 400.0 and f0[88] == 150.0  # unvoiced frames hold the nearest voiced f0
    # a pure, clean sine (one partial, no noise), one 1024-sample window per frame
    renderer = SynthToneRenderer(max_harmonics=1, clean_prob=1.0)
    params = [renderer.draw(np.random.default_rng(0), 1024)] * n
    windows = corpus.resynthesize(clip, frame, renderer, params, 1024)
    assert windows.shape == (n, 1024)
    # where the tone is on and its contour smooth over the whole window (no corner, no
    # gap, not at the clip's ends), its frequency is the label: steady notes and the glide
    smooth = [i for i in range(5, n - 5) if voiced[i] and min(abs(i - k) for k in (10, 60, 80, 90)) > 4]
    cents = 1200 * np.log2(peak_hz(windows[smooth]) / f0[smooth])
    assert len(smooth) > 50 and np.abs(cents).max() < 1, np.abs(cents).max()
    # deep inside the gap the tone is silent
    assert windows[84:86, 512 - 80 : 512 + 80].abs().max() == 0
    # a pitch tracker hears the labels on a whole resynthesised clip (40 partials)
    full = SynthToneRenderer(clean_prob=1.0)
    audio = corpus.resynthesize(np.array([0]), np.array([50]), full, [full.draw(np.random.default_rng(1), SR)], SR)
    est, _ = predict(audio[0], SR, model="tiny", decoder="weighted_argmax")
    assert len(est) == n
    err = np.abs(1200 * np.log2(est.numpy()[voiced] / f0[voiced]))
    assert (err < 50).mean() > 0.95, (err < 50).mean()


# -- FSDD through the shared DataModule --------------------------------------------------------


def test_fsdd_pitch_splits_are_the_feature_splits(few_fsdd, tmp_path):
    for filters in ({}, {"speakers": ["theo"]}, {"digits": [7]}):
        dm = FsddDataModule(root=str(few_fsdd), cache_dir=str(tmp_path / "features"), **filters)
        dm.setup()
        for split, rows in dm.split_rows.items():
            assert [c.name for c in dm.audio_clips(split)] == [dm.file_names[r] for r in rows]
    with pytest.raises(ValueError, match="train, val and test"):
        dm.audio_clips("valid")


def test_fsdd_official_split_has_no_test_or_val_take_in_train():
    dm = FsddDataModule(root=str(require_shared("fsdd")))
    names = {split: [c.name for c in dm.audio_clips(split)] for split in ("train", "val", "test")}
    assert {k: len(v) for k, v in names.items()} == {"train": 2400, "val": 300, "test": 300}
    assert min(map(take, names["train"])) >= 10
    assert {take(n) for n in names["val"]} == {5, 6, 7, 8, 9}
    assert max(map(take, names["test"])) <= 4


def test_batches_are_16khz_frames_aligned_with_the_teacher(few_fsdd, pitch_cache):
    dm = fsdd_mix(few_fsdd, pitch_cache)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.sample_rate == SR
    corpus = dm.sources["fsdd"].corpus("train")
    assert sorted(corpus.names) == sorted(n for n in FEW if take(n) >= 10)  # train takes only
    batch = next(iter(dm.train_dataloader()))
    assert batch["frames"].shape == (8, 1, 1024) and batch["frames"].dtype == torch.float32
    assert batch["f0"].shape == batch["voiced"].shape == batch["times"].shape == (8, 1)
    assert batch["voiced"].dtype == torch.bool
    # voiced_prob=0.8: most training frames are voiced; their f0 is speech f0
    assert batch["voiced"].float().mean() >= 0.5 and (batch["f0"][batch["voiced"]] > 50).all()

    val = dm.eval_set("val")
    names = dm.sources["fsdd"].corpus("val").names
    item = val[0]
    audio, rate = sf.read(few_fsdd / names[0], dtype="float32")
    audio16 = torchaudio.functional.resample(torch.from_numpy(audio), rate, SR)
    n = 1 + len(audio16) // HOP
    assert item["frames"].shape == (n, 1024) and item["f0"].shape == item["voiced"].shape == (n,)
    assert torch.allclose(item["times"], torch.arange(n, dtype=torch.float64) * 0.01)
    # frame i is centred on sample i * hop, zero-padded by half a frame, as CREPE frames a clip
    want = torch.nn.functional.pad(audio16, (512, 512)).unfold(0, 1024, HOP)
    assert (item["frames"] - want).abs().max() < 1 / 32767
    f0, period = predict(audio16, SR, model="tiny", decoder="viterbi")
    close = np.abs(1200 * np.log2(item["f0"].numpy() / f0.numpy()))[item["voiced"].numpy()]
    assert np.median(close) < 1 and (item["voiced"].numpy() == (period.numpy() >= 0.5)).mean() > 0.9
    # eval batches pad shorter clips with silent unvoiced frames at time inf
    batch = next(iter(dm.val_dataloader()))
    lengths = [len(val[i]["f0"]) for i in range(2)]
    assert batch["frames"].shape == (2, max(lengths), 1024)
    short = int(np.argmin(lengths))
    pad = slice(min(lengths), None)
    assert not batch["voiced"][short, pad].any() and (batch["frames"][short, pad] == 0).all()
    assert torch.isinf(batch["times"][short, pad]).all() and torch.isfinite(batch["times"][1 - short]).all()


def test_mix_is_deterministic_across_workers_epochs_and_ranks(few_fsdd, pitch_cache):
    from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
    from test_musdb_data import first_batches as batches

    single = fsdd_mix(few_fsdd, pitch_cache, synth_weight=1.0, resynth=0.5)
    workers = fsdd_mix(few_fsdd, pitch_cache, num_workers=2, synth_weight=1.0, resynth=0.5)
    single.prepare_data()
    a, b = batches(single), batches(workers)
    for x, y in zip(a, b, strict=True):
        for key in x:
            assert torch.equal(x[key], y[key]), key
    assert not torch.equal(batches(single, epoch=1)[0]["frames"], a[0]["frames"])
    # DDP: each rank gets its own indices of the epoch, hence its own examples
    dataset = single.train_set
    ranks = [list(DistributedSamplerWrapper(EpochSampler(len(dataset)), num_replicas=2, rank=r, shuffle=False)) for r in (0, 1)]
    assert not set(ranks[0]) & set(ranks[1])
    x0, x1 = (torch.stack([d["frames"] for d in dataset.__getitems__(r[:8])]) for r in ranks)
    assert not torch.equal(x0, x1)


def test_mix_follows_the_weights(few_fsdd, pitch_cache):
    dm = fsdd_mix(few_fsdd, pitch_cache, weight=3.0, synth_weight=1.0)
    dm.setup()
    choice = dm.train_set.choose(range(4000))
    assert abs((choice == 0).mean() - 0.75) < 0.03  # fsdd, then synth, in config order
    # a zero weight is never drawn (and its data is not read for training)
    dm = fsdd_mix(few_fsdd, pitch_cache, weight=0.0, synth_weight=1.0)
    assert dm.needed() == {"fsdd": ["val", "test"], "synth": ["train"]}


def test_bad_mix_configs_are_refused(few_fsdd, pitch_cache):
    fsdd = FsddDataModule(root=str(few_fsdd))
    with pytest.raises(PitchMixError, match=r"val_sources=\['musdb'\] must name some of the sources \['fsdd'\]"):
        PitchMixDataModule({"fsdd": TeacherSource(fsdd)}, ["musdb"], ["fsdd"], teacher={"model": "tiny"})
    with pytest.raises(PitchMixError, match="at least one > 0"):
        PitchMixDataModule({"fsdd": TeacherSource(fsdd, weight=0)}, ["fsdd"], ["fsdd"], teacher={"model": "tiny"})
    with pytest.raises(PitchMixError, match="lists no audio clips"):
        TeacherSource(SynthPitchDataModule())
    with pytest.raises(PitchMixError, match="hop_length=160"):
        PitchMixDataModule(
            {"synth": SynthSource(SynthPitchDataModule(hop_length=256))}, ["synth"], ["synth"], teacher={"model": "tiny"}
        )


# -- speech with exact labels -------------------------------------------------------------------


def speech_mix(root, cache, augment=0.0, **glottal) -> PitchMixDataModule:
    fsdd = FsddDataModule(root=str(root))
    sources = {
        "glottal": SpeechSource("glottal", clips={"train": 3, "val": 1, "test": 1}, seconds=0.5, **glottal),
        "resynth": SpeechSource("resynth", fsdd, variants=2, degrade=0.5),
    }
    return PitchMixDataModule(
        sources, ["glottal", "resynth"], ["resynth"], teacher={"model": "tiny"}, cache_dir=str(cache), batch_size=8,
        eval_batch_size=2, train_batches_per_epoch=2, progress=False, augment=augment,
    )


def test_resynthesised_speech_carries_the_teacher_labels_exactly(few_fsdd, pitch_cache, monkeypatch):
    dm = speech_mix(few_fsdd, pitch_cache)
    dm.prepare_data()
    dm.setup("fit")
    source = dm.sources["resynth"]
    teacher = PitchCorpus(*TeacherSource._caches(source, "train"), HOP, 0.5)
    rendered = source.corpus("train")
    assert len(rendered) == 2 * len(teacher)  # two variants of every recording
    for clip in range(len(rendered)):
        a, b = rendered.frame_offsets[clip : clip + 2]
        c, d = teacher.frame_offsets[clip // 2 : clip // 2 + 2]
        assert np.array_equal(rendered.voiced[a:b], teacher.voiced[c:d])
        assert np.array_equal(rendered.f0[a:b], teacher.f0[c:d])
    # the variants differ (their own voice, their own degradation) and are not the recording
    first, second = (rendered.frames(np.full(20, k), np.arange(20)) for k in (0, 1))
    assert not np.allclose(first, second)
    assert not np.allclose(first, teacher.frames(np.zeros(20, dtype=int), np.arange(20)))
    # rendered once: a second DataModule reads the cache instead of rendering again
    monkeypatch.setattr("audiolab.data.speech_synth.resynthesize", lambda *a, **k: pytest.fail("rendered again"))
    again = speech_mix(few_fsdd, pitch_cache)
    again.prepare_data()
    assert np.array_equal(again.sources["resynth"].corpus("train").f0, rendered.f0)


def test_glottal_speech_is_deterministic_and_its_batches_have_labels(few_fsdd, tmp_path):
    batches = []
    for cache in (tmp_path / "a", tmp_path / "b"):
        dm = speech_mix(few_fsdd, cache, augment=0.5)
        dm.prepare_data()
        dm.setup("fit")
        batches.append(next(iter(dm.train_dataloader())))
    for key in batches[0]:
        assert torch.equal(batches[0][key], batches[1][key]), key
    batch = batches[0]
    assert batch["frames"].shape == (8, 1, 1024) and torch.isfinite(batch["frames"]).all()
    assert (batch["f0"][batch["voiced"]] >= 40).all() and (batch["f0"][batch["voiced"]] <= 600).all()
    corpus = dm.sources["glottal"].corpus("val")
    assert len(corpus) == 1 and 0.2 < corpus.voiced.mean() < 1.0


def test_augmentation_changes_some_training_frames_and_never_the_labels(few_fsdd, pitch_cache):
    plain, augmented = speech_mix(few_fsdd, pitch_cache), speech_mix(few_fsdd, pitch_cache, augment=1.0)
    for dm in (plain, augmented):
        dm.setup("fit")
    indices = list(range(16))
    x, y = plain.train_set.__getitems__(indices), augmented.train_set.__getitems__(indices)
    changed = [not torch.equal(a["frames"], b["frames"]) for a, b in zip(x, y, strict=True)]
    assert sum(changed) >= 12
    for a, b in zip(x, y, strict=True):
        assert torch.equal(a["f0"], b["f0"]) and torch.equal(a["voiced"], b["voiced"])
    with pytest.raises(PitchMixError, match="augment"):
        speech_mix(few_fsdd, pitch_cache, augment=1.5)


def test_bad_speech_sources_are_refused():
    with pytest.raises(PitchMixError, match="unknown speech source kind 'whisper'"):
        SpeechSource("whisper")
    with pytest.raises(PitchMixError, match="seconds > 0"):
        SpeechSource("glottal", seconds=0)
    with pytest.raises(PitchMixError, match="variants"):
        SpeechSource("glottal", variants=0)


# -- MUSDB18 vocals ------------------------------------------------------------------------------


def test_musdb_vocals_of_the_real_preview_are_labelled(tmp_path):
    root = require_shared("musdb18-sample")
    dm = MusdbDataModule(root=str(root), splits={"valid": {"split": None}, "test": {"subsets": "train"}})
    clips = dm.audio_clips("train")
    assert [c.name for c in clips] == ["train/Music Delta - 80s Rock/vocals"]
    with pytest.raises(MusdbError, match="source must be one of"):
        dm.audio_clips("train", source="piano")
    audio = cache_audio(clips, tmp_path, progress=False)
    labels = cache_labels(audio, Teacher(TeacherConfig(model="tiny"), HOP), tmp_path, progress=False)
    corpus = PitchCorpus(audio, labels, HOP, voicing_threshold=0.5)
    seconds = corpus.lengths[0] / SR
    assert 6.5 < seconds < 7.5 and corpus.n_frames[0] == 1 + corpus.lengths[0] // HOP
    sung = corpus.f0[corpus.voiced]
    assert corpus.voiced.mean() > 0.1 and 80 < np.median(sung) < 1000


# -- experiments ----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "experiment,data",
    [("pitch_crepe_finetune_fsdd", "pitch_fsdd"), ("pitch_small_distill", "pitch_mix"), ("pitch_fast", "pitch_speech")],
)
def test_experiment_trains_two_steps(experiment, data, tmp_path, shared_cache):
    from test_configs import data_overrides

    from audiolab.tasks.train import train

    overrides = [
        f"experiment={experiment}",
        "trainer=cpu",
        "++trainer.max_steps=2",
        "data.train_batches_per_epoch=2",
        "++trainer.limit_val_batches=1",
        "++trainer.limit_test_batches=1",
        "++trainer.num_sanity_val_steps=0",
        "extras.print_config=false",
        "callbacks.rich_progress_bar=null",
    ]
    cfg = compose_config("train", overrides + data_overrides(data, shared_cache), tmp_path)
    metrics, objects = train(cfg)
    assert objects["trainer"].global_step == 2
    assert metrics["best_ckpt"] and all(math.isfinite(metrics[k]) for k in ("val/rpa", "test/rpa", "test/rca"))
