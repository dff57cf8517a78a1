"""Synthetic multitrack songs in the MUSDB18-HQ layout: source separation without a download.

Every track is a short procedurally composed song in one key and tempo, on a shared
sixteenth-note grid (optionally swung), with a chord progression that all parts follow:

* drums: kick, snare and hi-hats in a per-track groove, with per-bar variations, fills,
  toms and crashes; a slightly spread stereo kit;
* bass: low harmonic notes on the chord roots (fifths, octaves, approach notes);
* other: a slow-attack pad playing the chords and a plucked arpeggio with a ping-pong echo;
* vocals: a harmonic voice singing a melody in the key, with vibrato, pitch scoops,
  vowel formants that change per syllable, consonant hiss and rests between phrases.

Tempo, key, progression, timbres, panning and levels are drawn per track from
``numpy.random.default_rng(track_seed(seed, split, index))``, so a track depends only on
the dataset seed, its split and its index: asking for more training tracks never changes
the validation or test tracks.

Layout (what ``musdb.DB(root, is_wav=True, setup_file="setup.yaml")`` reads)::

    root/train/<track>/{mixture,drums,bass,other,vocals}.wav   training and validation tracks
    root/test/<track>/...                                      test tracks
    root/setup.yaml            musdb's setup, validation_tracks = the synthetic validation tracks
    root/synthetic_musdb.json  generation parameters; its presence marks a finished dataset

Files are stereo PCM_16 wav; each mixture is the exact integer sum of its four int16 stems.

The folder writing here is shared with ``render_musdb`` (``data=musdb_render``), chosen by
``generator`` in the parameters (see :class:`Generator`); that one writes FLOAT wav whose
mixture is the exact float32 sum of its stems.
"""

from __future__ import annotations

import json
import logging
import math
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import yaml
from scipy import signal
from tqdm import tqdm

from audiolab.utils.atomic import atomic_write
from audiolab.utils.errors import AudiolabError

log = logging.getLogger("audiolab")

SOURCES = ("drums", "bass", "other", "vocals")
MARKER = "synthetic_musdb.json"
FORMAT_VERSION = 1  # bump whenever a seed's audio or the layout changes
SETUP_FILE = "setup.yaml"
# Validation tracks live in train/ (as in MUSDB18) and are told apart by setup.yaml.
SPLIT_FOLDERS = {"train": "train", "valid": "train", "test": "test"}
DEFAULTS = {
    "n_train": 12,
    "n_valid": 3,
    "n_test": 5,
    "duration": 12.0,
    "sample_rate": 44100,
    "seed": 0,
}

KEY_NAMES = ("C", "Db", "D", "Eb", "E", "F", "Gb", "G", "Ab", "A", "Bb", "B")
SCALES = {False: np.array([0, 2, 4, 5, 7, 9, 11]), True: np.array([0, 2, 3, 5, 7, 8, 10])}
# Scale degrees (0 = tonic) of common four-chord loops, by mode (minor = True).
PROGRESSIONS = {
    False: ((0, 4, 5, 3), (0, 5, 3, 4), (5, 3, 0, 4), (0, 3, 4, 3), (1, 4, 0, 0), (0, 3, 0, 4)),
    True: ((0, 5, 2, 6), (0, 6, 5, 6), (0, 3, 4, 0), (0, 5, 3, 4), (0, 2, 5, 6), (0, 3, 6, 2)),
}
# (kick steps, snare steps, hi-hat spacing) of one bar of sixteen sixteenths.
DRUM_STYLES = (
    ((0, 8), (4, 12), 2),  # rock
    ((0, 4, 8, 12), (4, 12), 2),  # four on the floor
    ((0, 10), (8,), 1),  # half time
    ((0, 7, 10), (4, 12), 2),  # breakbeat
    ((0, 3, 8, 11), (4, 12), 1),  # syncopated
)
# Bass riffs: (step, length in sixteenths, 0 = root / 1 = fifth / 2 = octave).
BASS_PATTERNS = (
    ((0, 16, 0),),
    ((0, 8, 0), (8, 8, 0)),
    ((0, 6, 0), (6, 2, 0), (8, 6, 1), (14, 2, 2)),
    tuple((step, 2, 0) for step in range(0, 16, 2)),
    ((0, 3, 0), (3, 3, 0), (6, 2, 2), (8, 3, 0), (11, 3, 1), (14, 2, 0)),
    ((0, 2, 0), (3, 1, 0), (6, 2, 2), (10, 2, 0), (12, 1, 1), (14, 2, 0)),
    ((0, 4, 0), (4, 4, 1), (8, 4, 2), (12, 4, 1)),
)
# F1-F3 (Hz) of the vowels a, e, i, o, u (adult averages), with bandwidths and relative gains.
VOWEL_FORMANTS = np.array(
    [[800, 1200, 2800], [480, 1900, 2600], [300, 2300, 3000], [500, 900, 2700], [330, 800, 2500]],
    dtype=np.float64,
)
FORMANT_BANDWIDTHS = np.array([90.0, 110.0, 170.0])
FORMANT_GAINS = np.array([1.0, 0.6, 0.35])


class SynthMusdbError(AudiolabError):
    """The synthetic MUSDB folder cannot be used or written as asked."""


# -- the musical plan --------------------------------------------------------------------


@dataclass(frozen=True)
class Arrangement:
    """The plan shared by all four stems of a track: tempo, key and chords."""

    tempo: int
    tonic: int  # pitch class, 0 = C
    minor: bool
    progression: tuple[int, ...]  # scale degree of each chord, cycled
    bars_per_chord: int
    sevenths: bool
    swing: float  # fraction of a sixteenth by which odd sixteenths are late

    @property
    def name(self) -> str:
        mode = "minor" if self.minor else "major"
        return f"{self.tempo}bpm {KEY_NAMES[self.tonic]} {mode}"

    def chord(self, bar: int) -> np.ndarray:
        """Semitones above the tonic of the chord tones in ``bar`` (root first)."""
        root = self.progression[(bar // self.bars_per_chord) % len(self.progression)]
        degrees = np.arange(4 if self.sevenths else 3) * 2 + root
        scale = SCALES[self.minor]
        return scale[degrees % 7] + 12 * (degrees // 7)


def track_seed(seed: int, split: str, index: int) -> int:
    """The seed of track ``index`` of ``split`` ('train', 'valid' or 'test') in a dataset."""
    entropy = [seed, list(SPLIT_FOLDERS).index(split), index]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])


def _streams(seed: int) -> list[np.random.Generator]:
    # One independent stream per part, so changing how one part draws its randomness
    # leaves the others (and the arrangement) untouched.
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(6)]


def track_arrangement(seed: int) -> Arrangement:
    """The arrangement ``render_track(seed, ...)`` plays (cheap: nothing is rendered)."""
    rng = _streams(seed)[0]
    tempo = int(rng.integers(80, 161))
    tonic = int(rng.integers(12))
    minor = bool(rng.random() < 0.5)
    if rng.random() < 0.75:
        loops = PROGRESSIONS[minor]
        progression = loops[int(rng.integers(len(loops)))]
    else:
        progression = (0, *(int(d) for d in rng.integers(0, 7, 3)))
    bars_per_chord = 2 if tempo >= 130 and rng.random() < 0.5 else 1
    sevenths = bool(rng.random() < 0.35)
    swing = float(rng.uniform(0.1, 0.3)) if rng.random() < 0.4 else 0.0
    return Arrangement(tempo, tonic, minor, progression, bars_per_chord, sevenths, swing)


@dataclass(frozen=True)
class _Grid:
    """Sixteenth-note grid of a track of ``n`` samples; swing delays the odd sixteenths."""

    sample_rate: int
    n: int
    step: float  # seconds per sixteenth
    swing: float

    @property
    def n_bars(self) -> int:
        return math.ceil(self.n / self.sample_rate / (16 * self.step))

    def seconds(self, steps: np.ndarray | float) -> np.ndarray:
        steps = np.asarray(steps, dtype=np.float64)
        return (steps + self.swing * (steps % 2 == 1)) * self.step


def _midi_hz(midi: np.ndarray | float) -> np.ndarray:
    return 440.0 * 2.0 ** ((np.asarray(midi, dtype=np.float64) - 69.0) / 12.0)


def _pan(mono: np.ndarray, position: float) -> np.ndarray:
    """Constant-power pan of a mono signal; position -1 (left) .. 1 (right)."""
    angle = (position + 1.0) * np.pi / 4.0
    return np.stack([np.cos(angle) * mono, np.sin(angle) * mono]).astype(np.float32)


def _peak_normalise(x: np.ndarray) -> np.ndarray:
    peak = np.abs(x).max()
    return x / peak if peak > 0 else x


def _fade_tail(x: np.ndarray, fraction: float = 0.3) -> np.ndarray:
    """``x`` with its last ``fraction`` faded out (half cosine), so a one-shot sample that
    has not decayed to silence by its end does not click when it stops."""
    length = x.shape[-1]
    tail = max(1, int(fraction * length))
    fade = np.ones(length)
    fade[-tail:] = 0.5 + 0.5 * np.cos(np.linspace(0, np.pi, tail))
    return x * fade


def _smooth(x: np.ndarray, width: int) -> np.ndarray:
    """Moving Hann-window average along the last axis (same length, edges held)."""
    if width < 2:
        return x
    window = np.hanning(width + 2)[1:-1]
    window /= window.sum()
    pad = [(0, 0)] * (x.ndim - 1) + [(width // 2, width - 1 - width // 2)]
    padded = np.pad(x, pad, mode="edge")
    return np.apply_along_axis(np.convolve, -1, padded, window, mode="valid")


# -- additive synthesis --------------------------------------------------------------------


def _sines(theta: np.ndarray, count: int) -> Iterator[np.ndarray]:
    """sin(k theta) for k = 1..count via the Chebyshev recurrence: two array operations per
    partial instead of a sine, accurate to float32 rounding for the few dozen partials used."""
    s = np.sin(theta)
    c2 = 2 * np.cos(theta)
    previous = np.zeros_like(theta)
    for k in range(count):
        yield s
        if k + 1 < count:
            previous, s = s, c2 * s - previous


def _additive(theta: np.ndarray, partials: np.ndarray, ratio: np.ndarray | None) -> np.ndarray:
    """Sum of partials[k-1] * ratio**(k-1) * sin(k theta); ``ratio`` (per sample, <= 1) is a
    brightness that tilts the spectrum over time, like a closing low-pass filter."""
    out = np.zeros_like(theta)
    gain = None if ratio is None else np.ones_like(theta)
    for amplitude, s in zip(partials.astype(np.float32), _sines(theta, len(partials)), strict=True):
        if gain is None:
            out += amplitude * s
        else:
            out += amplitude * gain * s
            gain *= ratio
    return out


@dataclass(frozen=True)
class _Timbre:
    """Envelope and spectrum of a harmonic instrument (times in seconds)."""

    partials: np.ndarray  # amplitude of each harmonic at the note onset
    attack: float
    release: float  # fade before the note's end
    sustain: float = 1.0  # level that the amplitude decays to ...
    decay: float = 1.0  # ... with this time constant
    brightness: float = 1.0  # per-harmonic ratio that the spectrum decays to ...
    brightness_decay: float = 1.0  # ... with this time constant


def _notes(
    grid: _Grid,
    onsets: np.ndarray,
    ends: np.ndarray,
    midi: np.ndarray,
    velocity: np.ndarray,
    timbre: _Timbre,
    lines: int = 1,
) -> np.ndarray:
    """Mono rendering of notes (times in seconds): (n,) for ``midi`` of shape (notes,), or
    (rows, n) for (rows, notes), several parts sharing one rhythm (chord voices, detuned
    copies) whose envelopes are computed once. Notes are dealt in turn to ``lines`` voices,
    so a note rings on while the next ones start; within a voice a note fades out (over
    ``timbre.release``) before the next one begins, so nothing clicks."""
    sr = grid.sample_rate
    rows = np.atleast_2d(midi)
    order = np.argsort(onsets, kind="stable")
    out = np.zeros((len(rows), grid.n), np.float32)
    for line in range(lines):
        sel = order[line::lines]
        if len(sel) == 0:
            continue
        start = np.round(onsets[sel] * sr).astype(np.int64)
        stop = np.minimum(np.round(ends[sel] * sr).astype(np.int64), np.append(start[1:], grid.n))
        out += _line(grid, start, stop, _midi_hz(rows[:, sel]), velocity[sel], timbre)
    return out if np.ndim(midi) == 2 else out[0]


def _line(
    grid: _Grid,
    start: np.ndarray,
    stop: np.ndarray,
    hz: np.ndarray,
    velocity: np.ndarray,
    timbre: _Timbre,
) -> np.ndarray:
    """One monophonic voice per row of ``hz`` (rows, notes); start/stop in samples, sorted
    and not overlapping."""
    sr, n = grid.sample_rate, grid.n
    # Index of the note each sample belongs to (-1 before the first): a running count of
    # onsets, much cheaper than a search per sample.
    onsets = np.zeros(n, np.int32)
    np.add.at(onsets, start[start < n], 1)
    note = np.cumsum(onsets) - 1
    pos = np.arange(n)
    since = (pos - start[note]) / sr
    left = (stop[note] - pos) / sr
    env = np.clip(since / timbre.attack, 0, 1) * np.clip(left / timbre.release, 0, 1) * (note >= 0)
    active = np.flatnonzero(env > 0)
    since = since[active]
    env = env[active] * velocity[note[active]]
    if timbre.sustain < 1:
        env *= timbre.sustain + (1 - timbre.sustain) * np.exp(-since / timbre.decay)
    ratio = None
    if timbre.brightness < 1:
        b = timbre.brightness
        ratio = (b + (1 - b) * np.exp(-since / timbre.brightness_decay)).astype(np.float32)
    env = env.astype(np.float32)
    # No partial above 0.45 x the sample rate, so nothing aliases.
    count = max(1, min(len(timbre.partials), int(0.45 * sr / hz.max())))
    out = np.zeros((len(hz), n), np.float32)
    for row, frequencies in enumerate(hz):
        # The phase runs over every sample so that it stays continuous across notes.
        cycles = np.cumsum(frequencies[note] / sr)[active]
        theta = (2 * np.pi * (cycles - np.floor(cycles))).astype(np.float32)
        out[row, active] = _additive(theta, timbre.partials[:count], ratio) * env
    return out


def _harmonic_amplitudes(
    rng: np.random.Generator, count: int, tilt: tuple[float, float]
) -> np.ndarray:
    k = np.arange(1, count + 1)
    return k ** -rng.uniform(*tilt) * rng.uniform(0.7, 1.0, count)


# -- the four parts ----------------------------------------------------------------------


def _drum_kit(rng: np.random.Generator, sr: int) -> dict[str, np.ndarray]:
    """This track's one-shot drum samples, panned, at their level in the kit (channels first)."""

    def times(seconds: float) -> np.ndarray:
        return np.arange(int(seconds * sr)) / sr

    def noise(length: int, width: float) -> np.ndarray:
        # A common part plus a little independent noise per channel: a slightly wide sound.
        common = rng.standard_normal(length)
        return np.stack([common + width * rng.standard_normal(length) for _ in range(2)])

    def filtered(x: np.ndarray, cutoff: float | list[float], kind: str, order: int) -> np.ndarray:
        sos = signal.butter(order, cutoff, kind, fs=sr, output="sos")
        return signal.sosfilt(sos, x, axis=-1)

    def sweep(
        t: np.ndarray, f_start: float, f_end: float, tau_f: float, tau_a: float
    ) -> np.ndarray:
        # Exponential pitch drop from f_start to f_end; the phase is its exact integral.
        phase = 2 * np.pi * (f_end * t + (f_start - f_end) * tau_f * (1 - np.exp(-t / tau_f)))
        return np.sin(phase) * np.exp(-t / tau_a)

    top = min(9000.0, 0.45 * sr)
    kit = {}
    t = times(0.6)
    body = sweep(
        t,
        rng.uniform(90, 180),
        rng.uniform(40, 62),
        rng.uniform(0.01, 0.045),
        rng.uniform(0.12, 0.35),
    )
    click = filtered(rng.standard_normal(len(t)), 2000, "highpass", 2) * np.exp(-t / 0.002)
    drive = rng.uniform(1, 4)
    kick = np.tanh(drive * (body + rng.uniform(0.1, 0.4) * click)) / np.tanh(drive)
    kit["kick"] = np.stack([kick, kick])

    t = times(0.45)
    f = rng.uniform(150, 260)
    tone = (np.sin(2 * np.pi * f * t) + 0.5 * np.sin(2 * np.pi * 1.62 * f * t)) * np.exp(
        -t / rng.uniform(0.03, 0.08)
    )
    rattle = filtered(noise(len(t), 0.3), [rng.uniform(800, 2000), top], "bandpass", 2)
    rattle *= np.exp(-t / rng.uniform(0.06, 0.2))
    mix = rng.uniform(0.45, 0.8)
    kit["snare"] = (1 - mix) * _peak_normalise(tone) + mix * _peak_normalise(rattle)

    hat_cutoff = min(rng.uniform(6000, 9000), top)
    for name, length, tau in (("hat", 0.15, (0.012, 0.035)), ("open_hat", 0.8, (0.12, 0.3))):
        t = times(length)
        kit[name] = filtered(noise(len(t), 0.5), hat_cutoff, "highpass", 4) * np.exp(
            -t / rng.uniform(*tau)
        )

    t = times(0.5)
    f = rng.uniform(140, 220)
    kit["tom_hi"] = sweep(t, 1.3 * f, f, 0.05, rng.uniform(0.15, 0.3))
    kit["tom_lo"] = sweep(t, 1.3 * 0.7 * f, 0.7 * f, 0.05, rng.uniform(0.15, 0.3))

    t = times(2.0)
    kit["crash"] = filtered(noise(len(t), 1.0), min(rng.uniform(3000, 5000), top), "highpass", 2)
    kit["crash"] *= np.exp(-t / rng.uniform(0.5, 1.2))

    hat_pan = rng.uniform(-0.45, 0.45)
    tom_side = rng.choice([-1.0, 1.0])
    placement = {  # (gain, pan)
        "kick": (1.0, 0.0),
        "snare": (rng.uniform(0.6, 0.95), rng.uniform(-0.15, 0.15)),
        "hat": (rng.uniform(0.2, 0.4), hat_pan),
        "open_hat": (rng.uniform(0.2, 0.35), hat_pan),
        "tom_hi": (0.6, tom_side * rng.uniform(0.1, 0.4)),
        "tom_lo": (0.6, -tom_side * rng.uniform(0.1, 0.4)),
        "crash": (rng.uniform(0.15, 0.3), -0.8 * hat_pan),
    }
    for name, (gain, pan) in placement.items():
        angle = (pan + 1.0) * np.pi / 4.0
        sample = _peak_normalise(kit[name] if kit[name].ndim == 2 else np.stack([kit[name]] * 2))
        sample = _fade_tail(sample)
        kit[name] = (gain * np.array([[np.cos(angle)], [np.sin(angle)]]) * sample).astype(
            np.float32
        )
    return kit


def _drum_hits(
    rng: np.random.Generator, arr: Arrangement, grid: _Grid
) -> list[tuple[str, int, float]]:
    """(instrument, sixteenth step, velocity) of every hit: the track's groove, varied per
    bar with extra kicks, ghost notes, open hats, fills every fourth bar and crashes."""
    kick_steps, snare_steps, hat_spacing = DRUM_STYLES[int(rng.integers(len(DRUM_STYLES)))]
    if arr.tempo >= 125:
        hat_spacing = 2  # sixteenth hats get frantic at fast tempi
    disco = len(kick_steps) == 4 and kick_steps[1] == 4 and rng.random() < 0.5
    offbeat_accent = rng.uniform(0.5, 0.8)
    fill_prob, crash_prob = rng.uniform(0.2, 0.7), rng.uniform(0.2, 0.8)
    intro = grid.n_bars >= 3 and rng.random() < 0.25
    hits: list[tuple[str, int, float]] = []
    filled = False
    for bar in range(grid.n_bars):
        if disco:
            hats = [("hat", s, 0.6) for s in (0, 4, 8, 12)] + [
                ("open_hat", s, 0.9) for s in (2, 6, 10, 14)
            ]
        else:
            hats = [
                ("hat", s, 1.0 if s % 4 == 0 else offbeat_accent) for s in range(0, 16, hat_spacing)
            ]
            if rng.random() < 0.15:
                hats = [h for h in hats if h[1] != 14] + [("open_hat", 14, 0.8)]
        beats = [("kick", s, 1.0) for s in kick_steps] + [("snare", s, 1.0) for s in snare_steps]
        if rng.random() < 0.3:
            beats.append(("kick", int(rng.choice([3, 6, 7, 11, 14, 15])), 0.8))
        if rng.random() < 0.3:
            beats.append(("snare", int(rng.choice([7, 9, 14, 15])), 0.3))
        if (bar % 4 == 0 and rng.random() < crash_prob) or filled:
            beats.append(("crash", 0, 1.0))
        filled = bar % 4 == 3 and rng.random() < fill_prob
        if filled:
            beats = [b for b in beats if b[1] < 12]
            hats = [h for h in hats if h[1] < 12]
            drums = rng.choice(["snare", "tom_hi", "tom_lo"], 4)
            beats += [(str(d), 12 + i, 0.6 + 0.12 * i) for i, d in enumerate(drums)]
        if intro and bar == 0:
            beats = []
        hits += [(name, 16 * bar + s, v * rng.uniform(0.85, 1.0)) for name, s, v in beats + hats]
    return hits


def _drums(rng: np.random.Generator, arr: Arrangement, grid: _Grid) -> np.ndarray:
    """The kit played by the groove, one sample per hit mixed in at the hit's velocity."""
    kit = _drum_kit(rng, grid.sample_rate)
    hits = _drum_hits(rng, arr, grid)
    steps = np.array([h[1] for h in hits], dtype=np.float64)
    # Human timing: a few milliseconds early or late, the kick tighter than the rest.
    spread = np.array([0.001 if h[0] == "kick" else 0.0025 for h in hits])
    jitter = np.clip(rng.normal(0, 1, len(hits)), -2.5, 2.5) * spread
    starts = np.round((grid.seconds(steps) + jitter) * grid.sample_rate).astype(np.int64)
    out = np.zeros((2, grid.n), np.float32)
    # One vectorised add per hit (a few hundred per track).
    for (name, _, velocity), start in zip(hits, np.maximum(starts, 0), strict=True):
        if start < grid.n:
            sample = kit[name][:, : grid.n - start]
            out[:, start : start + sample.shape[1]] += velocity * sample
    return out


def _bass(rng: np.random.Generator, arr: Arrangement, grid: _Grid) -> np.ndarray:
    """Riff on the chord roots (fundamentals ~41-156 Hz), approaching chord changes."""
    main = BASS_PATTERNS[int(rng.integers(len(BASS_PATTERNS)))]
    legato = rng.uniform(0.55, 0.95)
    approach_prob = rng.uniform(0.0, 0.5)
    onsets, ends, midi, velocity = [], [], [], []
    for bar in range(grid.n_bars):
        pattern = (
            main if rng.random() > 0.2 else BASS_PATTERNS[int(rng.integers(len(BASS_PATTERNS)))]
        )
        chord = arr.chord(bar)
        root = 28 + (arr.tonic + chord[0] - 28) % 12  # E1 .. Eb2
        pitches = (root, root + chord[2] - chord[0], root + 12)
        next_root = 28 + (arr.tonic + arr.chord(bar + 1)[0] - 28) % 12
        for i, (step, length, which) in enumerate(pattern):
            pitch = pitches[int(rng.integers(3)) if rng.random() < 0.12 else which]
            last = i == len(pattern) - 1
            if last and step >= 12 and next_root != root and rng.random() < approach_prob:
                pitch = next_root + int(rng.choice([-1, 1]))
            onset = float(grid.seconds(16 * bar + step))
            onsets.append(onset)
            ends.append(onset + length * legato * grid.step)
            midi.append(pitch)
            velocity.append(1.0 if step == 0 else rng.uniform(0.75, 1.0))
    partials = _harmonic_amplitudes(rng, 14, (0.7, 1.6))
    if rng.random() < 0.35:
        partials[1::2] *= 0.15  # square-ish: mostly odd harmonics
    timbre = _Timbre(
        partials,
        attack=rng.uniform(0.004, 0.012),
        release=0.02,
        sustain=rng.uniform(0.4, 0.9),
        decay=rng.uniform(0.08, 0.3),
        brightness=rng.uniform(0.25, 0.6),
        brightness_decay=rng.uniform(0.05, 0.4),
    )
    mono = _notes(
        grid, np.array(onsets), np.array(ends), np.array(midi), np.array(velocity), timbre
    )
    return _pan(mono, rng.uniform(-0.05, 0.05))


def _voicing(arr: Arrangement, bar: int, centre: float) -> np.ndarray:
    """The chord of ``bar`` as MIDI notes, each tone in the octave nearest ``centre``."""
    classes = (arr.tonic + arr.chord(bar)) % 12
    return np.sort(classes + 12 * np.round((centre - classes) / 12))


def _pad(rng: np.random.Generator, arr: Arrangement, grid: _Grid) -> np.ndarray:
    """Sustained chords with a slow attack; each channel detuned the other way (width)."""
    centre = rng.uniform(56, 66)
    timbre = _Timbre(
        _harmonic_amplitudes(rng, 10, (1.0, 2.2)),
        attack=rng.uniform(0.08, 0.6),
        release=rng.uniform(0.1, 0.4),
    )
    detune = rng.uniform(4, 12) / 100
    bars = np.arange(0, grid.n_bars, arr.bars_per_chord)
    onsets = grid.seconds(16 * bars)
    ends = grid.seconds(16 * (bars + arr.bars_per_chord)) + timbre.release
    chords = np.stack([_voicing(arr, int(bar), centre) for bar in bars])
    velocity = np.ones(len(bars))
    t = np.arange(grid.n) / grid.sample_rate
    swell = 1 - rng.uniform(0, 0.3) * (0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.1, 0.5) * t))
    # Rows: every chord voice detuned up (left channel), then down (right channel). Two
    # lines, so that a chord's release overlaps the next chord's attack.
    rows = np.concatenate([chords.T + detune, chords.T - detune])
    voices = _notes(grid, onsets, ends, rows, velocity, timbre, lines=2)
    out = np.stack([voices[: len(chords.T)].sum(0), voices[len(chords.T) :].sum(0)])
    return out * swell.astype(np.float32)


def _pluck(rng: np.random.Generator, arr: Arrangement, grid: _Grid) -> np.ndarray:
    """Arpeggio of plucked notes (harmonics decaying faster the higher they are) with a
    ping-pong echo at a dotted eighth."""
    centre = rng.uniform(64, 76)
    spacing = 2 if arr.tempo >= 110 or rng.random() < 0.5 else 1
    direction = rng.integers(4)  # up, down, up-and-down, random
    rest_prob = rng.uniform(0.1, 0.35)
    onsets, midi, velocity = [], [], []
    for bar in range(grid.n_bars):
        if rng.random() < 0.15:
            continue
        tones = _voicing(arr, bar, centre)
        tones = np.append(tones, tones[0] + 12)
        order = [
            tones,
            tones[::-1],
            np.concatenate([tones, tones[-2:0:-1]]),
            rng.permutation(tones),
        ][direction]
        for i, step in enumerate(range(0, 16, spacing)):
            if rng.random() < rest_prob:
                continue
            onsets.append(float(grid.seconds(16 * bar + step)))
            midi.append(order[i % len(order)])
            velocity.append((1.0 if step % 4 == 0 else 0.75) * rng.uniform(0.8, 1.0))
    if not onsets:
        return np.zeros((2, grid.n), np.float32)
    timbre = _Timbre(
        _harmonic_amplitudes(rng, 12, (0.5, 1.3)),
        attack=0.002,
        release=0.01,
        sustain=0.0,
        decay=1 / rng.uniform(2.5, 8),
        brightness=0.0,
        brightness_decay=1 / rng.uniform(3, 15),
    )
    onsets_a = np.array(onsets)
    mono = _notes(
        grid, onsets_a, onsets_a + 1.5, np.array(midi), np.array(velocity), timbre, lines=2
    )
    side = rng.choice([-1.0, 1.0])
    out = _pan(mono, side * rng.uniform(0.25, 0.6))
    delay = int(round(3 * grid.step * grid.sample_rate))
    feedback = rng.uniform(0.15, 0.35)
    near = 0 if side < 0 else 1  # the channel the dry pluck leans to
    for tap in range(1, 4):
        if tap * delay < grid.n:
            channel = (near + tap) % 2  # alternate sides: ping-pong
            out[channel, tap * delay :] += feedback**tap * mono[: grid.n - tap * delay]
    return out


def _other(rng: np.random.Generator, arr: Arrangement, grid: _Grid) -> np.ndarray:
    """The pad and, in most tracks, the pluck, each at a per-track level."""
    pad = _pad(rng, arr, grid)
    pluck = _pluck(rng, arr, grid) if rng.random() < 0.8 else np.zeros_like(pad)
    return _rms_normalise(pad) * rng.uniform(0.4, 1.0) + _rms_normalise(pluck) * rng.uniform(
        0.5, 1.0
    )


def _melody(
    rng: np.random.Generator, arr: Arrangement, grid: _Grid
) -> tuple[dict[str, np.ndarray], float]:
    """Syllables (onset/end in seconds, MIDI pitch, vowel, accent, consonant, phrase) and the
    register centre. Phrases start one to two and a half beats into each two-bar slot and
    leave at least five eighths of it silent, so a quarter or more of the vocals are rests."""
    centre = rng.uniform(55, 70)
    classes = (arr.tonic + SCALES[arr.minor]) % 12
    lo, hi = max(51, int(centre) - 7), min(77, int(centre) + 7)
    notes = np.array([m for m in range(lo, hi + 1) if m % 12 in classes])
    rest_prob = rng.uniform(0.05, 0.25)
    consonant_prob = rng.uniform(0.2, 0.5)
    moves, move_p = [-3, -2, -1, 0, 1, 2, 3], [0.05, 0.15, 0.25, 0.1, 0.25, 0.15, 0.05]
    n_eighths = math.ceil(grid.n / grid.sample_rate / (2 * grid.step))
    current = int(rng.integers(len(notes)))
    syllables: list[tuple[float, float, float, int, float, bool, int]] = []
    for slot in range(0, n_eighths, 16):
        if slot > 0 and rng.random() < rest_prob:
            continue
        start = slot + int(rng.integers(2, 6))
        end = min(start + int(rng.integers(6, 12)), slot + 15)
        pos = start
        while pos < end:
            length = min(int(rng.choice([1, 1, 2, 2, 3, 4])), end - pos)
            current = int(np.clip(current + rng.choice(moves, p=move_p), 0, len(notes) - 1))
            if (pos % 2 == 0 and rng.random() < 0.6) or pos + length == end:
                # Land on a chord tone on beats and at phrase ends.
                tones = np.flatnonzero(np.isin(notes % 12, (arr.tonic + arr.chord(pos // 8)) % 12))
                current = int(tones[np.argmin(np.abs(tones - current))])
            onset, stop = grid.seconds(2 * pos), grid.seconds(2 * (pos + length))
            if onset >= grid.n / grid.sample_rate:
                break
            vowel = int(rng.integers(len(VOWEL_FORMANTS)))
            syllables.append(
                (
                    float(onset),
                    float(stop),
                    float(notes[current]),
                    vowel,
                    rng.uniform(0.7, 1.0),
                    bool(rng.random() < consonant_prob),
                    slot,
                )
            )
            pos += length
    keys = ("onset", "end", "midi", "vowel", "accent", "consonant", "phrase")
    columns = (
        [np.array(column) for column in zip(*syllables, strict=True)]
        if syllables
        else [np.zeros(0)] * 7
    )
    return dict(zip(keys, columns, strict=True)), centre


def _vocals(rng: np.random.Generator, arr: Arrangement, grid: _Grid) -> np.ndarray:
    """A voice: a glottal-like harmonic source (spectrum ~ k^-tilt) shaped by vowel formants,
    with syllable envelopes, glides, scoops, delayed vibrato and consonant hiss.

    Pitch, loudness and formants are computed at a control rate (1.5 ms frames); the
    amplitude of every harmonic is the formant response at its frequency, evaluated for
    all harmonics and frames at once, then interpolated to audio rate."""
    syl, centre = _melody(rng, arr, grid)
    if len(syl["onset"]) == 0:
        return np.zeros((2, grid.n), np.float32)
    voice = sing(rng, syl, centre, grid.sample_rate, grid.n)
    return _pan(voice, rng.uniform(-0.1, 0.1))


def sing(
    rng: np.random.Generator,
    syl: dict[str, np.ndarray],
    centre: float,
    sr: int,
    n: int,
) -> np.ndarray:
    """The voice of ``_vocals`` singing the syllables ``syl`` (columns onset, end (seconds),
    midi, vowel (index into VOWEL_FORMANTS), accent, consonant (bool) and phrase (an id
    shared by the syllables of one phrase), sorted by onset, at least one) in a register
    around MIDI ``centre``: mono float32 (n,). Shared with the rendered MUSDB generator,
    which sings its own composed melodies with it."""
    hop = max(1, round(0.0015 * sr))
    frames = n // hop + 2
    tc = np.arange(frames) * hop / sr

    # Loudness: syllable envelopes that dip to a floor between syllables (legato) inside a
    # phrase gate that is exactly zero in rests.
    s = np.maximum(np.searchsorted(syl["onset"], tc, side="right") - 1, 0)
    since = tc - syl["onset"][s]
    left = syl["end"][s] - tc
    floor = rng.uniform(0.2, 0.5)
    shape = np.clip(since / rng.uniform(0.02, 0.06), 0, 1) * np.clip(
        left / rng.uniform(0.04, 0.1), 0, 1
    )
    loud = (floor + (1 - floor) * shape) * syl["accent"][s] * (1 - 0.3 * np.clip(since / 1.5, 0, 1))
    first = np.flatnonzero(np.diff(syl["phrase"], prepend=-1))
    phrase_on, phrase_off = (
        syl["onset"][first],
        np.append(syl["end"][first[1:] - 1], syl["end"][-1]),
    )
    p = np.searchsorted(phrase_on, tc, side="right") - 1
    pc = np.maximum(p, 0)
    fade_out = rng.uniform(0.05, 0.12)
    gate = (p >= 0) * np.clip((tc - phrase_on[pc]) / 0.03, 0, 1)
    gate *= np.clip((phrase_off[pc] + fade_out - tc) / fade_out, 0, 1)
    env = loud * gate

    # Pitch (in semitones): glides between notes, a scoop up into some notes, vibrato that
    # fades in after the onset, and a slow drift.
    per_second = sr / hop
    pitch = _smooth(syl["midi"][s], int(rng.uniform(0.03, 0.08) * per_second))
    scoop = np.where(
        rng.random(len(syl["onset"])) < 0.5, rng.uniform(0.2, 0.6, len(syl["onset"])), 0.0
    )
    pitch -= scoop[s] * np.exp(-np.maximum(since, 0) / 0.06)
    wobble = _smooth(rng.standard_normal(frames), int(0.3 * per_second))
    wobble /= wobble.std() + 1e-12
    rate = rng.uniform(5.0, 6.0) + 0.3 * wobble
    depth = rng.uniform(20, 60) / 100 * np.clip((since - 0.12) / 0.25, 0, 1)
    pitch += depth * np.sin(2 * np.pi * np.cumsum(rate) / per_second + rng.uniform(0, 2 * np.pi))
    pitch += 0.08 * np.roll(wobble, frames // 3)
    f0 = _midi_hz(pitch)

    # Formants move with the vowel of each syllable; a higher voice has a shorter tract.
    tract = 1 + 0.12 * (centre - 62) / 12 + rng.uniform(-0.05, 0.05)
    formants = _smooth((VOWEL_FORMANTS[syl["vowel"]][s] * tract).T, int(0.04 * per_second))
    count = int(min(48, 9000 / f0.min()))
    k = np.arange(1, count + 1)[:, None]
    fk = k * f0  # (harmonic, frame)
    detuning = (fk[..., None] - formants.T[None]) / (FORMANT_BANDWIDTHS / 2)
    response = (FORMANT_GAINS / np.sqrt(1 + detuning**2)).sum(-1) + 0.02
    amps = k ** -rng.uniform(1.0, 1.6) * response * (fk < 0.45 * sr) * env
    amps = amps.astype(np.float32)

    # To audio rate: linear interpolation of the frames, synthesis only where voiced.
    x = np.arange(n) / hop
    i0 = x.astype(np.int64)
    w = x - i0
    env_audio = env[i0] * (1 - w) + env[i0 + 1] * w
    active = np.flatnonzero(env_audio > 0)
    cycles = np.cumsum((f0[i0] * (1 - w) + f0[i0 + 1] * w) / sr)[active]
    theta = (2 * np.pi * (cycles - np.floor(cycles))).astype(np.float32)
    i0, w = i0[active], w[active].astype(np.float32)
    voiced = np.zeros(len(active), np.float32)
    for amp, sine in zip(amps, _sines(theta, count), strict=True):
        voiced += (amp[i0] + w * (amp[i0 + 1] - amp[i0])) * sine
    voice = np.zeros(n, np.float32)
    voice[active] = voiced

    # Consonants: a short burst of high-passed noise just before some syllables.
    hiss_level = rng.uniform(0.05, 0.15) * np.abs(voice).max()
    sos = signal.butter(2, min(rng.uniform(3500, 6000), 0.45 * sr), "highpass", fs=sr, output="sos")
    t = np.arange(int(0.2 * sr)) / sr
    hissed = syl["consonant"]
    for onset, accent in zip(syl["onset"][hissed], syl["accent"][hissed], strict=True):
        start = max(0, int(round((onset - 0.02) * sr)))
        burst = signal.sosfilt(sos, rng.standard_normal(len(t))) * np.exp(
            -t / rng.uniform(0.01, 0.06)
        )
        burst = _fade_tail(_peak_normalise(burst * np.clip(t / 0.005, 0, 1)))
        burst = (hiss_level * accent * burst)[: n - start]
        voice[start : start + len(burst)] += burst.astype(np.float32)
    return voice


def _rms_normalise(x: np.ndarray) -> np.ndarray:
    rms = np.sqrt(np.mean(np.square(x, dtype=np.float64)))
    return x / rms if rms > 0 else x


def render_track(seed: int, duration: float, sample_rate: int = 44100) -> dict[str, np.ndarray]:
    """The four stems of one track, each float32 (2, n_samples) (channels first), already at
    their final level: the mixture (their sum) and every stem peak at 0.9 or below, so they
    can be quantised to int16 and summed without overflow."""
    if duration <= 0 or sample_rate < 8000:
        raise ValueError(
            f"need duration > 0 and sample_rate >= 8000, got {duration}, {sample_rate}"
        )
    rngs = _streams(seed)
    arr = track_arrangement(seed)
    grid = _Grid(sample_rate, int(round(duration * sample_rate)), 60.0 / arr.tempo / 4, arr.swing)
    parts = (_drums, _bass, _other, _vocals)
    stems = {
        name: part(rng, arr, grid)
        for name, part, rng in zip(SOURCES, parts, rngs[1:5], strict=True)
    }
    # Levels relative to equal loudness (RMS) vary by track, vocals usually on top.
    mix_rng = rngs[5]
    level_db = {"drums": (-3, 3), "bass": (-4, 2), "other": (-5, 1), "vocals": (-2, 4)}
    for name in SOURCES:
        stems[name] = _rms_normalise(stems[name]) * 10 ** (mix_rng.uniform(*level_db[name]) / 20)
    peak = max(np.abs(sum(stems.values())).max(), *(np.abs(x).max() for x in stems.values()))
    scale = 0.9 / peak if peak > 0 else 1.0
    return {name: (stems[name] * scale).astype(np.float32) for name in SOURCES}


# -- the dataset on disk -------------------------------------------------------------------


@dataclass(frozen=True)
class Generator:
    """One way of making the tracks of a synthetic MUSDB folder. Everything around the
    tracks (parameters, splits and names, setup.yaml, the marker, atomic generation, the
    progress bar) is shared by ``write_synthetic_musdb``; a generator is chosen by the
    ``generator`` entry of ``data.synthetic`` (absent: this module's ``synth``)."""

    name: str  # the value of ``generator`` that selects it
    module: str  # written into MARKER: a folder of another generator is another dataset
    format_version: int  # bump whenever a seed's audio or the layout changes
    defaults: dict  # every parameter and its default (the value's type is the parameter's)
    title: Callable[[int], str]  # track seed -> descriptive part of the track's folder name
    render: Callable[[int, dict], dict[str, np.ndarray]]  # (track seed, params) -> stems
    float_wav: bool = False  # FLOAT wav, mixture = float32 sum (else PCM_16, integer sum)
    preflight: Callable[[dict], None] | None = None  # raises when it cannot run here


SYNTH = Generator(
    name="synth",
    module=__name__,
    format_version=FORMAT_VERSION,
    defaults=DEFAULTS,
    title=lambda seed: track_arrangement(seed).name,
    render=lambda seed, params: render_track(seed, params["duration"], params["sample_rate"]),
)


def generator(name: str) -> Generator:
    """The generator called ``name`` (``synth`` here, ``render`` in render_musdb)."""
    if name == SYNTH.name:
        return SYNTH
    if name == "render":
        from audiolab.data.render_musdb import RENDER  # imported late: it builds on this module

        return RENDER
    raise SynthMusdbError(
        f"unknown data.synthetic.generator={name!r}: choose synth (data=musdb_synth) or render (data=musdb_render)"
    )




def _params(gen: Generator = SYNTH, **params: object) -> dict:
    """Generation parameters with defaults filled in and types normalised (so 12 == 12.0)."""
    params.pop("progress", None)  # allowed so that one dict can configure both functions
    unknown = set(params) - set(gen.defaults)
    if unknown:
        raise TypeError(
            f"unknown synthetic MUSDB parameters {sorted(unknown)} for generator {gen.name!r}; "
            f"known: {sorted(gen.defaults)}"
        )
    merged = {**gen.defaults, **params}
    out = {key: type(default)(merged[key]) for key, default in gen.defaults.items()}
    if out["n_train"] < 1 or out["n_valid"] < 0 or out["n_test"] < 0:
        raise SynthMusdbError(f"need n_train >= 1 and n_valid, n_test >= 0, got {out}")
    if out["duration"] <= 0 or out["sample_rate"] < 8000 or out["seed"] < 0:
        raise SynthMusdbError(f"need duration > 0, sample_rate >= 8000 and seed >= 0, got {out}")
    return out


def _split_params(params: dict) -> tuple[Generator, dict]:
    """The generator that ``params`` name (``generator``, default synth) and the rest."""
    params = dict(params)
    return generator(str(params.pop("generator", SYNTH.name))), params


def _plan(gen: Generator, params: dict) -> dict[str, list[tuple[str, int]]]:
    """(track name, track seed) of every track, by split."""
    plan = {}
    for split in SPLIT_FOLDERS:
        tracks = []
        for index in range(params[f"n_{split}"]):
            seed = track_seed(params["seed"], split, index)
            tracks.append((f"{split}_{index:03d} - {gen.title(seed)}", seed))
        plan[split] = tracks
    return plan


def _problem(root: Path, params: dict, gen: Generator = SYNTH) -> str | None:
    """What keeps ``root`` from being a finished dataset made with ``params``; None if nothing."""
    if not root.exists():
        return f"{root} does not exist"
    if not root.is_dir():
        return f"{root} is not a folder"
    marker = root / MARKER
    if not marker.is_file():
        return f"{root} holds no {MARKER}: it is an interrupted generation or some other data"
    try:
        found = json.loads(marker.read_text())
        version, found_params = found["format"], found["params"]
        module = found.get("generator", SYNTH.module)
        folders = [
            root / SPLIT_FOLDERS[split] / name
            for split, names in found["tracks"].items()
            for name in names
        ]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{marker} is unreadable ({exc})"
    if module != gen.module:
        return f"{root} holds a dataset of {module}, not of {gen.module} (generator={gen.name})"
    if version != gen.format_version:
        return (
            f"{root} was written by generator format {version} "
            f"(this one writes {gen.format_version})"
        )
    if found_params != params:
        changed = ", ".join(
            f"{key}={found_params.get(key)!r} (asked for {value!r})"
            for key, value in params.items()
            if found_params.get(key) != value
        )
        return f"{root} holds a synthetic dataset generated with other parameters: {changed}"
    for folder in folders:
        missing = [s for s in ("mixture", *SOURCES) if not (folder / f"{s}.wav").is_file()]
        if missing:
            return f"{folder} lacks {', '.join(missing)}.wav"
    if not (root / SETUP_FILE).is_file():
        return f"{root} lacks {SETUP_FILE}"
    return None


def is_complete(root: str | Path, **params: object) -> bool:
    """True when root holds a finished dataset generated with these parameters (reads
    MARKER). Missing parameters take the defaults of the generator (``generator``, default
    synth: those of ``write_synthetic_musdb``)."""
    gen, params = _split_params(params)
    return _problem(Path(root).expanduser(), _params(gen, **params), gen) is None


def check_can_generate(root: str | Path, **params: object) -> None:
    """Raise (one line, naming the fix) when root is not yet a finished dataset with these
    parameters and its generator cannot run on this machine: a check that costs nothing,
    for callers that want to fail before any other work."""
    gen, params = _split_params(params)
    params = _params(gen, **params)
    if gen.preflight is not None and _problem(Path(root).expanduser(), params, gen) is not None:
        gen.preflight(params)


def _write_track(
    folder: Path, stems: dict[str, np.ndarray], sample_rate: int, float_wav: bool = False
) -> None:
    """The four stems and their mixture, which is the exact sum of the stems as stored:
    of their int16 values (PCM_16), or of their float32 values in SOURCES order (FLOAT)."""
    folder.mkdir(parents=True)
    if not all(np.isfinite(x).all() for x in stems.values()):
        raise AssertionError("synthetic stems are not finite; the generator is broken")
    if float_wav:
        audio = {name: stems[name].astype(np.float32) for name in SOURCES}
        mixture = audio[SOURCES[0]].copy()
        for name in SOURCES[1:]:
            mixture += audio[name]
        peak = max(np.abs(x).max() for x in (mixture, *audio.values()))
        if peak > 1.0:
            raise AssertionError(f"synthetic mixture peaks at {peak:.3f} > 1; the mix stage is wrong")
        for name, x in {"mixture": mixture, **audio}.items():
            _write_float_wav(folder / f"{name}.wav", x, sample_rate)
        return
    ints = {name: np.round(stems[name] * 32767).astype(np.int32) for name in SOURCES}
    # The mixture is summed after quantising, so it equals the sum of the stored stems.
    mixture = sum(ints.values())
    if np.abs(mixture).max() > 32767 or max(np.abs(x).max() for x in ints.values()) > 32767:
        raise AssertionError("synthetic mixture overflows int16; render_track's levels are wrong")
    for name, audio in {"mixture": mixture, **ints}.items():
        sf.write(folder / f"{name}.wav", audio.T.astype(np.int16), sample_rate, subtype="PCM_16")


def _write_float_wav(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    """``audio`` (channels, n) as a 32-bit float wav (WAVE_FORMAT_IEEE_FLOAT). Written here
    rather than by libsndfile, whose float files carry a time stamp (in their PEAK chunk):
    the same seed then gives the same bytes."""
    channels, n = audio.shape
    data = np.ascontiguousarray(audio.T, dtype="<f4").tobytes()
    fmt = struct.pack("<HHIIHHH", 3, channels, sample_rate, 4 * channels * sample_rate, 4 * channels, 32, 0)
    body = (
        b"WAVE"
        + b"fmt " + struct.pack("<I", len(fmt)) + fmt
        + b"fact" + struct.pack("<II", 4, n)
        + b"data" + struct.pack("<I", len(data)) + data
    )
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


def _write_setup(folder: Path, validation_tracks: list[str], sample_rate: int) -> None:
    """musdb's own setup with the synthetic validation tracks (musdb.DB reads it as setup_file)."""
    import musdb  # only here: rendering does not need it

    with open(os.path.join(musdb.__path__[0], "configs", "mus.yaml")) as handle:
        setup = yaml.safe_load(handle)
    setup["validation_tracks"] = validation_tracks
    setup["sample_rate"] = float(sample_rate)
    with open(folder / SETUP_FILE, "w") as handle:
        yaml.safe_dump(setup, handle, sort_keys=False, allow_unicode=True)


def write_synthetic_musdb(root: str | Path, progress: bool = True, **params: object) -> Path:
    """Generate (or do nothing if is_complete with the same params) and return root.

    ``params``: ``generator`` (``synth``, the default, or ``render``) and that generator's
    parameters, missing ones taking its defaults: for synth ``n_train=12, n_valid=3,
    n_test=5, duration=12.0, sample_rate=44100, seed=0`` (DEFAULTS).

    The dataset is written into a temporary folder beside ``root`` and renamed into place
    with MARKER already inside, so an interrupted run never leaves a folder that looks
    complete. An existing non-empty ``root`` that is not this exact dataset is an error:
    nothing of the user's is ever deleted or overwritten."""
    gen, params = _split_params(params)
    params = _params(gen, **params)
    root = Path(root).expanduser()
    problem = _problem(root, params, gen)
    if problem is None:
        log.info("synthetic MUSDB already complete in %s", root)
        return root
    if root.exists() and not _is_empty_dir(root):
        raise SynthMusdbError(
            f"{problem}. Delete {root} to generate it again, or choose another root."
        )
    if gen.preflight is not None:
        gen.preflight(params)
    plan = _plan(gen, params)
    jobs = [
        (SPLIT_FOLDERS[split], name, seed)
        for split, tracks in plan.items()
        for name, seed in tracks
    ]
    if _is_empty_dir(root):
        root.rmdir()
    sample_rate = params["sample_rate"]
    # A root that exists when the block ends was finished by another process first: it is
    # kept (ours dropped) and must then be this very dataset.
    with atomic_write(root, keep_existing_folder=True) as (tmp,):
        tmp.mkdir()
        desc = "synthetic MUSDB" if gen is SYNTH else f"{gen.name} MUSDB"
        for folder, name, track in tqdm(jobs, desc=desc, unit="track", disable=not progress):
            _write_track(tmp / folder / name, gen.render(track, params), sample_rate, gen.float_wav)
        (tmp / "test").mkdir(exist_ok=True)  # musdb expects it even with no test tracks
        _write_setup(tmp, [name for name, _ in plan["valid"]], sample_rate)
        marker = {
            "format": gen.format_version,
            "generator": gen.module,
            "params": params,
            "tracks": {split: [name for name, _ in tracks] for split, tracks in plan.items()},
        }
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    _check_in_place(root, params, gen)
    log.info("wrote synthetic MUSDB (%d tracks) to %s", len(jobs), root)
    return root


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def _check_in_place(root: Path, params: dict, gen: Generator = SYNTH) -> None:
    """After the rename: ``root`` holds this dataset (ours, or an identical one another
    process finished first), or the error says what is there instead."""
    problem = _problem(root, params, gen)
    if problem is not None:
        raise SynthMusdbError(
            f"could not put the generated dataset in {root}: {problem}. "
            f"Delete {root} to generate it again, or choose another root."
        )
