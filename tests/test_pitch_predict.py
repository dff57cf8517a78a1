"""audiolab.pitch.predict / embed and the file helpers: shapes, rates, streaming, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

import audiolab.pitch as pitch
from audiolab.audio.pitch_grid import hz_to_cents
from audiolab.pitch import inference
from audiolab.pitch.inference import PitchInputError
from audiolab.pitch.pretrained import pretrained_crepe
from audiolab.utils.errors import AudiolabError


def tone(f0: float, seconds: float, rate: int, amplitude: float = 0.5) -> torch.Tensor:
    t = torch.arange(int(seconds * rate)) / rate
    return amplitude * sum(torch.sin(2 * torch.pi * k * f0 * t) / k for k in (1, 2, 3))


def cents_error(f0: torch.Tensor, true_hz: float) -> torch.Tensor:
    return (hz_to_cents(f0) - hz_to_cents(torch.tensor(true_hz))).abs()


@pytest.mark.parametrize("rate", [8000, 16000, 44100])
def test_any_rate_gives_the_pitch_on_the_16k_frame_grid(rate):
    audio = tone(220.0, 0.5, rate)
    f0, period = pitch.predict(audio, rate)
    n16 = round(audio.numel() * 16000 / rate)
    assert f0.shape == period.shape == (1 + n16 // 160,)
    assert cents_error(f0[5:-5], 220.0).max() < 15
    assert period[5:-5].min() > 0.5


def test_shapes_batches_channels_and_streaming():
    a, b = tone(220.0, 0.4, 16000), tone(330.0, 0.4, 16000)
    batch = torch.stack([a, b])
    f0, period = pitch.predict(batch, 16000, decoder="weighted_argmax")
    assert f0.shape == (2, 41)
    single, _ = pitch.predict(b, 16000, decoder="weighted_argmax")
    assert torch.allclose(f0[1], single, atol=1e-2)
    # frames streamed 7 at a time give the same result as one big batch
    streamed, streamed_period = pitch.predict(batch, 16000, decoder="weighted_argmax", batch_size=7)
    assert torch.allclose(streamed, f0, atol=1e-2) and torch.allclose(streamed_period, period, atol=1e-5)
    # (batch, channels, samples) and mix_channels=True average the channels
    stereo = torch.stack([a, 0.5 * a])
    mixed, _ = pitch.predict(stereo[None], 16000)
    assert mixed.shape == (1, 41)
    one, _ = pitch.predict(stereo, 16000, mix_channels=True)
    assert one.shape == (41,) and torch.allclose(one, mixed[0])
    assert torch.allclose(one, pitch.predict(0.75 * a, 16000)[0], atol=1e-2)


def test_numpy_input_and_pitch_range():
    audio = tone(110.0, 0.4, 16000).numpy()
    f0, _ = pitch.predict(audio, 16000, fmin=150.0, fmax=1000.0, decoder="argmax")
    assert isinstance(f0, torch.Tensor)
    # the true pitch is out of range: the decoder must stay inside it (half a bin slack)
    assert (hz_to_cents(f0) >= hz_to_cents(torch.tensor(150.0)) - 10).all()
    assert (hz_to_cents(f0) <= hz_to_cents(torch.tensor(1000.0)) + 10).all()


def test_silence_dc_and_quiet_frames():
    silence = torch.zeros(8000)
    _, period = pitch.predict(silence, 16000)
    assert (period == 0).all()
    _, period = pitch.predict(torch.full((8000,), 0.3), 16000)
    # DC: frames inside the clip are constant; the first and last four reach into the
    # zero padding, a step, which the network rightly finds unpitched
    assert (period[4:-4] == 0).all() and period.max() < 0.1
    # a tone then near-silent noise: the loudness gate zeroes the noise only
    audio = torch.cat([tone(220.0, 0.5, 16000), 1e-6 * torch.randn(8000, generator=torch.Generator().manual_seed(0))])
    _, gated = pitch.predict(audio, 16000, silence_db=-60.0)
    assert gated[5:45].min() > 0.5 and (gated[56:] == 0).all()


def test_short_clips_give_one_frame_and_empty_ones_are_refused():
    f0, period = pitch.predict(tone(220.0, 0.001, 16000), 16000)  # 16 samples
    assert f0.shape == period.shape == (1,)
    f0, _ = pitch.predict(torch.randn(3, 5), 8000)
    assert f0.shape == (3, 1)
    with pytest.raises(PitchInputError, match="holds no samples"):
        pitch.predict(torch.zeros(0), 16000)


def test_bad_input_is_refused_with_the_fix():
    audio = tone(220.0, 0.2, 16000)
    audio[1234] = float("nan")
    with pytest.raises(PitchInputError, match=r"NaN or infinite samples \(the first at sample 1234, 0.077 s\).*nan_to_num"):
        pitch.predict(audio, 16000)
    audio[1234] = float("inf")
    with pytest.raises(PitchInputError, match="NaN or infinite"):
        pitch.embed(audio, 16000)
    with pytest.raises(PitchInputError, match="floating-point samples"):
        pitch.predict(torch.zeros(100, dtype=torch.int16), 16000)
    with pytest.raises(PitchInputError, match="got shape"):
        pitch.predict(torch.zeros(1, 1, 1, 100), 16000)
    with pytest.raises(PitchInputError, match="sample_rate must be a positive integer"):
        pitch.predict(torch.zeros(100), 0)
    with pytest.raises(ValueError, match="unknown pitch decoder 'viterbo'"):
        pitch.predict(torch.zeros(100), 16000, decoder="viterbo")
    with pytest.raises(AudiolabError, match="unknown pitch model 'huge'"):
        pitch.predict(torch.zeros(100), 16000, model="huge")
    with pytest.raises(AudiolabError, match="checkpoint not found"):
        pitch.predict(torch.zeros(100), 16000, model="missing/run.ckpt")


def test_embed_is_the_fifth_block_of_the_network():
    audio = tone(220.0, 0.3, 16000)
    emb = pitch.embed(audio, 16000, batch_size=5)
    frames = torch.nn.functional.pad(audio, (512, 512)).unfold(-1, 1024, 160)
    with torch.no_grad():
        want = pretrained_crepe("tiny").embed(frames)
    assert emb.shape == (31, 256)
    assert torch.allclose(emb, want, atol=1e-5)
    assert pitch.embed(torch.stack([audio, audio]), 16000).shape == (2, 31, 256)


def test_file_helpers_load_the_model_once(tmp_path, monkeypatch):
    loads = []
    real = inference.pretrained_crepe
    monkeypatch.setattr(inference, "pretrained_crepe", lambda name: loads.append(name) or real(name))
    inference._load_cached.cache_clear()
    a = tmp_path / "a.wav"
    b = tmp_path / "b.flac"
    sf.write(a, tone(220.0, 0.3, 8000).numpy(), 8000)
    sf.write(b, torch.stack([tone(330.0, 0.25, 44100)] * 2, dim=1).numpy(), 44100)  # stereo
    outputs = pitch.predict_files_to_files([a, b], [tmp_path / "out" / "a.csv", tmp_path / "out" / "b.csv"])
    assert loads == ["tiny"]
    table = np.loadtxt(outputs[0], delimiter=",", skiprows=1)
    assert outputs[0].read_text().splitlines()[0] == "time,f0,periodicity"
    assert table.shape == (31, 3) and table[1, 0] == pytest.approx(0.01)
    assert np.abs(1200 * np.log2(np.loadtxt(outputs[1], delimiter=",", skiprows=1)[5:-5, 1] / 330)).max() < 15
    embedded = pitch.embed_files_to_files([a], [tmp_path / "a.npy"])
    assert np.load(embedded[0]).shape == (31, 256)
    inference._load_cached.cache_clear()


def test_file_helpers_name_the_bad_file(tmp_path):
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"not audio")
    with pytest.raises(AudiolabError, match="broken.wav"):
        pitch.predict_files_to_files([bad], [tmp_path / "x.csv"])
    with pytest.raises(AudiolabError, match="not found"):
        pitch.predict_files_to_files([tmp_path / "nope.wav"], [tmp_path / "x.csv"])
    with pytest.raises(AudiolabError, match="one output per input"):
        pitch.predict_files_to_files([bad], [])


class ThreadsSeen(torch.nn.Module):
    """A stand-in pitch network that records torch's thread count at each call."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[int] = []

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        self.seen.append(torch.get_num_threads())
        return torch.full((*frames.shape[:-1], 360), 0.5)

    def embed(self, frames: torch.Tensor) -> torch.Tensor:
        return self(frames)


class SmallThreadsSeen(ThreadsSeen):
    """The same, reporting its cost per frame as HarmonicPitchNet does."""

    def macs_per_frame(self) -> int:
        return 500_000


def test_small_work_runs_on_one_thread_and_the_setting_is_restored(two_threads):
    net = SmallThreadsSeen()
    frames = inference.PARALLEL_MACS // net.macs_per_frame()  # the first that keep 2 threads
    short = 160 * (frames - 2)  # frames - 1 frames
    pitch.predict(torch.randn(short), 16000, model=net)
    pitch.predict(torch.randn(short + 160), 16000, model=net)
    assert net.seen == [1, 2]
    assert torch.get_num_threads() == 2
    stream = pitch.PitchStream(16000, model=net, decoder="weighted_argmax")
    stream.push(torch.randn(16000), 16000)  # 100 final frames at once
    assert net.seen[-1] == 1 and torch.get_num_threads() == 2
    unknown = ThreadsSeen()  # a network that does not report its cost keeps its threads
    pitch.predict(torch.randn(1600), 16000, model=unknown)
    assert unknown.seen == [2]


class Failing(SmallThreadsSeen):
    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        super().forward(frames)
        raise RuntimeError("boom")


def test_the_thread_setting_is_restored_when_the_network_fails(two_threads):
    net = Failing()
    with pytest.raises(RuntimeError, match="boom"):
        pitch.embed(torch.randn(1600), 16000, model=net)
    assert net.seen == [1] and torch.get_num_threads() == 2


@pytest.mark.parametrize("hop_length", [0, -160])
def test_a_bad_hop_is_refused_before_any_work(hop_length):
    for fn in (pitch.predict, pitch.embed):
        with pytest.raises(PitchInputError, match="hop_length must be a positive number"):
            fn(torch.randn(1600), 16000, hop_length, model=SmallThreadsSeen())
