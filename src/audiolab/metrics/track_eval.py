"""Whole-track BSSEval v4 of a MUSDB separation, written in museval's per-track JSON format.

This is what the museval callback (:mod:`audiolab.callbacks.museval`) runs for every
track, in worker processes: score a track's estimates against its references with
museval (``museval.evaluate``, the function ``eval_mus_track`` calls) or with audiolab's
:func:`~audiolab.metrics.bss_eval.bss_eval_v4` (or both, recording how far they differ),
add the quick whole-track uSDR and chunk-median cSDR, and write one JSON per track that
museval's own loaders (``museval.json2df``, ``EvalStore.add_eval_dir``) read. The
aggregate is museval's: median over frames, then median over tracks (``EvalStore``).

Which estimates are scored together changes the numbers: museval scores vocals against
accompaniment when both are given, and the four stems against each other otherwise. The
two :data:`MODES` are those two sets; :func:`plan_estimates` says how a model's targets
supply a mode's estimates.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from audiolab.metrics.bss_eval import bss_eval_v4
from audiolab.metrics.separation import csdr, usdr
from audiolab.utils.atomic import atomic_write
from audiolab.utils.errors import AudiolabError

# The target order is musdb's (vocals first), the order eval_mus_track scores them in.
MODES = {
    "vocals_accompaniment": ("vocals", "accompaniment"),
    "four_stems": ("vocals", "drums", "bass", "other"),
}
BACKENDS = ("fast", "museval", "both")
METRICS = ("SDR", "SIR", "ISR", "SAR")
# museval v4's distortion filters: 512 taps, estimated once per track.
FILTER_LEN = 512


class MusevalError(AudiolabError):
    """The museval evaluation is misconfigured, or the model cannot supply its estimates."""


def resolve_mode(mode: str, model_targets: Sequence[str]) -> str:
    """``mode``, with ``auto`` meaning ``four_stems`` when the model separates the four
    stems and ``vocals_accompaniment`` otherwise."""
    if mode == "auto":
        four = set(MODES["four_stems"]) <= set(model_targets)
        return "four_stems" if four else "vocals_accompaniment"
    if mode not in MODES:
        raise MusevalError(
            f"callbacks.museval.mode must be auto, {' or '.join(MODES)}; got {mode!r}"
        )
    return mode


# -- which estimates a mode scores ---------------------------------------------------
def _covered_by(part: Mapping[str, float], whole: Mapping[str, float]) -> bool:
    return all(whole.get(source) == gain for source, gain in part.items())


def _sum(definitions: Sequence[Mapping[str, float]]) -> dict[str, float]:
    total: dict[str, float] = {}
    for definition in definitions:
        for source, gain in definition.items():
            total[source] = total.get(source, 0.0) + gain
    return total


def _recipe(row: Sequence[float], mixture_gain: float, model_targets: Sequence[str]) -> str:
    terms = ["mixture"] if mixture_gain else []
    for weight, name in zip(row, model_targets, strict=True):
        if weight:
            sign = "-" if weight < 0 else "+"
            terms.append(f"{sign} {name}" if terms else name)
    return " ".join(terms)


@dataclass(frozen=True)
class EstimatePlan:
    """The estimates of a mode's ``targets`` from a model's: ``weights @ model estimates +
    mixture_gain * mixture``, one row per mode target; ``recipes`` says in words how each
    one is formed (``vocals``, ``drums + bass + other``, ``mixture - vocals``)."""

    targets: tuple[str, ...]
    weights: torch.Tensor  # (S_mode, S_model)
    mixture_gain: torch.Tensor  # (S_mode,)
    recipes: dict[str, str]

    def __call__(self, estimates: torch.Tensor, mixture: torch.Tensor) -> torch.Tensor:
        """``(S_model, C, T)`` model estimates and the ``(C, T)`` mixture to ``(S_mode, C, T)``."""
        weights = self.weights.to(estimates)
        gains = self.mixture_gain.to(estimates)[:, None, None]
        return torch.einsum("ms,sct->mct", weights, estimates) + gains * mixture.to(estimates)


def plan_estimates(
    mode: str, model_targets: Sequence[str], definitions: Mapping[str, Mapping[str, float]]
) -> EstimatePlan:
    """How the model's targets supply the estimates ``mode`` scores: a target the model
    separates is taken as is; one that model targets add up to by musdb's ``definitions``
    (``{target: {source: gain}}``) is their sum (accompaniment = drums + bass + other);
    when exactly one is still missing it is the mixture minus the others (a mode's targets
    add up to the mixture), as the separation CLI writes accompaniment for a vocals model.
    Anything else is a :class:`MusevalError` that says what to change."""
    model_targets = list(model_targets)
    wanted = MODES[mode]
    n = len(model_targets)
    rows: dict[str, list[float]] = {}
    for target in wanted:
        if target in model_targets:
            rows[target] = [float(name == target) for name in model_targets]
            continue
        parts = [t for t in model_targets if _covered_by(definitions[t], definitions[target])]
        if parts and _sum([definitions[t] for t in parts]) == dict(definitions[target]):
            rows[target] = [float(name in parts) for name in model_targets]
    missing = [t for t in wanted if t not in rows]
    gains = dict.fromkeys(wanted, 0.0)
    if len(missing) == 1:
        rest = missing[0]
        rows[rest] = [-sum(rows[t][i] for t in wanted if t != rest) for i in range(n)]
        gains[rest] = 1.0
    elif missing:
        if mode == "four_stems":
            fix = (
                "score vocals and accompaniment instead (callbacks.museval.mode="
                "vocals_accompaniment), or train on data.targets=[vocals, drums, bass, other]"
            )
        else:
            fix = "train with vocals or accompaniment among data.targets"
        raise MusevalError(
            f"callbacks.museval.mode={mode} scores {list(wanted)}, but the model separates "
            f"{model_targets}: {missing} cannot be formed from them (a target is taken from "
            "the model, summed from model targets that make it up, as accompaniment = drums "
            "+ bass + other, or, for one missing target only, taken as the mixture minus the "
            f"others). Fix: {fix}."
        )
    return EstimatePlan(
        targets=tuple(wanted),
        weights=torch.tensor([rows[t] for t in wanted], dtype=torch.float64),
        mixture_gain=torch.tensor([gains[t] for t in wanted], dtype=torch.float64),
        recipes={t: _recipe(rows[t], gains[t], model_targets) for t in wanted},
    )


# -- one track -------------------------------------------------------------------------
@dataclass(frozen=True)
class ScoreSettings:
    """Everything that changes a track's scores; recorded in every JSON, and a JSON is only
    reused when its settings are these."""

    mode: str
    targets: tuple[str, ...]
    recipes: dict[str, str]
    backend: str
    sample_rate: int
    window_seconds: float = 1.0
    hop_seconds: float = 1.0
    filter_len: int = FILTER_LEN

    @property
    def window(self) -> int:
        """Frame length in samples, rounded down as ``eval_mus_track`` does."""
        return int(self.window_seconds * self.sample_rate)

    @property
    def hop(self) -> int:
        return int(self.hop_seconds * self.sample_rate)

    def record(self) -> dict:
        """The settings as JSON values."""
        out = asdict(self)
        out["targets"] = list(self.targets)
        return out


@dataclass
class TrackJob:
    """One track to score: ``references`` and ``estimates`` ``(S, T, C)`` (museval's layout)
    in ``settings.targets`` order; ``identity`` names the files it came from (length and
    rate), so that a stored JSON of another version of the track is not reused."""

    name: str
    references: np.ndarray
    estimates: np.ndarray
    settings: ScoreSettings
    path: str
    identity: dict = field(default_factory=dict)


def _museval_scores(refs: np.ndarray, ests: np.ndarray, s: ScoreSettings) -> dict[str, np.ndarray]:
    import museval

    sdr, isr, sir, sar = museval.evaluate(refs, ests, win=s.window, hop=s.hop)
    return {"SDR": sdr, "SIR": sir, "ISR": isr, "SAR": sar}


def _fast_scores(refs: np.ndarray, ests: np.ndarray, s: ScoreSettings) -> dict[str, np.ndarray]:
    out = bss_eval_v4(refs, ests, s.window, s.hop, s.filter_len)
    return {m: out[m.lower()].cpu().numpy() for m in METRICS}


def score_differences(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> dict:
    """Per metric: the largest ``|a - b|`` over frames where both are finite, and how many
    frames are NaN or infinite in one and not equally so in the other."""
    largest, mismatched = {}, {}
    for m in METRICS:
        x, y = np.asarray(a[m], dtype=np.float64), np.asarray(b[m], dtype=np.float64)
        finite = np.isfinite(x) & np.isfinite(y)
        same = (x == y) | (np.isnan(x) & np.isnan(y))
        largest[m] = float(np.abs(x - y)[finite].max()) if finite.any() else 0.0
        mismatched[m] = int((~same & ~finite).sum())
    return {"max_abs_diff": largest, "mismatched_non_finite": mismatched}


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through :func:`~audiolab.utils.atomic.atomic_write`: a
    reader (or a resumed run) sees the old file or the whole new one, never half of it."""
    with atomic_write(path) as (tmp,):
        tmp.write_text(text)


def evaluate_track(job: TrackJob) -> dict:
    """Score one track, write its JSON to ``job.path`` (atomically) and return the
    ``audiolab`` block written into it. Runs in a worker process."""
    import museval

    start = time.perf_counter()
    s = job.settings
    refs = np.asarray(job.references, dtype=np.float64)
    ests = np.asarray(job.estimates, dtype=np.float64)
    if refs.shape != ests.shape or refs.shape[0] != len(s.targets):
        raise ValueError(
            f"track {job.name!r}: references {refs.shape} and estimates {ests.shape} must both "
            f"be ({len(s.targets)}, samples, channels) for {list(s.targets)}"
        )
    scores = _museval_scores(refs, ests, s) if s.backend in ("museval", "both") else None
    fast = _fast_scores(refs, ests, s) if s.backend in ("fast", "both") else None
    # (S, T, C) -> (S, C, T), audiolab's layout for the quick numbers
    ref_t = torch.from_numpy(refs).transpose(1, 2)
    est_t = torch.from_numpy(ests).transpose(1, 2)
    extra = {
        "settings": s.record(),
        "track": dict(job.identity),
        "usdr": dict(zip(s.targets, usdr(est_t, ref_t).tolist(), strict=True)),
        "csdr": dict(zip(s.targets, csdr(est_t, ref_t, s.window).tolist(), strict=True)),
        "backends": score_differences(scores, fast) if s.backend == "both" else None,
    }
    primary = scores if scores is not None else fast
    store = museval.TrackStore(track_name=job.name, win=s.window_seconds, hop=s.hop_seconds)
    for i, target in enumerate(s.targets):
        store.add_target(target, {m: primary[m][i].tolist() for m in METRICS})
    extra["seconds"] = round(time.perf_counter() - start, 3)
    # museval's loaders read "targets" only, so audiolab's additions ride along in the file
    store.scores["audiolab"] = extra
    store.validate()
    write_text_atomic(job.path, store.json)
    return extra


# -- reading back and aggregating ---------------------------------------------------------
def read_scores(path: str | Path) -> dict | None:
    """A per-track JSON, or None when it is missing or unreadable."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def is_complete(doc: dict | None, settings: ScoreSettings, identity: Mapping) -> bool:
    """True when ``doc`` holds every target's frames, scored with ``settings`` from the
    track described by ``identity``."""
    try:
        extra = doc["audiolab"]
        if extra["settings"] != settings.record() or extra["track"] != dict(identity):
            return False
        targets = doc["targets"]
        if [t["name"] for t in targets] != list(settings.targets):
            return False
        counts = {len(t["frames"]) for t in targets}
        frames = (f["metrics"] for t in targets for f in t["frames"])
        return len(counts) == 1 and 0 not in counts and all(set(METRICS) <= set(m) for m in frames)
    except (KeyError, TypeError):
        return False


@dataclass
class Aggregate:
    """museval's aggregate of several tracks: ``scores[target][metric]`` (median over
    frames, then over tracks), the per-track ``rows`` (frame medians, uSDR, cSDR), uSDR
    (mean over tracks, as validation reports it) and cSDR (median over tracks) per target,
    and, for the ``both`` backend, the largest differences over all tracks."""

    scores: dict[str, dict[str, float]]
    rows: list[dict]
    usdr: dict[str, float]
    csdr: dict[str, float]
    backends: dict | None


def aggregate(docs: Mapping[str, dict], targets: Sequence[str]) -> Aggregate:
    """Aggregate per-track JSON documents (``{track name: doc}``) with ``museval.EvalStore``."""
    import museval

    store = museval.EvalStore(frames_agg="median", tracks_agg="median")
    for name, doc in docs.items():
        store.add_track(museval.json2df(doc, name))
    overall = store.agg_frames_tracks_scores()
    per_track = store.agg_frames_scores()
    scores = {t: {m: float(overall[(t, m)]) for m in METRICS} for t in targets}
    rows = []
    for name, doc in docs.items():
        extra = doc["audiolab"]
        for t in targets:
            row = {"track": name, "target": t}
            row.update({m: float(per_track[(name, t, m)]) for m in METRICS})
            row.update(uSDR=float(extra["usdr"][t]), cSDR=float(extra["csdr"][t]))
            rows.append(row)
    backends = None
    checks = [doc["audiolab"].get("backends") for doc in docs.values()]
    if checks and all(checks):
        backends = {
            key: {m: max(c[key][m] for c in checks) for m in METRICS}
            for key in ("max_abs_diff", "mismatched_non_finite")
        }
    return Aggregate(
        scores=scores,
        rows=rows,
        usdr={t: float(np.mean([r["uSDR"] for r in rows if r["target"] == t])) for t in targets},
        csdr={t: float(np.median([r["cSDR"] for r in rows if r["target"] == t])) for t in targets},
        backends=backends,
    )
