"""Pseudo-speakers and emotions for the synthetic corpus, and the renderer.

A speaker is a fixed recipe: an English accent and a voice variant of eSpeak NG, a base
pitch and pitch range, a speaking rate, a loudness and a vocal-tract-length warp (the
waveform is resampled as if it had been recorded at another rate, which moves formants
and pitch together). Each utterance adds small jitter. An emotion is a consistent change
of prosody on top of the speaker: pitch level and range, rate, loudness, pauses and, for
anger, a tense (saturated) voice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data.audio import SAMPLE_RATE, resample
from .espeak import Prosody, engine

ACCENTS = ("en-us", "en", "en-029", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-gbcwmd",
           "en-gb-x-rp", "en-us-nyc")

# eSpeak NG's voice variants (espeak-ng-data/voices/!v), without the robotic, whispered
# and novelty ones
VARIANTS = tuple("""
m1 m2 m3 m4 m5 m6 m7 m8 f1 f2 f3 f4 f5 klatt klatt2 klatt3 Alex Alicia Andrea Andy Annie
AnxiousAndy Denis Diogo Gene Gene2 Henrique Hugo Jacky Lee Marco Mario Michael Mike Nguyen
Reed RicishayMax Storm adam anika announcer antonio aunty belinda benjamin boris caleb
david ed edward edward2 gustave ian iven iven2 iven3 iven4 john linda marcelo max michel
miguel mike2 norbert pablo paul pedro quincy rob robert sandro shelby steph steph2 steph3
travis victor zac grandma grandpa
""".split())

EMOTIONS = ("neutral", "happy", "sad", "angry")


@dataclass(frozen=True)
class Speaker:
    id: str
    accent: str
    variant: str
    pitch: float  # eSpeak base pitch, 0-100
    pitch_range: float  # eSpeak pitch range, 0-100
    rate: float  # words per minute
    gain_db: float
    warp: float  # vocal-tract-length factor: > 1 shorter tract, higher formants

    @property
    def voice(self) -> str:
        return f"{self.accent}+{self.variant}"


@dataclass(frozen=True)
class EmotionStyle:
    pitch_shift: float  # added to the base pitch
    range_scale: float
    rate_scale: float
    gain_db: float
    word_gap: int  # extra pause between words, x 10 ms
    drive: float  # tanh saturation; 0 is none


EMOTION_STYLES = {
    "neutral": EmotionStyle(0.0, 1.0, 1.0, 0.0, 0, 0.0),
    "happy": EmotionStyle(32.0, 2.2, 1.15, 2.5, 0, 0.0),
    "sad": EmotionStyle(-12.0, 0.25, 0.72, -10.0, 4, 0.0),
    "angry": EmotionStyle(4.0, 0.9, 1.3, 6.0, 0, 4.0),
}


def make_speakers(n: int, rng: np.random.Generator) -> list[Speaker]:
    """``n`` speakers with spread-out recipes, each (accent, variant) pair used once before any is used again.

    Beyond the 648 pairs, speakers that share a pair still differ in pitch, range, rate,
    loudness and vocal-tract warp, as two speakers of one accent and voice quality do.
    """
    if n < 1:
        raise ValueError(f"speakers: must be >= 1, got {n}")
    pairs = [(a, v) for a in ACCENTS for v in VARIANTS]
    # one draw without replacement per round of pairs: up to 648 speakers, the same as ever
    chosen = np.concatenate([rng.choice(len(pairs), size=min(len(pairs), n - start), replace=False)
                             for start in range(0, n, len(pairs))])
    speakers = []
    for i, k in enumerate(chosen):
        accent, variant = pairs[int(k)]
        speakers.append(Speaker(
            id=f"spk{i:03d}", accent=accent, variant=variant,
            pitch=float(rng.uniform(25, 70)), pitch_range=float(rng.uniform(30, 55)),
            rate=float(rng.uniform(150, 205)), gain_db=float(rng.uniform(-2, 2)),
            warp=float(rng.uniform(0.86, 1.16)),
        ))
    return speakers


@dataclass(frozen=True)
class Rendering:
    """Everything needed to render one utterance, decided when the corpus is planned."""

    text: str
    voice: str
    prosody: Prosody
    warp: float
    gain_db: float
    drive: float
    seed: int


def plan_rendering(speaker: Speaker, emotion: str, text: str, rng: np.random.Generator) -> Rendering:
    style = EMOTION_STYLES[emotion]
    jitter = rng.uniform(-1.0, 1.0, size=4)
    prosody = Prosody(
        rate=round(float(np.clip(speaker.rate * style.rate_scale * (1 + 0.05 * jitter[0]), 80, 400))),
        volume=50,  # leaves headroom: loudness is applied as a float gain afterwards
        pitch=round(float(np.clip(speaker.pitch + style.pitch_shift + 3 * jitter[1], 0, 100))),
        pitch_range=round(float(np.clip(speaker.pitch_range * style.range_scale * (1 + 0.08 * jitter[2]), 0, 100))),
        word_gap=style.word_gap,
    )
    return Rendering(text=text, voice=speaker.voice, prosody=prosody, warp=speaker.warp,
                     gain_db=speaker.gain_db + style.gain_db + jitter[3], drive=style.drive,
                     seed=int(rng.integers(2**31)))


def render(r: Rendering) -> np.ndarray:
    """The utterance as (S,) float32 at 16 kHz, with a little leading silence and a noise floor."""
    eng = engine()
    wav = eng.synth(r.text, r.voice, r.prosody).astype(np.float32) / 32768.0
    # vocal-tract warp: treat the samples as recorded at warp x the true rate
    src_rate = round(eng.sample_rate * r.warp / 50.0) * 50.0
    wav = resample(wav, src_rate, SAMPLE_RATE)
    wav *= np.float32(10.0 ** (r.gain_db / 20.0))
    if r.drive > 0:
        wav = np.tanh(r.drive * wav) * np.float32(0.5 / np.tanh(r.drive * 0.5))  # tense voice: compressed peaks
    rng = np.random.default_rng(r.seed)
    lead = np.zeros(int(rng.uniform(0.05, 0.25) * SAMPLE_RATE), dtype=np.float32)
    wav = np.concatenate([lead, wav])
    speech_rms = float(np.sqrt(np.mean(wav**2))) if wav.size else 0.0
    snr_db = rng.uniform(30.0, 50.0)
    wav += rng.standard_normal(wav.size).astype(np.float32) * np.float32(speech_rms * 10 ** (-snr_db / 20))
    return np.clip(wav, -1.0, 1.0).astype(np.float32, copy=False)
