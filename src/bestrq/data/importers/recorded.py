"""``bestrq prepare recorded``: recorded human speech from Debian packages, as a corpus.

Debian's archive ships a few hours of read speech with its text, reachable with
``apt-get download`` on any machine the project runs on (no root needed), as Kaldi's
``yesno`` and ESPnet's ``mini_librispeech`` give a recipe a real corpus small enough to run
end to end. The recipe fetches the packages into SRC (or reads them there, fetched before on
another machine), unpacks them itself (a ``.deb`` is an ar archive holding a tar; no
``dpkg-deb`` needed), converts every clip to 16 kHz mono FLAC under OUT/audio and writes:

    train, dev, test   clips with a transcript: ``text`` (normalised), ``speaker`` (the voice)
                       and lhotse's ``language``; a transcript and all its recordings are on one
                       side (split by a hash of the normalised text), so no dev or test text is
                       in train
    extra              clips without a usable transcript (words and letters, prompts without
                       text, or text with digits and symbols read out differently): audio for
                       pre-training, with ``speaker`` and ``language`` where known

Pre-training reads ``train+extra``, probes ``train``, ``dev`` and ``test``.

| package | what | voices | text |
|---|---|---|---|
| tuxpaint-stamps-default | descriptions read aloud, ``*_desc_<lang>.ogg`` | one per language | ``<stem>.txt``, ``<lang>.utf8=`` |
| asterisk-core-sounds-{en,es,fr,it,ru}-wav | telephone prompts, 8 kHz | Allison (en, es), June, Carlo, IvrvoiceRU | ``core-sounds-XX.txt.gz`` of the package without ``-wav`` |
| asterisk-prompt-it-menardi-wav | telephone prompts, 8 kHz | Menardi | none |
| festvox-ru | read sentences, 16 kHz | msu_ru_nsh | ``etc/txt.done.data`` (stress marks ``+``) |
| ktuberling-data, klettres-data | words and letters, many languages | several | none |
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import re
import shutil
import subprocess
import tarfile
import unicodedata
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from ...files import atomic_path
from ..audio import SAMPLE_RATE, resample
from ..manifest import ManifestError

log = logging.getLogger("bestrq.data")

ASTERISK = ("en", "es", "fr", "it", "ru")
PACKAGES = ("tuxpaint-stamps-default", *(f"asterisk-core-sounds-{lang}-wav" for lang in ASTERISK),
            *(f"asterisk-core-sounds-{lang}" for lang in ASTERISK), "asterisk-prompt-it-menardi-wav", "festvox-ru",
            "ktuberling-data", "klettres-data")
HELDOUT = 0.15  # of the transcripts, each for dev and for test


@dataclass(frozen=True)
class Clip:
    id: str
    path: Path  # in the unpacked tree
    text: str | None  # normalised; None: audio for pre-training only
    speaker: str
    language: str
    source: str  # the package


# --- fetching and unpacking -----------------------------------------------------------

def _deb(cache: Path, package: str) -> Path | None:
    found = sorted(cache.glob(f"{package}_*.deb"))
    return found[-1] if found else None


def fetch(cache: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    """Each package's ``.deb`` in ``cache``: those missing are fetched with ``apt-get download``; a clear
    error names what cannot be had."""
    cache.mkdir(parents=True, exist_ok=True)
    missing = [p for p in packages if _deb(cache, p) is None]
    if missing and shutil.which("apt-get"):
        log.info("fetching %s into %s", ", ".join(missing), cache)
        proc = subprocess.run(["apt-get", "download", *missing], cwd=cache, capture_output=True, text=True,
                              check=False)
        if proc.returncode != 0:
            log.warning("apt-get download: %s", proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "?")
    still = [p for p in packages if _deb(cache, p) is None]
    if still:
        how = ("apt-get could not fetch them (is the machine's package index current? `apt-get update`)"
               if shutil.which("apt-get") else "this machine has no apt-get")
        raise ManifestError(f"{cache}: no .deb of {', '.join(still)}; {how}. Fetch them on a Debian or Ubuntu "
                            f"machine (`apt-get download {' '.join(still)}`) and copy them into {cache}")
    return {p: _deb(cache, p) for p in packages}


def _ar_members(data: bytes, path: Path) -> Iterator[tuple[str, bytes]]:
    """The members of an ar archive (the format of a .deb)."""
    if not data.startswith(b"!<arch>\n"):
        raise ManifestError(f"{path}: not a .deb (no ar archive header)")
    pos = 8
    while pos + 60 <= len(data):
        header = data[pos:pos + 60]
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        try:
            size = int(header[48:58].decode("ascii").strip())
        except ValueError:
            raise ManifestError(f"{path}: a damaged .deb (member header at byte {pos})") from None
        yield name, data[pos + 60:pos + 60 + size]
        pos += 60 + size + (size % 2)


def unpack(deb: Path, dest: Path) -> Path:
    """The package's files under ``dest`` (kept: unpacked once); only regular files and folders, inside it."""
    done = dest / ".unpacked"
    if done.is_file() and done.read_text() == deb.name:
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    payload = next(((n, b) for n, b in _ar_members(deb.read_bytes(), deb) if n.startswith("data.tar")), None)
    if payload is None:
        raise ManifestError(f"{deb}: a .deb without its data.tar")
    with tarfile.open(fileobj=io.BytesIO(payload[1])) as tar:
        for member in tar:
            if member.isfile() or member.isdir():
                tar.extract(member, dest, filter="data")
    done.write_text(deb.name)
    return dest


# --- transcripts --------------------------------------------------------------------------

_SPOKEN_APART = re.compile(r"[0-9#*$%&@+=/<>€£]")  # read out as words the text does not hold


def normalise(text: str) -> str | None:
    """Lower case, letters (any script), apostrophes and single spaces; stress marks (``+``) out. None when
    the text holds digits or symbols its speaker read out as words: its characters would not match."""
    text = unicodedata.normalize("NFC", text.replace("+", ""))
    if _SPOKEN_APART.search(text):
        return None
    text = text.lower().replace("’", "'")
    text = "".join(ch if ch.isalpha() or ch == "'" else " " for ch in text)
    text = re.sub(r" +", " ", text).strip().strip("'")
    return text or None


def _tuxpaint(root: Path) -> Iterator[Clip]:
    for path in sorted(root.glob("usr/share/tuxpaint/stamps/**/*_desc_*.ogg")):
        stem, lang = path.name[:-len(".ogg")].rsplit("_desc_", 1)
        if not re.fullmatch(r"[a-z]{2,3}", lang):  # e.g. "da.ogg.ogg": a misnamed copy
            continue
        table = path.with_name(f"{stem}.txt")
        lines = table.read_text(encoding="utf-8", errors="replace").splitlines() if table.is_file() else []
        said = next((ln.split("=", 1)[1] for ln in lines if ln.startswith(f"{lang}.utf8=")), None)
        rel = path.with_name(stem).relative_to(root / "usr/share/tuxpaint/stamps")
        yield Clip(f"tuxpaint-{lang}-" + "-".join(rel.parts), path, normalise(said) if said else None,
                   f"tuxpaint-{lang}", lang, "tuxpaint-stamps-default")


def _asterisk(roots: dict[str, Path]) -> Iterator[Clip]:
    sounds = [root / "usr/share/asterisk/sounds" for name, root in roots.items() if name.startswith("asterisk")]
    for folder in sorted(f for s in sounds if s.is_dir() for f in s.iterdir() if f.is_dir()):
        lang, _, _, voice = folder.name.split("_", 3)  # en_US_f_Allison
        texts = {}
        table = roots.get(f"asterisk-core-sounds-{lang}")
        doc = table / f"usr/share/doc/asterisk-core-sounds-{lang}/core-sounds-{lang}.txt.gz" if table else None
        if voice != "Menardi" and doc is not None and doc.is_file():  # Menardi's prompts are other recordings
            for line in gzip.decompress(doc.read_bytes()).decode("utf-8", "replace").splitlines():
                if ":" in line and not line.startswith(";"):
                    key, said = line.split(":", 1)
                    texts[key.strip()] = said.strip()
        for path in sorted(folder.rglob("*.wav")):
            key = path.relative_to(folder).with_suffix("").as_posix()
            said = texts.get(key)
            yield Clip(f"asterisk-{lang}-{voice}-{key.replace('/', '-')}", path, normalise(said) if said else None,
                       f"asterisk-{voice}", lang, f"asterisk-{lang}")


def _festvox(root: Path) -> Iterator[Clip]:
    voice = root / "usr/share/festival/voices/russian/msu_ru_nsh_clunits"
    texts = {}
    table = voice / "etc/txt.done.data"
    for line in (table.read_text(encoding="utf-8", errors="replace").splitlines() if table.is_file() else []):
        m = re.match(r'\(\s*(\S+)\s+"(.*)"\s*\)\s*$', line)
        if m:
            texts[m.group(1)] = m.group(2)
    for path in sorted((voice / "wav").glob("*.wav")):
        said = texts.get(path.stem)
        yield Clip(f"festvox-ru-{path.stem}", path, normalise(said) if said else None, "festvox-msu_ru_nsh", "ru",
                   "festvox-ru")


def _words(root: Path, package: str) -> Iterator[Clip]:
    """ktuberling's and klettres' words and letters: no transcript; the language from the folder."""
    base = root / "usr/share" / package.removesuffix("-data")
    for path in sorted(base.rglob("*.ogg")):
        rel = path.relative_to(base)
        lang = rel.parts[1] if rel.parts[0] == "sounds" else rel.parts[0]  # ktuberling/sounds/fr, klettres/fr
        yield Clip(f"{package}-" + "-".join(rel.with_suffix("").parts), path, None, f"{package}-{lang}",
                   lang.split("_")[0], package)


def clips(roots: dict[str, Path]) -> list[Clip]:
    """Every clip of the unpacked packages, in a fixed order."""
    out = [*_tuxpaint(roots["tuxpaint-stamps-default"]), *_asterisk(roots), *_festvox(roots["festvox-ru"]),
           *_words(roots["ktuberling-data"], "ktuberling-data"), *_words(roots["klettres-data"], "klettres-data")]
    ids = [c.id for c in out]
    if len(set(ids)) != len(ids):
        raise ManifestError("two clips of the packages were given one id: " +
                            next(i for i in ids if ids.count(i) > 1))
    return out


def split_of(clip: Clip) -> str:
    """train, dev or test by a hash of the transcript (every recording of one text on one side); extra
    for a clip without one."""
    if clip.text is None:
        return "extra"
    h = int.from_bytes(hashlib.sha1(clip.text.encode("utf-8")).digest()[:8], "big") / 2**64
    return "dev" if h < HELDOUT else "test" if h < 2 * HELDOUT else "train"


# --- conversion ---------------------------------------------------------------------------

def convert(clip: Clip, out: Path) -> Path | str:
    """The clip as 16 kHz mono FLAC under ``out/audio`` (kept if there already), or why it was skipped."""
    dest = out / "audio" / clip.source / f"{clip.id}.flac"
    if dest.is_file():
        return dest
    try:
        audio, rate = sf.read(str(clip.path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as e:
        return f"unreadable ({e})"
    if audio.shape[0] == 0:
        return "empty audio (0 samples)"
    mono = audio.mean(axis=1)
    if rate != SAMPLE_RATE:
        mono = resample(mono, rate, SAMPLE_RATE)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest) as tmp:
        sf.write(str(tmp), np.clip(mono, -1.0, 1.0), SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return dest


def prepare_recorded(src: Path, out: Path, jobs: int = 4, progress: bool = True) -> dict[str, list[tuple[Clip, Path]]]:
    """Fetch (where needed), unpack and convert; each split's (clip, FLAC) pairs. Unreadable clips are
    skipped, each logged."""
    from tqdm import tqdm

    debs = fetch(src)
    roots = {p: unpack(deb, src / "unpacked" / p) for p, deb in debs.items()}
    found = clips(roots)
    splits: dict[str, list[tuple[Clip, Path]]] = {}
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        for clip, made in tqdm(zip(found, pool.map(lambda c: convert(c, out), found)), total=len(found),
                               desc="convert", unit="clip", disable=not progress):
            if isinstance(made, str):
                log.warning("skipping %s: %s", clip.path, made)
                continue
            splits.setdefault(split_of(clip), []).append((clip, made))
    return splits


def shared_texts(splits: dict[str, list[tuple[Clip, Path]]]) -> int:
    """Dev and test clips whose transcript is also in train (0 by construction)."""
    train = {c.text for c, _ in splits.get("train", [])}
    return sum(c.text in train for name in ("dev", "test") for c, _ in splits.get(name, []))


def describe(splits: dict[str, list[tuple[Clip, Path]]]) -> str:
    lines = []
    for name, items in sorted(splits.items()):
        voices = {c.speaker for c, _ in items}
        langs = {c.language for c, _ in items}
        lines.append(f"{name}: {len(items)} clips, {len(voices)} voices, {len(langs)} languages")
    return "\n".join(lines)


def from_recorded(src: Path, report, jobs: int = 4, out: Path | None = None, **_) -> dict[str, Iterator]:
    """The importer of ``bestrq prepare recorded SRC --out OUT``: SRC is the packages' folder (fetched into
    it where missing); the audio goes to OUT/audio, beside the manifests."""
    from lhotse import MonoCut, Recording, SupervisionSegment

    if out is None:
        raise ValueError("recorded: give the output folder, where its audio goes")
    splits = prepare_recorded(src, Path(out), jobs=jobs, progress=True)

    def cuts(items: list[tuple[Clip, Path]]) -> Iterator[MonoCut]:
        for clip, path in items:
            rec = Recording.from_file(path, recording_id=clip.id)
            sup = SupervisionSegment(id=clip.id, recording_id=clip.id, start=0.0, duration=rec.duration, channel=0,
                                     text=clip.text, speaker=clip.speaker, language=clip.language)
            yield MonoCut(id=clip.id, start=0.0, duration=rec.duration, channel=0, recording=rec, supervisions=[sup])

    return {name: cuts(items) for name, items in sorted(splits.items())}
