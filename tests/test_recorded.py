"""`bestrq prepare recorded` on packages laid out like Debian's (built here: no download in the tests)."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from bestrq.data.importers import prepare, recorded
from bestrq.data.manifest import ManifestError, load_split


def _tone(rate: int, seconds: float, freq: float) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _audio(fmt: str, rate: int, freq: float, channels: int = 1) -> bytes:
    buf = io.BytesIO()
    x = _tone(rate, 0.4, freq)
    sf.write(buf, np.stack([x] * channels, axis=1) if channels > 1 else x, rate,
             format="OGG" if fmt == "ogg" else "WAV", subtype="VORBIS" if fmt == "ogg" else "PCM_16")
    return buf.getvalue()


def make_deb(folder: Path, package: str, files: dict[str, bytes]) -> Path:
    """A .deb as dpkg builds it: an ar archive of debian-binary, control and data tarballs."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:xz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo("./" + name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    members = [("debian-binary", b"2.0\n"), ("control.tar.xz", b""), ("data.tar.xz", data.getvalue())]
    out = bytearray(b"!<arch>\n")
    for name, content in members:
        out += f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(content):<10}`\n".encode()
        out += content + (b"\n" if len(content) % 2 else b"")
    path = folder / f"{package}_1.0-1_all.deb"
    path.write_bytes(bytes(out))
    return path


SENTENCES = ["Turn left at the bridge.", "The river is cold in May.", "A small red boat.", "We sing every night.",
             "Close the window, please.", "Bread and butter.", "The clock struck twelve.", "Green fields."]


@pytest.fixture(scope="module")
def packages(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("debs")
    stamps = {}
    for i, text in enumerate(SENTENCES):
        stem = f"usr/share/tuxpaint/stamps/things/thing{i}"
        stamps[f"{stem}.txt"] = f"{text}\nfr.utf8=Phrase française, numéro «{'abcdefgh'[i]}».\n" \
                                f"ru.utf8=Русская фраза {'абвгдежз'[i]}.\n".encode()
        stamps[f"{stem}_desc_fr.ogg"] = _audio("ogg", 22050, 200 + 10 * i, channels=2)
        stamps[f"{stem}_desc_ru.ogg"] = _audio("ogg", 44100, 300 + 10 * i)
    stamps["usr/share/tuxpaint/stamps/things/thing0_desc_da.ogg.ogg"] = _audio("ogg", 22050, 250)
    make_deb(folder, "tuxpaint-stamps-default", stamps)
    for lang, voice in (("en", "en_US_f_Allison"), ("es", "es_MX_f_Allison"), ("fr", "fr_CA_f_June"),
                        ("it", "it_IT_m_Carlo"), ("ru", "ru_RU_f_IvrvoiceRU")):
        prompts = {f"usr/share/asterisk/sounds/{voice}/prompt{i}.wav": _audio("wav", 8000, 400 + 20 * i)
                   for i in range(6)}
        prompts[f"usr/share/asterisk/sounds/{voice}/digits/1.wav"] = _audio("wav", 8000, 700)
        make_deb(folder, f"asterisk-core-sounds-{lang}-wav", prompts)
        table = "; Core sounds\n\n" + "".join(f"prompt{i}: {lang} prompt number {'abcdef'[i]}.\n" for i in range(6))
        table += "digits/1: 1\n"
        make_deb(folder, f"asterisk-core-sounds-{lang}",
                 {f"usr/share/doc/asterisk-core-sounds-{lang}/core-sounds-{lang}.txt.gz": gzip.compress(table.encode())})
    make_deb(folder, "asterisk-prompt-it-menardi-wav",
             {f"usr/share/asterisk/sounds/it_IT_f_Menardi/m{i}.wav": _audio("wav", 8000, 500 + i) for i in range(2)})
    voice = "usr/share/festival/voices/russian/msu_ru_nsh_clunits"
    lines = "".join(f'( ru_{i:04d} "Он пош+ёл д+омой {"абвгде"[i]}." )\n' for i in range(6))
    make_deb(folder, "festvox-ru", {f"{voice}/etc/txt.done.data": lines.encode(),
                                    **{f"{voice}/wav/ru_{i:04d}.wav": _audio("wav", 16000, 350 + i) for i in range(6)}})
    make_deb(folder, "ktuberling-data", {"usr/share/ktuberling/sounds/fr/nez.ogg": _audio("ogg", 22050, 600)})
    make_deb(folder, "klettres-data", {"usr/share/klettres/en_GB/alpha/A.ogg": _audio("ogg", 22050, 650)})
    return folder


def test_the_recipe_builds_a_corpus_of_the_packages(packages, tmp_path):
    out = tmp_path / "corpus"
    report = prepare("recorded", packages, out, jobs=2)
    assert set(report.splits) >= {"train", "extra"} and set(report.splits) <= {"train", "dev", "test", "extra"}
    cuts = {split: list(load_split(out, split)) for split in report.splits}
    every = [c for split in cuts.values() for c in split]
    assert len(every) == 16 + 30 + 5 + 2 + 6 + 2  # the misnamed tuxpaint copy is left out
    for c in every:
        assert c.recording.sampling_rate == 16000 and c.recording.num_channels == 1
        assert Path(c.recording.sources[0].source).is_relative_to(out / "audio")
    sup = {c.id: c.supervisions[0] for c in every}
    # the text normalised; stress marks, punctuation and quotes out; digits make a clip unlabelled
    assert sup["tuxpaint-fr-things-thing2"].text == "phrase française numéro c"
    assert sup["festvox-ru-ru_0001"].text == "он пошёл домой б"
    assert sup["asterisk-en-Allison-prompt3"].text == "en prompt number d"
    assert sup["asterisk-en-Allison-digits-1"].text is None  # "1", read as a word
    assert sup["asterisk-it-Menardi-m0"].text is None  # no table of its own
    # the voice, and lhotse's language field
    assert sup["asterisk-en-Allison-prompt0"].speaker == sup["asterisk-es-Allison-prompt0"].speaker == "asterisk-Allison"
    assert sup["asterisk-es-Allison-prompt0"].language == "es" and sup["festvox-ru-ru_0000"].language == "ru"
    assert sup["klettres-data-en_GB-alpha-A"].language == "en"
    # extra holds the clips without text, the labelled splits none; no dev or test text is in train
    assert all(c.supervisions[0].text is None for c in cuts["extra"])
    labelled = [c for s in ("train", "dev", "test") for c in cuts.get(s, [])]
    assert all(c.supervisions[0].text for c in labelled)
    train = {c.supervisions[0].text for c in cuts["train"]}
    assert not [c for s in ("dev", "test") for c in cuts.get(s, []) if c.supervisions[0].text in train]

    # pre-training on train+extra of this same corpus hears no dev or test transcript
    from bestrq.synth.leakage import overlaps

    counts = overlaps(out, out, ["train", "extra"])
    assert counts["probe_test_texts_in_pretraining"] == counts["probe_dev_texts_in_pretraining"] == 0
    assert overlaps(out, out)["probe_test_texts_in_pretraining"] == len(cuts.get("test", []))  # all splits: itself

    # a second run converts nothing again, and gives the same manifests
    before = {p: p.stat().st_mtime_ns for p in (out / "audio").rglob("*.flac")}
    prepare("recorded", packages, out, jobs=2)
    assert {p: p.stat().st_mtime_ns for p in (out / "audio").rglob("*.flac")} == before
    assert [c.id for c in load_split(out, "train")] == [c.id for c in cuts["train"]]


def test_normalised_text_keeps_letters_of_any_script_and_refuses_what_is_read_out():
    assert recorded.normalise("Она завела, прядь вол+ос за ухо.") == "она завела прядь волос за ухо"
    assert recorded.normalise("L’homme «sage» — ici!") == "l'homme sage ici"
    assert recorded.normalise("Press * to pause") is None and recorded.normalise("A US 1 cent piece") is None
    assert recorded.normalise(" .,; ") is None


def test_a_missing_package_is_named_with_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(recorded.shutil, "which", lambda name: None)  # a machine without apt
    make_deb(tmp_path, "festvox-ru", {"usr/share/x.txt": b"x"})
    with pytest.raises(ManifestError, match=r"no \.deb of tuxpaint-stamps-default, .*no apt-get.*apt-get download"):
        recorded.fetch(tmp_path)
    (tmp_path / "bad_1_all.deb").write_bytes(b"not an archive")
    with pytest.raises(ManifestError, match="not a .deb"):
        recorded.unpack(tmp_path / "bad_1_all.deb", tmp_path / "u")


def test_the_language_probe_reads_lhotse_language_and_needs_two_of_them(packages, tmp_path):
    from bestrq.probes import ProbeConfig, run_probes
    from bestrq.probes.tasks import task_data

    out = tmp_path / "corpus"
    prepare("recorded", packages, out, jobs=2)
    result = run_probes("fbank", ["language"], out, tmp_path / "probe", ProbeConfig(epochs=2, patience=1),
                        progress=False)["language"]
    train = {c.supervisions[0].language for c in load_split(out, "train")}
    assert result["classes"] == sorted(train) and len(train) >= 3
    assert 0 <= result["test"]["accuracy"] <= 1 and "unit" in result["sheets"]["accuracy"]  # resampled by voice
    one = {s: [c for c in load_split(out, s) if c.supervisions[0].language == "ru"] for s in ("train", "dev", "test")}
    with pytest.raises(ValueError, match="of one class \\(ru\\): nothing to tell apart"):
        task_data("language", one)
