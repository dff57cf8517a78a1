"""Rendered multitrack songs in the MUSDB18-HQ layout (``data=musdb_render``).

Like ``synth_musdb`` (whose folder writing, splits, marker, atomic generation and singing
voice this generator shares), but the instruments are sampled ones: every song is composed
as MIDI and rendered through FluidSynth with a General MIDI SoundFont (FluidR3_GM, Debian
packages ``fluidsynth`` and ``fluid-soundfont-gm``), then mixed.

* composition: tempo (70-160 BPM), meter (mostly 4/4, some 3/4 and 6/8), key and mode,
  a song form (intro, verses, choruses, bridge, outro) whose sections have their own chord
  loops and densities, drums (a GM kit on channel 10, grooves with fills at section ends
  and crashes at section starts, humanised timing and velocity), a bass line following the
  chords (root, root-fifth, eighths, octaves, walking, syncopated), one to three comping
  parts (pianos, organs, guitars, strings, brass, synth pads) and a lead melody; a track is
  a window of ``duration`` seconds of the song starting at one of its sections;
* rendering: each part is written as a standard MIDI file (``_smf``, no dependency) and
  rendered by the ``fluidsynth`` program with its reverb and chorus off;
* stems: drums; bass (GM basses 32-39 and synth basses); other (the comping parts and, where
  nobody sings, the lead instrument); vocals: synth_musdb's formant voice singing the melody
  (vibrato, scoops, consonants) with breaths before phrases, sometimes under a quieter GM
  choir (programs 52-54);
* mixing: per-part level, pan and EQ, light compression per stem, one reverb room per song
  (a synthetic impulse response) with a send per stem, and a master limiter whose gain curve,
  computed on the mixture, multiplies every stem: the mixture written is exactly the float32
  sum of the stems written (FLOAT wav).

A track depends only on (dataset seed, split, index), as in synth_musdb.
"""

from __future__ import annotations

import math
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy import ndimage, signal

from audiolab.data import synth_musdb
from audiolab.data.synth_musdb import SOURCES, Generator, SynthMusdbError

FORMAT_VERSION = 1  # bump whenever a seed's audio changes
DEFAULT_SOUNDFONT = "/usr/share/sounds/sf2/FluidR3_GM.sf2"
DEFAULTS = {
    "n_train": 40,
    "n_valid": 4,
    "n_test": 8,
    "duration": 30.0,
    "sample_rate": 44100,
    "seed": 0,
    "soundfont": DEFAULT_SOUNDFONT,
}
PPQ = 480  # MIDI ticks per quarter note
STEP = PPQ // 4  # ticks per sixteenth
DRUM_CHANNEL = 9  # "channel 10"
MODES = {
    "major": np.array([0, 2, 4, 5, 7, 9, 11]),
    "minor": np.array([0, 2, 3, 5, 7, 8, 10]),
    "dorian": np.array([0, 2, 3, 5, 7, 9, 10]),
    "mixolydian": np.array([0, 2, 4, 5, 7, 9, 10]),
}
# Meters: (numerator, denominator, sixteenths per bar, sixteenths per beat).
METERS = {"4/4": (4, 4, 16, 4), "3/4": (3, 4, 12, 4), "6/8": (6, 8, 12, 6)}
FORMS = (
    ("intro", "verse", "chorus", "verse", "chorus", "bridge", "chorus", "outro"),
    ("intro", "verse", "verse", "chorus", "bridge", "chorus", "chorus", "outro"),
    ("intro", "chorus", "verse", "chorus", "verse", "chorus", "outro"),
    ("verse", "chorus", "verse", "chorus", "bridge", "chorus", "outro"),
)
ENERGY = {"intro": 0.65, "verse": 0.8, "chorus": 1.0, "bridge": 0.75, "outro": 0.6}
# FluidR3 drum kits (bank 128) and how often each is drawn.
DRUM_KITS = {0: 6, 1: 2, 2: 2, 8: 3, 9: 1, 16: 3, 17: 1, 24: 1, 25: 1, 32: 2, 40: 1}
# GM drum notes.
KICK, SNARE, RIM, CLAP, HAT, PEDAL_HAT, OPEN_HAT = 36, 38, 37, 39, 42, 44, 46
RIDE, RIDE_BELL, CRASH, CRASH2 = 51, 53, 49, 57
TOMS = (50, 48, 47, 45, 43, 41)  # high to low
# Bass instruments: (bank, program), the GM basses 32-39 and FluidR3's synth basses 3 and 4.
BASSES = ((0, 32), (0, 33), (0, 33), (0, 34), (0, 35), (0, 36), (0, 37), (0, 38), (0, 39),
          (8, 38), (8, 39))
# Comping instruments: (name, bank, program, role, styles); role "rhythm" or "sustain".
COMPS = (
    ("grand piano", 0, 0, "rhythm", ("block", "arpeggio", "sustain")),
    ("bright piano", 0, 1, "rhythm", ("block", "arpeggio")),
    ("electric grand", 0, 2, "rhythm", ("block", "arpeggio")),
    ("rhodes", 0, 4, "rhythm", ("block", "arpeggio", "sustain")),
    ("detuned EP", 8, 4, "rhythm", ("block", "sustain")),
    ("vibraphone", 0, 11, "rhythm", ("arpeggio", "block")),
    ("drawbar organ", 0, 16, "sustain", ("sustain", "block")),
    ("percussive organ", 0, 17, "rhythm", ("block",)),
    ("rock organ", 0, 18, "sustain", ("sustain",)),
    ("nylon guitar", 0, 24, "rhythm", ("arpeggio", "strum")),
    ("steel guitar", 0, 25, "rhythm", ("strum", "arpeggio")),
    ("12-string guitar", 8, 25, "rhythm", ("strum",)),
    ("jazz guitar", 0, 26, "rhythm", ("block", "arpeggio")),
    ("clean guitar", 0, 27, "rhythm", ("strum", "arpeggio")),
    ("funk guitar", 8, 28, "rhythm", ("stabs",)),
    ("palm-muted guitar", 0, 28, "rhythm", ("power",)),
    ("overdrive guitar", 0, 29, "rhythm", ("power", "strum")),
    ("distortion guitar", 0, 30, "rhythm", ("power",)),
    ("strings", 0, 48, "sustain", ("sustain",)),
    ("slow strings", 0, 49, "sustain", ("sustain",)),
    ("synth strings", 0, 50, "sustain", ("sustain",)),
    ("orchestral pad", 8, 48, "sustain", ("sustain",)),
    ("brass section", 0, 61, "sustain", ("stabs", "sustain")),
    ("synth brass", 0, 62, "sustain", ("stabs",)),
    *((f"synth pad {p - 87}", 0, p, "sustain", ("sustain",)) for p in range(88, 96)),
)
# Lead instruments of the instrumental sections: (name, bank, program, octave shift).
LEADS = (
    ("flute", 0, 73, 12), ("clarinet", 0, 71, 0), ("oboe", 0, 68, 0), ("alto sax", 0, 65, 0),
    ("tenor sax", 0, 66, -12), ("trumpet", 0, 56, 0), ("violin", 0, 40, 12),
    ("harmonica", 0, 22, 0), ("square lead", 0, 80, 0), ("saw lead", 0, 81, 0),
    ("overdrive guitar", 0, 29, 0), ("vibraphone", 0, 11, 12),
)
CHOIRS = ((0, 52), (0, 53), (0, 54))  # Ahh choir, Ohh voices, synth voice


class RenderMusdbError(SynthMusdbError):
    """The rendered MUSDB set cannot be made here (no fluidsynth or SoundFont)."""


# -- the song -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Section:
    """A stretch of the song with one chord loop and one density."""

    kind: str  # intro, verse, chorus, bridge, outro
    start: int  # first bar
    bars: int
    progression: tuple[int, ...]  # scale degree of each chord, cycled
    bars_per_chord: int

    @property
    def energy(self) -> float:
        return ENERGY[self.kind]


@dataclass(frozen=True)
class Song:
    """Everything the parts share: tempo, meter, key, the sections and the window rendered."""

    tempo: int  # quarter notes per minute
    meter: str
    tonic: int  # pitch class
    mode: str
    sevenths: bool
    swing: float  # fraction of a sixteenth by which off-beat sixteenths are late
    sections: tuple[Section, ...]
    window_bar: int  # the track starts at this bar (a section start)

    @property
    def bar_steps(self) -> int:
        return METERS[self.meter][2]

    @property
    def beat_steps(self) -> int:
        return METERS[self.meter][3]

    @property
    def bar_ticks(self) -> int:
        return self.bar_steps * STEP

    @property
    def us_per_quarter(self) -> int:
        return round(60e6 / self.tempo)

    @property
    def name(self) -> str:
        return f"{self.tempo}bpm {self.meter.replace('/', '-')} {synth_musdb.KEY_NAMES[self.tonic]} {self.mode}"

    def seconds(self, ticks: np.ndarray | float) -> np.ndarray:
        """Ticks to seconds, exactly as a MIDI player with this tempo counts them."""
        return np.asarray(ticks, dtype=np.float64) * self.us_per_quarter / 1e6 / PPQ

    def ticks(self, seconds: float) -> int:
        return int(math.ceil(seconds * 1e6 * PPQ / self.us_per_quarter))

    def chord(self, section: Section, bar: int) -> np.ndarray:
        """Semitones above the tonic of the chord tones of bar ``bar`` of ``section``."""
        root = section.progression[(bar // section.bars_per_chord) % len(section.progression)]
        degrees = np.arange(4 if self.sevenths else 3) * 2 + root
        scale = MODES[self.mode]
        return scale[degrees % 7] + 12 * (degrees // 7)

    def scale_notes(self, low: int, high: int) -> np.ndarray:
        """MIDI notes of the key in [low, high]."""
        classes = (self.tonic + MODES[self.mode]) % 12
        return np.array([m for m in range(low, high + 1) if m % 12 in classes])

    def swung(self, step: float) -> float:
        """Ticks of sixteenth ``step`` of a bar, odd sixteenths delayed by the swing."""
        return (step + self.swing * (int(step) % 2 == 1)) * STEP


def _progression(rng: np.random.Generator, mode: str) -> tuple[int, ...]:
    minorish = mode in ("minor", "dorian")
    if rng.random() < 0.75:
        loops = synth_musdb.PROGRESSIONS[minorish]
        return loops[int(rng.integers(len(loops)))]
    return (0, *(int(d) for d in rng.integers(1, 7, 3)))


def compose_song(rng: np.random.Generator, duration: float) -> Song:
    """Tempo, meter, key, form and window of one song (no notes yet)."""
    tempo = int(rng.integers(70, 161))
    meter = str(rng.choice(list(METERS), p=[0.76, 0.12, 0.12]))
    tonic = int(rng.integers(12))
    mode = str(rng.choice(list(MODES), p=[0.45, 0.4, 0.08, 0.07]))
    sevenths = bool(rng.random() < 0.3)
    swing = float(rng.uniform(0.15, 0.35)) if meter == "4/4" and rng.random() < 0.2 else 0.0
    form = FORMS[int(rng.integers(len(FORMS)))]
    loops = {kind: _progression(rng, mode) for kind in ("verse", "chorus", "bridge")}
    loops["intro"] = loops[str(rng.choice(["verse", "chorus"]))]
    loops["outro"] = loops["chorus"]
    lengths = {"intro": int(rng.choice([2, 4])), "verse": 8, "chorus": 8,
               "bridge": int(rng.choice([4, 8])), "outro": int(rng.choice([2, 4]))}
    per_chord = {kind: 2 if tempo >= 120 and rng.random() < 0.4 else 1 for kind in loops}
    song = Song(tempo, meter, tonic, mode, sevenths, swing, (), 0)
    bars_needed = math.ceil(song.ticks(duration) / song.bar_ticks) + 1
    sections, bar = [], 0
    while bar < bars_needed or len(sections) < len(form):
        kind = form[len(sections) % len(form)]
        sections.append(Section(kind, bar, lengths[kind], loops[kind], per_chord[kind]))
        bar += lengths[kind]
    fits = [s.start for s in sections if s.start + bars_needed <= bar] or [0]
    window = 0 if rng.random() < 0.3 else int(rng.choice(fits))
    return Song(tempo, meter, tonic, mode, sevenths, swing, tuple(sections), window)


# -- parts --------------------------------------------------------------------------------


@dataclass
class Part:
    """One instrument of one stem: MIDI notes (tick, length, pitch, velocity 1-127)."""

    stem: str
    name: str
    bank: int
    program: int
    channel: int
    notes: list[tuple[int, int, int, int]] = field(default_factory=list)

    def add(self, tick: float, length: float, pitch: int, velocity: float) -> None:
        velocity = int(np.clip(round(velocity), 1, 127))
        self.notes.append((int(round(tick)), max(1, int(round(length))), int(pitch), velocity))


def _jitter(rng: np.random.Generator, song: Song, ms: float) -> float:
    """A human timing error of about ``ms`` milliseconds, in ticks."""
    return float(np.clip(rng.normal(0, 1), -2.5, 2.5)) * song.ticks(ms / 1000.0)


def _groove(rng: np.random.Generator, song: Song) -> dict[str, object]:
    """The song's drum groove: kick and snare steps of one bar and the hi-hat spacing."""
    if song.meter == "4/4":
        kick, snare = [((0, 8), (4, 12)), ((0, 6, 8), (4, 12)), ((0, 4, 8, 12), (4, 12)),
                       ((0, 10), (8,)), ((0, 3, 10), (4, 12)), ((0, 7, 10), (4, 12))][int(rng.integers(6))]
    elif song.meter == "3/4":
        kick, snare = [((0,), (4, 8)), ((0, 6), (8,))][int(rng.integers(2))]
    else:
        kick, snare = [((0,), (6,)), ((0, 10), (6,))][int(rng.integers(2))]
    hat_spacing = 1 if song.tempo < 100 and song.meter == "4/4" and rng.random() < 0.3 else 2
    return {"kick": kick, "snare": snare, "hats": hat_spacing, "ghosts": rng.uniform(0, 0.4),
            "chorus_cymbal": int(rng.choice([RIDE, OPEN_HAT, HAT])), "fill": rng.uniform(0.5, 0.95)}


def _drum_bar(rng, song: Song, section: Section, bar: int, groove: dict) -> list[tuple[float, int, float]]:
    """(step, note, velocity 0-1) of one bar of drums in ``section``."""
    n, kind = song.bar_steps, section.kind
    if kind in ("intro", "outro") and section.energy < 0.7 and rng.random() < 0.4:
        cymbal, spacing = (PEDAL_HAT if rng.random() < 0.5 else RIDE), song.beat_steps
    elif kind == "chorus":
        cymbal, spacing = groove["chorus_cymbal"], 2
    elif kind == "bridge":
        cymbal, spacing = RIDE, 2
    else:
        cymbal, spacing = HAT, groove["hats"]
    hits = [(s, cymbal, 0.8 if s % song.beat_steps == 0 else 0.55) for s in range(0, n, spacing)]
    half_time = kind == "bridge" and song.meter == "4/4"
    kicks = (0,) if half_time else groove["kick"]
    snares = (8,) if half_time else groove["snare"]
    hits += [(s, KICK, 1.0) for s in kicks] + [(s, SNARE, 0.95) for s in snares]
    if rng.random() < groove["ghosts"]:
        hits.append((int(rng.choice([s for s in range(1, n) if s not in snares])), SNARE, 0.3))
    if bar == 0 and (kind in ("chorus", "bridge", "outro") or rng.random() < 0.4):
        hits.append((0, CRASH if rng.random() < 0.7 else CRASH2, 0.9))
    if bar == section.bars - 1 and rng.random() < groove["fill"]:
        hits = _fill(rng, song, hits)
    return hits


def _fill(rng, song: Song, hits: list) -> list:
    """The last beat or two of a bar replaced by a snare and tom run, descending."""
    length = song.beat_steps * int(rng.integers(1, 3))
    start = song.bar_steps - length
    kept = [h for h in hits if h[0] < start]
    voices = [SNARE, *TOMS[int(rng.integers(0, 2)) :: 2]]
    spacing = 1 if song.tempo < 110 else 2
    steps = list(range(start, song.bar_steps, spacing))
    for i, step in enumerate(steps):
        note = voices[min(len(voices) - 1, i * len(voices) // len(steps))]
        kept.append((step, note, 0.6 + 0.4 * i / len(steps)))
    return kept


def drums_part(rng: np.random.Generator, song: Song) -> Part:
    """The kit (a FluidR3 drum bank preset) playing the groove, section by section."""
    kits, weights = zip(*DRUM_KITS.items(), strict=True)
    kit = int(rng.choice(kits, p=np.array(weights) / sum(weights)))
    part = Part("drums", f"drum kit {kit}", 128, kit, DRUM_CHANNEL)
    groove = _groove(rng, song)
    for section in song.sections:
        if section.kind == "intro" and rng.random() < 0.3:
            continue  # the band comes in after the intro
        for bar in range(section.bars):
            origin = (section.start + bar) * song.bar_ticks
            for step, note, velocity in _drum_bar(rng, song, section, bar, groove):
                tight = 3.0 if note == KICK else 6.0
                tick = origin + song.swung(step) + _jitter(rng, song, tight)
                vel = 127 * velocity * section.energy ** 0.5 * rng.uniform(0.85, 1.0)
                part.add(max(0.0, tick), STEP, note, vel)
    return part


def _bass_steps(style: str, song: Song, rng: np.random.Generator) -> list[tuple[int, int, int]]:
    """(step, length in sixteenths, tone: 0 root, 1 fifth, 2 octave, 3 walking) of one bar."""
    n, beat = song.bar_steps, song.beat_steps
    if style == "root":
        return [(0, n, 0)]
    if style == "root_fifth":
        return [(0, n // 2, 0), (n // 2, n // 2, 1)]
    if style == "eighths":
        return [(s, 2, 0) for s in range(0, n, 2)]
    if style == "octave":
        return [(s, 2, 2 * ((s // 2) % 2)) for s in range(0, n, 2)]
    if style == "walking":
        return [(s, beat, 3) for s in range(0, n, beat if beat == 4 else 3)]
    syncopated = [0, *sorted(rng.choice([3, 6, 8, 10, 11, 14], 3, replace=False))]
    steps = [s for s in syncopated if s < n]
    return [(s, (steps + [n])[i + 1] - s, int(rng.choice([0, 0, 1, 2]))) for i, s in enumerate(steps)]


def bass_part(rng: np.random.Generator, song: Song) -> Part:
    """A bass line on the chord roots, its pattern per song and busier in choruses."""
    bank, program = BASSES[int(rng.integers(len(BASSES)))]
    part = Part("bass", f"bass {bank}:{program}", bank, program, 0)
    styles = ["root_fifth", "eighths", "octave", "walking", "syncopated"]
    main = str(rng.choice(styles, p=[0.25, 0.25, 0.1, 0.15, 0.25]))
    patterns = {main: _bass_steps(main, song, rng)}
    legato = rng.uniform(0.6, 0.95)
    scale = song.scale_notes(28, 60)
    for section in song.sections:
        if section.kind == "intro" and rng.random() < 0.4:
            continue
        style = "root" if section.kind in ("intro", "outro") else main
        if section.kind == "bridge" and rng.random() < 0.5:
            style = "root_fifth"
        pattern = patterns.setdefault(style, _bass_steps(style, song, rng))
        for bar in range(section.bars):
            chord = song.chord(section, bar)
            root = 28 + (song.tonic + chord[0] - 28) % 12  # E1 .. Eb2
            next_root = 28 + (song.tonic + song.chord(section, bar + 1)[0] - 28) % 12
            origin = (section.start + bar) * song.bar_ticks
            for i, (step, length, tone) in enumerate(pattern):
                pitch = _bass_pitch(rng, root, chord, next_root, tone, i, len(pattern), scale)
                tick = origin + song.swung(step) + _jitter(rng, song, 5)
                vel = (100 if step == 0 else 85) * section.energy ** 0.3 * rng.uniform(0.85, 1.05)
                part.add(max(0.0, tick), length * STEP * legato, pitch, vel)
    return part


def _bass_pitch(rng, root, chord, next_root, tone, index, count, scale) -> int:
    """The note of one bass step: root, fifth, octave, or a walking line (chord and scale
    tones, the last one a half step from the next chord's root)."""
    fifth = root + chord[2] - chord[0]
    if tone == 0:
        return root
    if tone == 1:
        return fifth
    if tone == 2:
        return root + 12
    if index == 0:
        return root
    if index == count - 1:
        return next_root + int(rng.choice([-1, 1]))
    near = scale[np.abs(scale - root - 12 * rng.random()).argsort()[:4]]
    return int(rng.choice([fifth, root + chord[1] - chord[0], *near]))


def _voicing(song: Song, section: Section, bar: int, centre: float) -> np.ndarray:
    """The chord of a bar as MIDI notes, each tone in the octave nearest ``centre``."""
    classes = (song.tonic + song.chord(section, bar)) % 12
    return np.sort(classes + 12 * np.round((centre - classes) / 12)).astype(int)


def _comp_bar(rng, song: Song, style: str, tones: np.ndarray, origin: int, add) -> None:
    """One bar of a comping ``style`` on the chord ``tones``; ``add(tick, length, pitch, vel)``."""
    n = song.bar_steps
    if style == "sustain":
        for pitch in tones:
            add(origin, n * STEP * 0.98, pitch, 70)
    elif style == "block":
        rhythm = [0, 6, 8, 14] if n == 16 else list(range(0, n, song.beat_steps))
        for step in rhythm:
            tick = origin + song.swung(step) + _jitter(rng, song, 6)
            for pitch in [tones[0] - 12, *tones] if tones[0] >= 60 else tones:
                add(tick, 3 * STEP, pitch, 80 if step == 0 else 68)
    elif style == "arpeggio":
        order = np.concatenate([tones, tones[::-1][1:-1]]) if rng.random() < 0.5 else tones
        for i, step in enumerate(range(0, n, 2)):
            add(origin + song.swung(step) + _jitter(rng, song, 5), 4 * STEP, order[i % len(order)], 72)
    elif style == "strum":
        for step in range(0, n, 2):
            down = (step // 2) % 2 == 0
            strings = tones if down else tones[::-1]
            tick = origin + song.swung(step) + _jitter(rng, song, 8)
            for k, pitch in enumerate(strings):
                add(tick + k * song.ticks(0.012), 2 * STEP, pitch, 82 if down else 60)
    elif style == "power":
        root = tones[0] - 12 if tones[0] >= 60 else tones[0]
        for step in range(0, n, 2):
            tick = origin + song.swung(step) + _jitter(rng, song, 4)
            for pitch in (root, root + 7, root + 12):
                add(tick, 1.6 * STEP, pitch, 90 if step % song.beat_steps == 0 else 75)
    else:  # stabs on the off-beats
        for step in range(song.beat_steps // 2, n, song.beat_steps):
            for pitch in tones:
                add(origin + song.swung(step) + _jitter(rng, song, 5), STEP, pitch, 85)


def comp_parts(rng: np.random.Generator, song: Song) -> list[Part]:
    """One to three comping instruments: a rhythm part, usually a sustained one, and in some
    songs a third, each entering in the sections its role suits."""
    rhythm = [c for c in COMPS if c[3] == "rhythm"]
    sustain = [c for c in COMPS if c[3] == "sustain"]
    chosen = [rhythm[int(rng.integers(len(rhythm)))]]
    if rng.random() < 0.8:
        chosen.append(sustain[int(rng.integers(len(sustain)))])
    if rng.random() < 0.35:
        chosen.append(COMPS[int(rng.integers(len(COMPS)))])
    parts = []
    for index, (name, bank, program, role, styles) in enumerate(chosen):
        part = Part("other", name, bank, program, 1 + index)
        style = str(rng.choice(styles))
        centre = rng.uniform(55, 68) if style != "power" else rng.uniform(52, 58)
        plays = {"intro": index == 0 or role == "sustain", "verse": index == 0 or rng.random() < 0.5,
                 "chorus": True, "bridge": role == "sustain" or rng.random() < 0.5, "outro": index == 0}
        for section in song.sections:
            if not plays[section.kind]:
                continue
            def add(tick, length, pitch, vel, energy=section.energy, part=part):
                part.add(max(0.0, tick), length, pitch, vel * energy ** 0.4 * rng.uniform(0.85, 1.05))
            for bar in range(section.bars):
                origin = (section.start + bar) * song.bar_ticks
                _comp_bar(rng, song, style, _voicing(song, section, bar, centre), origin, add)
        parts.append(part)
    return parts


def compose_melody(rng: np.random.Generator, song: Song) -> list[tuple[int, int, int, int, int]]:
    """The lead line: (tick, length, pitch, velocity, phrase id) of every note. Each section
    kind has one melody, repeated wherever that kind returns; a phrase per two bars, starting
    after a breath and leaving a rest before the next."""
    centre = rng.uniform(57, 67)
    melodies: dict[str, list] = {}
    out, phrase_id = [], 0
    for section in song.sections:
        if section.kind not in melodies:
            lift = 3 if section.kind == "chorus" else 0
            melodies[section.kind] = _section_melody(rng, song, section, centre + lift)
        for tick, length, pitch, velocity, phrase in melodies[section.kind]:
            out.append((section.start * song.bar_ticks + tick, length, pitch, velocity, phrase_id + phrase))
        phrase_id += section.bars
    return out


def _section_melody(rng, song: Song, section: Section, centre: float) -> list:
    """The melody of one section, ticks from its start (see ``compose_melody``)."""
    notes = song.scale_notes(max(48, int(centre) - 8), min(79, int(centre) + 8))
    eighths_per_slot = song.bar_steps  # two bars of eighths
    lengths = [1, 1, 2, 2, 3, 4] if section.kind != "chorus" else [1, 2, 2, 3, 4, 4]
    current = int(rng.integers(len(notes)))
    out = []
    for slot in range(section.bars // 2 or 1):
        if slot > 0 and rng.random() < 0.15:
            continue
        pos = slot * eighths_per_slot + int(rng.integers(1, 4))
        end = min(pos + int(rng.integers(6, eighths_per_slot - 3)), (slot + 1) * eighths_per_slot - 2)
        while pos < end:
            length = min(int(rng.choice(lengths)), end - pos)
            current = int(np.clip(current + rng.choice([-3, -2, -1, 0, 1, 2, 3],
                                                       p=[0.05, 0.15, 0.25, 0.1, 0.25, 0.15, 0.05]),
                                  0, len(notes) - 1))
            if pos % 2 == 0 or pos + length == end:  # chord tones on the beats and at phrase ends
                chord = (song.tonic + song.chord(section, pos * 2 // song.bar_steps)) % 12
                tones = np.flatnonzero(np.isin(notes % 12, chord))
                current = int(tones[np.argmin(np.abs(tones - current))])
            out.append((pos * 2 * STEP, length * 2 * STEP, int(notes[current]),
                        int(rng.uniform(80, 110)), slot))
            pos += length
    return out


def lead_part(rng: np.random.Generator, melody: list, sung: set[int]) -> Part:
    """The lead instrument, playing the melody's phrases that nobody sings."""
    name, bank, program, shift = LEADS[int(rng.integers(len(LEADS)))]
    part = Part("other", name, bank, program, 5)
    for tick, length, pitch, velocity, phrase in melody:
        if phrase not in sung:
            part.add(tick, length * 0.95, pitch + shift, velocity)
    return part


def choir_part(rng: np.random.Generator, song: Song) -> Part:
    """Backing voices (GM choir / voice patches) holding the chords of the choruses."""
    bank, program = CHOIRS[int(rng.integers(len(CHOIRS)))]
    part = Part("vocals", f"choir {program}", bank, program, 6)
    centre = rng.uniform(58, 66)
    for section in song.sections:
        if section.kind != "chorus":
            continue
        for bar in range(section.bars):
            origin = (section.start + bar) * song.bar_ticks
            for pitch in _voicing(song, section, bar, centre)[:3]:
                part.add(origin, song.bar_ticks * 0.97, pitch, 70)
    return part


# -- MIDI files and fluidsynth ----------------------------------------------------------------


def _vlq(value: int) -> bytes:
    """A MIDI variable-length quantity."""
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    return bytes(reversed(out))


def _untangle(notes: list[tuple[int, int, int, int]]) -> list[tuple[int, int, int, int]]:
    """Notes with each one cut short where the same pitch starts again, so no note-off of
    an earlier note ends a later one."""
    out, by_pitch = [], {}
    for note in sorted(notes):
        by_pitch.setdefault(note[2], []).append(note)
    for same in by_pitch.values():
        for note, following in zip(same, [*same[1:], None], strict=True):
            end = note[0] + note[1] if following is None else min(note[0] + note[1], following[0])
            if end > note[0]:
                out.append((note[0], end - note[0], note[2], note[3]))
    return out


def smf_bytes(part: Part, song: Song, end_tick: int) -> bytes:
    """A format-0 standard MIDI file of ``part``: tempo, meter, bank and program, then its
    notes (those that start before ``end_tick``, cut there). Sends for reverb and chorus
    are zero (the mix stage adds the room)."""
    numerator, denominator = METERS[song.meter][:2]
    ch = part.channel
    events = [
        (0, 0, b"\xff\x51\x03" + song.us_per_quarter.to_bytes(3, "big")),
        (0, 0, bytes([0xFF, 0x58, 4, numerator, int(math.log2(denominator)), 24, 8])),
        # bank select (MSB, LSB), volume, centre pan, no reverb or chorus send
        *((0, 0, bytes([0xB0 | ch, cc, value])) for cc, value in ((0, part.bank), (32, 0), (7, 100), (10, 64), (91, 0), (93, 0))),
        (0, 0, bytes([0xC0 | ch, part.program])),
    ]
    for tick, length, pitch, velocity in _untangle(part.notes):
        if tick < end_tick and 0 <= pitch < 128:
            events.append((tick, 2, bytes([0x90 | ch, pitch, velocity])))
            events.append((min(tick + length, end_tick), 1, bytes([0x80 | ch, pitch, 0])))
    events.sort(key=lambda e: (e[0], e[1]))
    body, now = bytearray(), 0
    for tick, _, data in events:
        body += _vlq(tick - now) + data
        now = tick
    body += _vlq(0) + b"\xff\x2f\x00"
    header = b"MThd" + struct.pack(">IHHH", 6, 0, 1, PPQ)
    return header + b"MTrk" + struct.pack(">I", len(body)) + bytes(body)


def render_part(part: Part, song: Song, n: int, sample_rate: int, soundfont: str, workdir: Path) -> np.ndarray:
    """The part as fluidsynth plays it: float32 (2, n), reverb and chorus off."""
    midi, wav = workdir / f"{part.stem}_{part.channel}.mid", workdir / f"{part.stem}_{part.channel}.wav"
    midi.write_bytes(smf_bytes(part, song, song.ticks(n / sample_rate)))
    command = ["fluidsynth", "-ni", "-q", "-R", "0", "-C", "0", "-T", "wav", "-O", "float",
               "-r", str(sample_rate), "-g", "0.4", "-F", str(wav), soundfont, str(midi)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not wav.is_file():
        raise RenderMusdbError(
            f"fluidsynth failed on {part.name} (exit {done.returncode}): {done.stderr.strip()[-300:]}"
        )
    audio = sf.read(wav, dtype="float32", always_2d=True)[0].T
    out = np.zeros((2, n), np.float32)
    out[:, : min(n, audio.shape[1])] = audio[:2, :n]
    return out


def window_part(part: Part, song: Song, n_ticks: int) -> Part:
    """The part's notes inside the track's window, shifted to start at tick 0; notes already
    sounding at the window's start (held chords) start with it."""
    start = song.window_bar * song.bar_ticks
    kept = Part(part.stem, part.name, part.bank, part.program, part.channel)
    for tick, length, pitch, velocity in part.notes:
        end = tick + length
        if tick >= start + n_ticks or end <= start or (tick < start and part.channel == DRUM_CHANNEL):
            continue
        begin = max(tick, start)
        kept.notes.append((begin - start, end - begin, pitch, velocity))
    return kept


# -- the voice --------------------------------------------------------------------------------


def _syllables(rng, song: Song, melody: list, sung: set[int], n_ticks: int) -> dict[str, np.ndarray]:
    """The sung notes inside the window as synth_musdb.sing's syllables (seconds)."""
    start = song.window_bar * song.bar_ticks
    rows = []
    consonant_prob = rng.uniform(0.2, 0.5)
    for tick, length, pitch, velocity, phrase in melody:
        if phrase in sung and start <= tick < start + n_ticks:
            onset, end = song.seconds(tick - start), song.seconds(tick - start + length)
            rows.append((float(onset), float(end), float(pitch), int(rng.integers(5)),
                         velocity / 110, bool(rng.random() < consonant_prob), phrase))
    keys = ("onset", "end", "midi", "vowel", "accent", "consonant", "phrase")
    if not rows:
        return {key: np.zeros(0) for key in keys}
    return {key: np.array(column) for key, column in zip(keys, zip(*rows, strict=True), strict=True)}


def _breaths(rng, syl: dict, voice: np.ndarray, sample_rate: int) -> np.ndarray:
    """Inhales (band-passed noise swelling and fading) before each phrase of the voice."""
    starts = syl["onset"][np.flatnonzero(np.diff(syl["phrase"], prepend=-1))]
    level = rng.uniform(0.02, 0.06) * np.abs(voice).max()
    sos = signal.butter(2, [rng.uniform(400, 900), rng.uniform(2500, 5000)], "bandpass",
                        fs=sample_rate, output="sos")
    out = voice.copy()
    for onset in starts:
        length = int(rng.uniform(0.15, 0.35) * sample_rate)
        begin = int((onset - rng.uniform(0.05, 0.12)) * sample_rate) - length
        if begin < 0:
            continue
        shape = np.sin(np.linspace(0, np.pi, length)) ** 2
        breath = signal.sosfilt(sos, rng.standard_normal(length)) * shape
        breath = level * breath / (np.abs(breath).max() + 1e-12)
        out[begin : begin + length] += breath[: len(out) - begin].astype(np.float32)
    return out


def sing_melody(rng, song: Song, melody: list, sung: set[int], n: int, sample_rate: int) -> np.ndarray:
    """The lead vocal: mono float32 (n,) (silence where nobody sings)."""
    syl = _syllables(rng, song, melody, sung, song.ticks(n / sample_rate))
    if len(syl["onset"]) == 0:
        return np.zeros(n, np.float32)
    centre = float(np.median(syl["midi"]))
    voice = synth_musdb.sing(rng, syl, centre, sample_rate, n)
    return _breaths(rng, syl, voice, sample_rate)


# -- mixing -----------------------------------------------------------------------------------


def _biquad(kind: str, freq: float, sample_rate: int, gain_db: float = 0.0, q: float = 0.707) -> np.ndarray:
    """One second-order section (Robert Bristow-Johnson's audio EQ cookbook): highpass,
    lowshelf, highshelf or peak."""
    a = 10 ** (gain_db / 40)
    w = 2 * np.pi * min(freq, 0.45 * sample_rate) / sample_rate
    cos, alpha = np.cos(w), np.sin(w) / (2 * q)
    if kind == "highpass":
        b = [(1 + cos) / 2, -(1 + cos), (1 + cos) / 2]
        den = [1 + alpha, -2 * cos, 1 - alpha]
    elif kind == "peak":
        b = [1 + alpha * a, -2 * cos, 1 - alpha * a]
        den = [1 + alpha / a, -2 * cos, 1 - alpha / a]
    else:
        sign = 1 if kind == "lowshelf" else -1
        root = 2 * np.sqrt(a) * alpha
        b = [a * ((a + 1) - sign * (a - 1) * cos + root), sign * 2 * a * ((a - 1) - sign * (a + 1) * cos),
             a * ((a + 1) - sign * (a - 1) * cos - root)]
        den = [(a + 1) + sign * (a - 1) * cos + root, -sign * 2 * ((a - 1) + sign * (a + 1) * cos),
               (a + 1) + sign * (a - 1) * cos - root]
    return np.concatenate([b, den]) / den[0]


def equalise(rng, audio: np.ndarray, low_cut: float, sample_rate: int) -> np.ndarray:
    """A high-pass at ``low_cut`` Hz, low and high shelves and one mid bell of a few dB."""
    sections = [
        _biquad("highpass", low_cut, sample_rate),
        _biquad("lowshelf", rng.uniform(100, 250), sample_rate, rng.uniform(-3, 3)),
        _biquad("peak", np.exp(rng.uniform(np.log(300), np.log(4000))), sample_rate, rng.uniform(-4, 4), 1.0),
        _biquad("highshelf", rng.uniform(4000, 9000), sample_rate, rng.uniform(-4, 3)),
    ]
    return signal.sosfilt(np.stack(sections), audio, axis=-1).astype(np.float32)


def compress(rng, audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Light feed-forward compression (ratio 1.5-3, threshold a few dB under the stem's loud
    parts) with a smoothed RMS detector; same gain on both channels."""
    power = np.square(audio, dtype=np.float64).mean(0)
    pole = np.exp(-1 / (rng.uniform(0.01, 0.05) * sample_rate))
    level = signal.lfilter([1 - pole], [1, -pole], power)
    level_db = 10 * np.log10(level + 1e-12)
    threshold = np.percentile(level_db[level > 1e-10], 90) - rng.uniform(2, 8) if (level > 1e-10).any() else 0.0
    ratio = rng.uniform(1.5, 3.0)
    gain_db = -np.maximum(level_db - threshold, 0) * (1 - 1 / ratio)
    return (audio * 10 ** (gain_db / 20)).astype(np.float32)


def room_response(rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    """A synthetic stereo impulse response (2, T) of one room: a pre-delay, a few early
    reflections and a decorrelated noise tail whose highs die faster (damping)."""
    rt60 = rng.uniform(0.3, 2.2)
    length = int(min(rt60, 2.5) * sample_rate)
    t = np.arange(length) / sample_rate
    predelay = int(rng.uniform(0.005, 0.04) * sample_rate)
    out = np.zeros((2, length + predelay))
    damping = signal.butter(1, rng.uniform(2000, 6000), "lowpass", fs=sample_rate, output="sos")
    for channel in range(2):
        noise = rng.standard_normal(length)
        dark = signal.sosfilt(damping, noise)
        decay = np.exp(-6.9 * t / rt60)
        tail = (dark * decay + (noise - dark) * decay ** 2.5) * np.clip(t / 0.01, 0, 1)
        out[channel, predelay:] = tail
        for _ in range(int(rng.integers(3, 7))):
            tap = predelay + int(rng.uniform(0.002, 0.03) * sample_rate)
            out[channel, tap] += rng.uniform(0.3, 1.0) * (1 if rng.random() < 0.5 else -1) * 8
    return (out / np.sqrt(np.square(out).sum(1, keepdims=True))).astype(np.float32)


def reverb(audio: np.ndarray, response: np.ndarray, send: float) -> np.ndarray:
    """``audio`` plus ``send`` times its convolution with the room (cut to the same length)."""
    if send <= 0:
        return audio
    wet = signal.oaconvolve(audio.mean(0, keepdims=True), response, axes=-1)[:, : audio.shape[1]]
    return (audio + send * wet).astype(np.float32)


def pan(audio: np.ndarray, position: float) -> np.ndarray:
    """Constant-power balance of a stereo signal; position -1 (left) .. 1 (right)."""
    angle = (position + 1) * np.pi / 4
    return (audio * (np.sqrt(2) * np.array([[np.cos(angle)], [np.sin(angle)]]))).astype(np.float32)


def _rms(audio: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))


def limiter_gain(mix: np.ndarray, ceiling: float, sample_rate: int) -> np.ndarray:
    """The gain curve (n,) of a look-ahead peak limiter on ``mix`` (2, n): never above 1,
    and ``|mix| * gain <= ceiling`` at every sample. The needed gain is held over the
    50 ms before and after each peak, then smoothed by a 3-ms moving average, which cannot
    raise it at the peak itself (every average there only covers held values)."""
    look = max(1, int(0.003 * sample_rate))
    hold = max(look, int(0.05 * sample_rate))
    peak = np.abs(mix).max(0)
    needed = np.minimum(1.0, ceiling / np.maximum(peak, 1e-12))
    held = ndimage.minimum_filter1d(needed, size=2 * hold + 1, mode="nearest")
    smooth = ndimage.uniform_filter1d(held, size=look, mode="nearest")
    return np.minimum(smooth, needed).astype(np.float32)


@dataclass(frozen=True)
class _Mix:
    """Per-stem settings of the mix: (level dB, low cut Hz, reverb send)."""

    drums: tuple = (-2.0, 30.0, 0.12)
    bass: tuple = (-3.0, 30.0, 0.0)
    other: tuple = (-4.0, 90.0, 0.25)
    vocals: tuple = (0.0, 90.0, 0.3)


def mix_stems(
    rng, parts: dict[str, list[tuple[np.ndarray, float]]], sample_rate: int
) -> dict[str, np.ndarray]:
    """Level (each instrument at its relative ``(audio, level)`` in its stem), pan, EQ,
    compress and reverberate each stem, then limit the mix: the limiter's gain curve
    multiplies every stem, so the stems still sum to the mix."""
    room = room_response(rng, sample_rate)
    settings = _Mix()
    stems = {}
    for name in SOURCES:
        level, low_cut, send = getattr(settings, name)
        stem = np.zeros_like(parts["drums"][0][0])
        for audio, relative in parts[name]:
            rms = _rms(audio)
            if rms == 0:
                continue
            position = rng.uniform(-0.6, 0.6) if name == "other" else rng.uniform(-0.08, 0.08)
            stem += pan(equalise(rng, audio / rms, low_cut, sample_rate), position) * relative
        if name == "bass":  # rolled off above the bass's range, as a bass bus often is
            sos = signal.butter(2, rng.uniform(2000, 5000), "lowpass", fs=sample_rate, output="sos")
            stem = signal.sosfilt(sos, stem, axis=-1).astype(np.float32)
        if _rms(stem) > 0:
            stem = compress(rng, stem, sample_rate)
            stem = reverb(stem, room, send * rng.uniform(0.5, 1.5))
            stem *= 10 ** ((level + rng.uniform(-3, 3)) / 20) / _rms(stem)
        stems[name] = stem
    mix = sum(stems.values())
    loudness = 10 ** (rng.uniform(-16, -11) / 20)
    scale = loudness / max(_rms(mix), 1e-12)
    gain = limiter_gain(mix * scale, 0.89, sample_rate) * scale
    stems = {name: (x * gain).astype(np.float32) for name, x in stems.items()}
    peak = max(np.abs(sum(stems.values())).max(), *(np.abs(x).max() for x in stems.values()))
    if peak > 0.95:  # stems that cancel in the mix can be louder than it
        stems = {name: (x * np.float32(0.95 / peak)).astype(np.float32) for name, x in stems.items()}
    return stems


# -- one track ----------------------------------------------------------------------------------


def _streams(seed: int) -> list[np.random.Generator]:
    """Independent random streams of a track: song, melody, drums, bass, comping, lead,
    choir, voice, mix (changing how one draws leaves the others as they were)."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(9)]


def compose_track(seed: int, duration: float) -> tuple[Song, list[tuple[Part, float]], list, set[int]]:
    """The song of a track seed, its instrument parts (whole song) with their levels in
    their stem, the melody and which of its phrases are sung (the others go to the lead)."""
    rngs = _streams(seed)
    song = compose_song(rngs[0], duration)
    melody = compose_melody(rngs[1], song)
    instrumental = {"intro", "outro"} | ({"bridge"} if rngs[1].random() < 0.6 else set())
    # A melody phrase's id is its section's first bar plus its two-bar slot.
    sung = {s.start + slot for s in song.sections if s.kind not in instrumental for slot in range(s.bars)}
    parts = [(drums_part(rngs[2], song), 1.0), (bass_part(rngs[3], song), 1.0)]
    parts += [(part, rngs[4].uniform(0.5, 1.0)) for part in comp_parts(rngs[4], song)]
    parts.append((lead_part(rngs[5], melody, sung), rngs[5].uniform(0.6, 1.0)))
    if rngs[6].random() < 0.5:
        parts.append((choir_part(rngs[6], song), rngs[6].uniform(0.15, 0.4)))
    return song, parts, melody, sung


def track_title(seed: int) -> str:
    """The descriptive part of a track's folder name (cheap: nothing is rendered)."""
    return compose_song(_streams(seed)[0], 1.0).name


def render_track(seed: int, params: dict) -> dict[str, np.ndarray]:
    """The four stems of one track, float32 (2, n), mixed and limited (see mix_stems)."""
    sample_rate, duration = params["sample_rate"], params["duration"]
    song, parts, melody, sung = compose_track(seed, duration)
    rngs = _streams(seed)
    n = int(round(duration * sample_rate))
    n_ticks = song.ticks(duration)
    rendered: dict[str, list[tuple[np.ndarray, float]]] = {name: [] for name in SOURCES}
    with tempfile.TemporaryDirectory(prefix="render_musdb_") as folder:
        for part, level in parts:
            windowed = window_part(part, song, n_ticks)
            if windowed.notes:
                audio = render_part(windowed, song, n, sample_rate, params["soundfont"], Path(folder))
                rendered[part.stem].append((audio, level))
    voice = sing_melody(rngs[7], song, melody, sung, n, sample_rate)
    rendered["vocals"].insert(0, (np.stack([voice, voice]), 1.0))
    for name in SOURCES:
        rendered[name].append((np.zeros((2, n), np.float32), 0.0))  # no stem without audio
    return mix_stems(rngs[8], rendered, sample_rate)


def check_tools(params: dict) -> None:
    """Raise one line naming the Debian package when fluidsynth or the SoundFont is missing."""
    soundfont = Path(params["soundfont"]).expanduser()
    if shutil.which("fluidsynth") is None:
        missing = "the fluidsynth program is not installed (Debian package fluidsynth)"
    elif not soundfont.is_file():
        missing = f"the SoundFont {soundfont} does not exist (Debian package fluid-soundfont-gm)"
    else:
        return
    raise RenderMusdbError(
        f"data=musdb_render cannot render: {missing}. Install fluidsynth and fluid-soundfont-gm "
        "(`make install` as root does), point data.synthetic.soundfont at a General MIDI .sf2, "
        "or use data=musdb_synth (no system packages)."
    )


RENDER = Generator(
    name="render",
    module=__name__,
    format_version=FORMAT_VERSION,
    defaults=DEFAULTS,
    title=track_title,
    render=render_track,
    float_wav=True,
    preflight=check_tools,
)
