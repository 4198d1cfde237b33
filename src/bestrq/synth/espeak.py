"""A minimal ctypes binding to libespeak-ng, for offline speech synthesis.

The library and its voice data come from the ``espeakng-loader`` wheel, so nothing
outside PyPI is needed; a system library can be used instead by setting
``BESTRQ_ESPEAK_LIB`` (and ``BESTRQ_ESPEAK_DATA``, the folder that holds
``espeak-ng-data``). eSpeak NG keeps global state, so there is one engine per
process: the corpus generator runs one per worker process.

API reference: espeak-ng's ``speak_lib.h`` (``espeak_Initialize``,
``espeak_SetVoiceByName``, ``espeak_SetParameter``, ``espeak_Synth``).
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# speak_lib.h enums
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM_RATE, _PARAM_VOLUME, _PARAM_PITCH, _PARAM_RANGE, _PARAM_WORDGAP = 1, 2, 3, 4, 7

_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class EspeakError(RuntimeError):
    pass


@dataclass(frozen=True)
class Prosody:
    """eSpeak NG's own prosody controls, in its units.

    rate: words per minute (80-450); volume: 0-200 (100 is normal); pitch: base pitch
    0-100; pitch_range: 0-100 (0 is monotone); word_gap: extra pause between words, in
    units of 10 ms.
    """

    rate: int = 175
    volume: int = 100
    pitch: int = 50
    pitch_range: int = 50
    word_gap: int = 0


def _library_paths() -> tuple[str, str]:
    lib = os.environ.get("BESTRQ_ESPEAK_LIB")
    data = os.environ.get("BESTRQ_ESPEAK_DATA")
    if lib:
        return lib, data or ""
    try:
        import espeakng_loader
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise EspeakError(
            "eSpeak NG is not available: install the 'espeakng-loader' wheel "
            "or set BESTRQ_ESPEAK_LIB to a libespeak-ng shared library"
        ) from e
    return espeakng_loader.get_library_path(), str(Path(espeakng_loader.get_data_path()).parent)


class Espeak:
    """The process-wide eSpeak NG engine. Use :func:`engine` to get it."""

    def __init__(self) -> None:
        lib_path, data_dir = _library_paths()
        try:
            self._lib = ctypes.CDLL(lib_path)
        except OSError as e:
            raise EspeakError(f"cannot load eSpeak NG library {lib_path}: {e}") from e
        lib = self._lib
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
            ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]
        rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, data_dir.encode() or None, _INITIALIZE_DONT_EXIT
        )
        if rate <= 0:
            raise EspeakError(f"espeak_Initialize failed (data folder {data_dir!r})")
        self.sample_rate: int = rate
        self._chunks: list[np.ndarray] = []

        def _collect(wav, n, _events):  # called from inside espeak_Synth
            if wav and n > 0:
                self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
            return 0

        self._callback = _CALLBACK(_collect)  # keep a reference: ctypes does not
        lib.espeak_SetSynthCallback(self._callback)

    def synth(self, text: str, voice: str, prosody: Prosody) -> np.ndarray:
        """Speak ``text`` with ``voice`` (e.g. ``"en-us+f3"``); int16 samples at sample_rate."""
        if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise EspeakError(f"unknown eSpeak NG voice {voice!r}")
        for param, value in (
            (_PARAM_RATE, prosody.rate),
            (_PARAM_VOLUME, prosody.volume),
            (_PARAM_PITCH, prosody.pitch),
            (_PARAM_RANGE, prosody.pitch_range),
            (_PARAM_WORDGAP, prosody.word_gap),
        ):
            self._lib.espeak_SetParameter(param, int(value), 0)
        data = text.encode("utf-8") + b"\0"
        self._chunks = []
        status = self._lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if status != 0:
            raise EspeakError(f"espeak_Synth failed with status {status} on {text!r}")
        self._lib.espeak_Synchronize()
        if not self._chunks:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate(self._chunks)


_ENGINE: Espeak | None = None


def engine() -> Espeak:
    """The engine of this process, initialised on first use."""
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = Espeak()
    return _ENGINE
