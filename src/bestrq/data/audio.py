"""Audio loading for training: one clean mono float32 waveform at the model's rate, or a
clear reason why not. Bad audio raises :class:`BadAudio`, which callers skip and count."""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterable
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf

SAMPLE_RATE = 16_000
# the sample rates taken as audio: below, no speech band fits; above, no recorder writes them.
# A rate outside is most often a damaged header (a 1 Hz header makes a 1-second file last hours)
MIN_RATE, MAX_RATE = 4_000, 768_000
MISSING = "no such file"


class BadAudio(Exception):
    """Audio that cannot be used; ``path`` names the file, ``reason`` says why."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@lru_cache(maxsize=64)
def _lowpass(up: int, down: int) -> np.ndarray:
    # the filter scipy's resample_poly designs by default (Kaiser, beta 5, 10 zero crossings
    # per side), made once per rate pair instead of once per call
    from scipy.signal import firwin  # imported here: at the top it adds 0.6 s to every command

    max_rate = max(up, down)
    return firwin(2 * 10 * max_rate + 1, 1.0 / max_rate, window=("kaiser", 5.0))


def resample(x: np.ndarray, orig_rate: float, new_rate: float) -> np.ndarray:
    """Band-limited polyphase resampling along the last axis; the rate ratio is made rational."""
    if orig_rate == new_rate:
        return x
    ratio = Fraction(new_rate / orig_rate).limit_denominator(1000)
    up, down = ratio.numerator, ratio.denominator
    from scipy.signal import resample_poly  # (as firwin above)

    return resample_poly(x, up, down, axis=-1, window=_lowpass(up, down)).astype(np.float32, copy=False)


def audio_source(cut) -> str:
    """The file (or other source) a cut's audio comes from, for messages."""
    rec = getattr(cut, "recording", None)
    if rec is None or not rec.sources:
        return f"<cut {cut.id} without a recording>"
    if rec.sources[0].type == SHARD:
        return f"{rec.sources[0].source}:{rec.id}"
    return str(rec.sources[0].source)


def by_kind(skipped: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """(path, reason) pairs of skipped audio -> the paths of each kind of problem, in order of kind.
    A kind is the reason without its detail in brackets: ``unreadable (LibsndfileError: ...)`` is ``unreadable``."""
    kinds: dict[str, list[str]] = {}
    for path, reason in skipped:
        kinds.setdefault(reason.split(" (")[0], []).append(path)
    return dict(sorted(kinds.items()))


def rate_problem(rate: float) -> str | None:
    """Why a file of this sample rate is not used, or None if it is."""
    if MIN_RATE <= rate <= MAX_RATE:
        return None
    return f"sample rate outside {MIN_RATE}-{MAX_RATE} Hz ({rate:.10g} Hz: a damaged header?)"


def length_problem(path: str) -> str | None:
    """Why a file whose header gives more samples than it holds is not used (a damaged or cut-short FLAC
    claims hours it does not have), or None: its last sample must be readable, one seek away. A file
    soundfile does not open is not checked here."""
    try:
        f = sf.SoundFile(path)
    except Exception:  # noqa: BLE001 - another decoder's format, or unreadable: said elsewhere
        return None
    with f:
        try:
            f.seek(f.frames - 1)
            last = len(f.read(1))
        except Exception:  # noqa: BLE001 - any failure to reach the last sample means the same thing
            last = 0
        if last == 1:
            return None
        return f"truncated or damaged (its header gives {f.frames} samples; the last cannot be read)"


def _why_unreadable(rec, path: str) -> str | None:
    """A plainer reason than the decoder's when the file is not there, or not the length its manifest gives."""
    if len(rec.sources) != 1 or rec.sources[0].type != "file":
        return None
    if not Path(path).exists():  # not the decoder's long report for a file that is not there
        return MISSING
    try:
        frames = sf.info(path).frames
    except Exception:  # noqa: BLE001 - unreadable by soundfile too: the decoder's own message says more
        return None
    if frames == rec.num_samples:
        return None
    if frames == 0:
        return "empty audio (0 samples)"
    return (f"not the length its manifest gives ({frames} samples, the manifest {rec.num_samples}): "
            "the file changed after the manifest was made")


def decode(cut) -> tuple[np.ndarray, int]:
    """The cut's audio as a (S,) float32 array at its recording's rate, every channel averaged
    (down-mix), and that rate. Raises BadAudio for unreadable files, sample rates outside
    MIN_RATE..MAX_RATE, empty audio and non-finite samples."""
    path = audio_source(cut)
    rec = cut.recording
    if why := rate_problem(rec.sampling_rate):
        raise BadAudio(path, why)
    if rec.sources[0].type == SHARD:  # a cut of a sharded split: its own member of a tar
        audio = shard_audio(rec.sources[0].source, cut)
    else:
        try:
            audio = rec.load_audio(offset=cut.start, duration=cut.duration)  # (C, S), all channels
        except Exception as e:  # any decoder failure means the same thing here: unusable audio
            raise BadAudio(path, _why_unreadable(rec, path) or f"unreadable ({type(e).__name__}: {e})") from e
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 2:
        audio = audio.mean(axis=0)
    if audio.size == 0:
        raise BadAudio(path, "empty audio (0 samples)")
    if not np.isfinite(audio).all():
        raise BadAudio(path, "non-finite samples (NaN or inf)")
    return audio, rec.sampling_rate


def load_mono(cut, sample_rate: int = SAMPLE_RATE, min_samples: int = 1) -> np.ndarray:
    """The cut's audio as a (S,) float32 array at ``sample_rate``: every channel of the
    recording is averaged (down-mix) and other rates are resampled.

    Raises BadAudio as :func:`decode` does, and for clips shorter than ``min_samples`` after resampling.
    """
    audio, rate = decode(cut)
    audio = resample(audio, rate, sample_rate)
    if audio.shape[-1] < min_samples:
        raise BadAudio(audio_source(cut), f"too short ({audio.shape[-1]} samples < {min_samples})")
    return audio


# --- sharded splits: each cut's audio is a member of a tar (lhotse's Shar layout) --------------

SHARD = "shar"  # the audio source type of a cut whose audio lives in a shard


@lru_cache(maxsize=32)
def _members(tar: str, size: int, mtime_ns: int) -> dict[str, tuple[int, int]]:
    """A tar's audio members: key (the name without its extension) -> (offset, size) of the data.
    Only the headers are read, one seek apart; a process keeps the last 32 shards' tables."""
    members = {}
    with tarfile.open(tar, "r:") as f:
        for m in f:
            key, ext = m.name.rsplit(".", 1) if "." in m.name else (m.name, "")
            if m.isfile() and ext not in ("json", "nodata", "nometa"):
                members[key] = (m.offset_data, m.size)
    return members


def shard_audio(tar: str, cut) -> np.ndarray:
    """The (C, S) audio of a sharded cut, from its member of ``tar``, named by its recording's id (the
    id of the cut as it was written, which a copy of the cut under another id keeps). The member is
    the whole cut as it was written; a cropped cut reads a part of it, from ``cut.start``."""
    where = audio_source(cut)
    if not tar:
        raise BadAudio(f"<cut {cut.id}>", "a shard's cut read without its shard (open the split with "
                       "bestrq.data.manifest.open_split or load_split)")
    try:
        stat = os.stat(tar)
        offset, size = _members(tar, stat.st_size, stat.st_mtime_ns)[cut.recording.id]
    except FileNotFoundError:
        raise BadAudio(tar, MISSING) from None
    except KeyError:
        raise BadAudio(where, "not in its shard (the shard's tar has no audio of this cut)") from None
    except (OSError, tarfile.TarError) as e:
        raise BadAudio(tar, f"unreadable shard ({type(e).__name__}: {e})") from None
    try:
        with open(tar, "rb") as f:
            f.seek(offset)
            data = f.read(size)
        with sf.SoundFile(io.BytesIO(data)) as snd:
            start = round(cut.start * snd.samplerate)
            snd.seek(min(start, snd.frames))
            frames = round(cut.duration * snd.samplerate) if cut.duration is not None else -1
            return snd.read(frames, dtype="float32", always_2d=True).T
    except Exception as e:  # any decoder failure means the same thing here: unusable audio
        raise BadAudio(where, f"unreadable ({type(e).__name__}: {e})") from e
