"""Frame-level melody metrics (torchmetrics, so they reduce correctly under DDP) and the
resampling of an estimate onto the reference's time base.

Definitions follow ``mir_eval.melody`` (binary reference voicing, 50-cent tolerance by
default). Over the frames where the reference is voiced, raw pitch accuracy (RPA) counts
estimates within ``cent_tolerance`` of the reference and raw chroma accuracy (RCA) does the
same after folding octave errors away; neither looks at the estimated voicing. Voicing
recall is the share of reference-voiced frames the estimate calls voiced, voicing false
alarm the share of reference-unvoiced frames it calls voiced, and overall accuracy the
share of all frames that are right: voiced with a correct pitch, or unvoiced on both sides.

Every metric keeps two integer counts summed across batches and DDP ranks, so the result
over a dataset is the frame-weighted one (as if all clips were one long clip), whatever the
batching and the number of processes. The counts of different metrics share names: put
them in a ``MetricCollection(..., compute_groups=False)`` (:func:`melody_metrics` does),
or torchmetrics merges metrics whose counts happen to agree after the first batch and then
updates only one of them.

Estimates are lists of pitch in cents, a missing estimate (mir_eval's 0 Hz) being NaN, with
a voicing decision per frame. In audiolab a frame is voiced when its periodicity (the
activation at the decoded bin, :mod:`audiolab.pitch.postprocess`) is at least a threshold
(``model.voicing_threshold``).
"""

from __future__ import annotations

import torch
from torchmetrics import Metric, MetricCollection

from audiolab.audio.pitch_grid import hz_to_cents

# numpy.allclose's defaults, which mir_eval uses to decide that two time bases are the same
_RTOL, _ATOL = 1e-5, 1e-8


def resample_estimate(
    est_times: torch.Tensor, est_cents: torch.Tensor, est_voiced: torch.Tensor, ref_times: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """An estimate resampled onto the reference's time base, as
    ``mir_eval.melody.to_cent_voicing`` (and its ``resample_melody_series``, ``kind="linear"``)
    does for binary voicing: pitch is interpolated linearly in cents, with a missing value
    held from the last present one so that it does not drag its neighbours towards 0 and
    then masked again by a zero-order hold (a missing frame stays missing until the next
    estimate); voicing is held from the latest estimate at or before each reference time.
    An estimate that starts after 0 s gets its first value at 0 s; reference times after
    the estimate's last one hold its last value, except the very last reference time, which
    is missing and unvoiced (mir_eval appends such a frame there). Identical time bases
    (``numpy.allclose``) are used as they are. Times are rounded to 1e-10 s first.

    Unlike ``to_cent_voicing`` the reference is never changed (it adds a frame at 0 s to a
    reference that starts later); pass reference times from 0 s to match it exactly.

    Args:
        est_times: ``(..., N)`` increasing frame times of the estimate (s); pad rows of a
            batch with ``inf``.
        est_cents: ``(..., N)`` pitch in cents, NaN where there is no estimate.
        est_voiced: ``(..., N)`` voicing decisions (bool).
        ref_times: ``(..., M)`` reference times (s), at least 0; pad with NaN.

    Returns:
        ``(cents, voiced)`` of shape ``(..., M)``: float64 cents (NaN: missing or padding)
        and bool voicing (False on padding).
    """
    t = est_times.double().round(decimals=10)
    x = ref_times.double().round(decimals=10)
    # mir_eval marks a missing pitch by 0 cents; the arithmetic below relies on it
    raw = torch.nan_to_num(est_cents.double(), nan=0.0)
    voiced = est_voiced.bool() & (raw != 0)
    n_est = torch.isfinite(t).sum(dim=-1, keepdim=True)
    if int(n_est.min()) < 1:
        raise ValueError("every estimate needs at least one frame time")
    if bool((x < 0).any()):
        raise ValueError("reference times must be at least 0 s (mir_eval cannot interpolate before the estimate)")

    # A first knot at 0 s carrying the first estimate (mir_eval inserts it when the estimate
    # starts later); one that starts at or before 0 s gets a dummy copy 1 s earlier instead,
    # which keeps the shapes of a batch equal and changes no interpolated value.
    starts_late = t[..., :1] > 0
    t = torch.cat([torch.where(starts_late, 0.0, t[..., :1] - 1.0), t], dim=-1)
    raw = torch.cat([raw[..., :1], raw], dim=-1)
    voiced = torch.cat([voiced[..., :1], voiced], dim=-1)
    last = n_est  # index of the last real knot (one knot was prepended)

    # missing values held from the last present one: index of the latest nonzero knot
    index = torch.arange(raw.shape[-1], device=raw.device).expand_as(raw)
    held_at = torch.where(raw != 0, index, torch.zeros_like(index)).cummax(dim=-1).values
    held = raw.gather(-1, held_at)

    t_search = t.contiguous()
    x_query = torch.nan_to_num(x, nan=0.0).contiguous()
    # linear interpolation exactly as scipy's interp1d computes it
    hi = torch.searchsorted(t_search, x_query, side="left").clamp(min=1)
    hi = torch.minimum(hi, last)
    lo = hi - 1
    t_lo, t_hi = t.gather(-1, lo), t.gather(-1, hi)
    y_lo, y_hi = held.gather(-1, lo), held.gather(-1, hi)
    cents = (y_hi - y_lo) / (t_hi - t_lo) * (x_query - t_lo) + y_lo
    # zero-order hold: the latest knot at or before each time
    prev = torch.minimum((torch.searchsorted(t_search, x_query, side="right") - 1).clamp(min=0), last)
    present = raw.gather(-1, prev) != 0
    out_voiced = voiced.gather(-1, prev)

    # after the estimate's end: its last values, but missing and unvoiced at the reference's
    # last time, where mir_eval appends a (0 Hz, unvoiced) knot
    t_end = t.gather(-1, last)
    x_end = torch.where(torch.isnan(x), -torch.inf, x).amax(dim=-1, keepdim=True)
    beyond = x_query > t_end
    at_end = beyond & (x_query == x_end)
    cents = torch.where(beyond, held.gather(-1, last), cents)
    present = torch.where(beyond, (raw.gather(-1, last) != 0) & ~at_end, present)
    out_voiced = torch.where(beyond, voiced.gather(-1, last) & ~at_end, out_voiced)

    # identical time bases are not resampled (mir_eval compares them before rounding, with
    # the first knot at 0 s included when it was inserted)
    offset = starts_late.long()  # where mir_eval's estimate starts in our knots: 1 - offset
    n_ref = torch.isfinite(x).sum(dim=-1, keepdim=True)
    m = torch.arange(x.shape[-1], device=x.device).expand_as(x)
    inside = m < n_ref
    knot = torch.minimum(m + 1 - offset, torch.full_like(m, t.shape[-1] - 1))
    t_unrounded = torch.cat([t[..., :1], est_times.double()], dim=-1).gather(-1, knot)
    x_unrounded = torch.nan_to_num(ref_times.double(), nan=0.0)
    close = (t_unrounded - x_unrounded).abs() <= _ATOL + _RTOL * x_unrounded.abs()
    same = (n_est + offset == n_ref) & (close | ~inside).all(dim=-1, keepdim=True)
    cents = torch.where(same, raw.gather(-1, knot), cents)
    present = torch.where(same, raw.gather(-1, knot) != 0, present)
    out_voiced = torch.where(same, voiced.gather(-1, knot), out_voiced)

    present &= inside
    return cents.masked_fill(~present, torch.nan), out_voiced & inside


class _FrameCounts(Metric):
    """A ratio of frame counts, summed over batches and DDP ranks."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    # value when no frame was counted, as mir_eval returns it
    empty_value = 0.0
    needs_voicing = False

    def __init__(self, cent_tolerance: float = 50.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.cent_tolerance = cent_tolerance
        self.add_state("hits", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _counts(
        self, correct: torch.Tensor, est_voiced: torch.Tensor | None, ref_voiced: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _error(self, est_cents: torch.Tensor, ref_cents: torch.Tensor) -> torch.Tensor:
        return (est_cents - ref_cents).abs()

    def update(
        self,
        est_cents: torch.Tensor,
        ref_hz: torch.Tensor,
        ref_voiced: torch.Tensor,
        est_voiced: torch.Tensor | None = None,
        valid: torch.Tensor | None = None,
    ) -> None:
        """All on the same time base, same shape:

        Args:
            est_cents: estimated pitch in cents (relative to 10 Hz); NaN = no estimate.
            ref_hz, ref_voiced: the reference; a frame is voiced where ``ref_voiced`` and
                ``ref_hz > 0``.
            est_voiced: the estimate's voicing decisions (needed by the voicing metrics
                and overall accuracy).
            valid: frames to count (False on the padding of a batch); default all.
        """
        if est_voiced is None and self.needs_voicing:
            raise ValueError(
                f"{type(self).__name__} needs the estimated voicing: pass est_voiced (e.g. periodicity >= threshold)"
            )
        ref_on = ref_voiced.bool() & (ref_hz > 0)
        ref_cents = hz_to_cents(ref_hz.double().clamp_min(1e-12))
        # NaN (a missing estimate) compares False: never correct, as mir_eval's 0 Hz
        correct = ref_on & (self._error(est_cents.double(), ref_cents) < self.cent_tolerance)
        hits, counted = self._counts(correct, None if est_voiced is None else est_voiced.bool(), ref_on)
        if valid is not None:
            hits, counted = hits & valid.bool(), counted & valid.bool()
        self.hits += hits.sum()
        self.total += counted.sum()

    def compute(self) -> torch.Tensor:
        if self.total == 0:
            return torch.tensor(self.empty_value, device=self.total.device)
        return self.hits.double().div(self.total).float()


class RawPitchAccuracy(_FrameCounts):
    """Share of reference-voiced frames whose pitch is within the tolerance (voicing of the
    estimate ignored)."""

    def _counts(self, correct, est_voiced, ref_voiced):
        return correct, ref_voiced


class RawChromaAccuracy(RawPitchAccuracy):
    """As :class:`RawPitchAccuracy`, with errors folded to the nearest octave."""

    def _error(self, est_cents, ref_cents):
        diff = (est_cents - ref_cents).abs()
        return (diff - 1200.0 * torch.floor(diff / 1200.0 + 0.5)).abs()


class VoicingRecall(_FrameCounts):
    """Share of reference-voiced frames the estimate calls voiced (1 with no such frame)."""

    empty_value = 1.0
    needs_voicing = True

    def _counts(self, correct, est_voiced, ref_voiced):
        return est_voiced & ref_voiced, ref_voiced


class VoicingFalseAlarm(_FrameCounts):
    """Share of reference-unvoiced frames the estimate calls voiced (lower is better)."""

    higher_is_better = False
    needs_voicing = True

    def _counts(self, correct, est_voiced, ref_voiced):
        return est_voiced & ~ref_voiced, ~ref_voiced


class OverallAccuracy(_FrameCounts):
    """Share of all frames estimated right: voiced with a correct pitch where the reference
    is voiced, unvoiced where it is not."""

    needs_voicing = True

    def _counts(self, correct, est_voiced, ref_voiced):
        return (correct & est_voiced) | (~ref_voiced & ~est_voiced), torch.ones_like(ref_voiced)


MELODY_METRICS = {
    "rpa": RawPitchAccuracy,
    "rca": RawChromaAccuracy,
    "voicing_recall": VoicingRecall,
    "voicing_false_alarm": VoicingFalseAlarm,
    "overall_accuracy": OverallAccuracy,
}


def melody_metrics(cent_tolerance: float = 50.0, prefix: str = "", extra: dict[str, Metric] | None = None) -> MetricCollection:
    """RPA, RCA, voicing recall, voicing false alarm and overall accuracy (plus ``extra``),
    named ``<prefix>rpa`` ... ``<prefix>overall_accuracy``; updated with the arguments of
    :meth:`_FrameCounts.update`. Compute groups are off: these metrics' counts share names
    and would otherwise be merged after a first batch where they agree."""
    metrics = {name: cls(cent_tolerance) for name, cls in MELODY_METRICS.items()}
    return MetricCollection({**metrics, **(extra or {})}, prefix=prefix, compute_groups=False)
