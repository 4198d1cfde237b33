"""Manifests: malformed input fails at once naming the file and line; writes are atomic."""

from __future__ import annotations

import gzip
import json

import pytest

from bestrq.data.manifest import ManifestError, list_splits, load_cuts, load_split, save_split


def _lines(corpus, n=3):
    with gzip.open(corpus / "cuts_dev.jsonl.gz", "rt") as f:
        return [json.loads(next(f)) for _ in range(n)]


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_round_trip(corpus, tmp_path):
    cuts = load_split(corpus, "dev")
    save_split(tmp_path, "x", cuts)
    again = load_split(tmp_path, "x")
    assert [c.to_dict() for c in again] == [c.to_dict() for c in cuts]
    assert list_splits(tmp_path) == ["x"]
    assert {p.name for p in tmp_path.iterdir()} == {
        "cuts_x.jsonl.gz", "recordings_x.jsonl.gz", "supervisions_x.jsonl.gz"}


@pytest.mark.parametrize("corrupt, message", [
    (lambda rows: rows[:2] + ['{"id": "broken", '], r":3: not valid JSON"),
    (lambda rows: rows[:1] + [{k: v for k, v in rows[1].items() if k != "recording"}], r":2: cut has no 'recording'"),
    (lambda rows: rows + [rows[0]], r":4: duplicate cut id"),
    (lambda rows: rows[:2] + ["[1, 2]"], r":3: expected a JSON object"),
    (lambda rows: [dict(rows[0], duration=-1.0)], r":1: .*'duration' must be a number >= 0"),
    (lambda rows: rows[:1] + [dict(rows[1], supervisions=5)], r":2: .*'supervisions' must be a list"),
])
def test_malformed_manifest_names_file_and_line(corpus, tmp_path, corrupt, message):
    path = _write(tmp_path / "cuts_bad.jsonl", corrupt(_lines(corpus)))
    with pytest.raises(ManifestError, match=str(path) + message):
        load_cuts(path)


def test_label_types_are_checked(corpus, tmp_path):
    rows = _lines(corpus)
    rows[2]["supervisions"][0]["custom"]["emotion"] = 3
    path = _write(tmp_path / "cuts_bad.jsonl", rows)
    with pytest.raises(ManifestError, match=r":3: .*custom\['emotion'\] must be a string"):
        load_cuts(path)


def test_missing_split_and_unreadable_file(corpus, tmp_path):
    with pytest.raises(ManifestError, match="no manifest for split 'nope'.*dev"):
        load_split(corpus, "nope")
    bad = tmp_path / "cuts_x.jsonl.gz"
    bad.write_bytes(b"not gzip at all")
    with pytest.raises(ManifestError, match="cannot be read"):
        load_cuts(bad)


def test_splits_join_with_a_plus(corpus, tmp_path):
    dev, test = load_split(corpus, "dev"), load_split(corpus, "test")
    joined = load_split(corpus, "dev+test")
    assert [c.id for c in joined] == [c.id for c in dev] + [c.id for c in test]
    with pytest.raises(ManifestError, match="share cut ids"):
        load_split(corpus, "dev+dev")
    with pytest.raises(ManifestError, match="no manifest for split 'nope'"):
        load_split(corpus, "dev+nope")


def test_a_split_opened_lazily_is_read_only_when_iterated_and_bad_lines_are_skipped_when_asked(
        corpus, tmp_path, caplog):
    import logging

    from lhotse import CutSet

    from bestrq.data.manifest import cuts_path, open_split, split_identity

    cuts = list(load_split(corpus, "dev"))[:5]
    save_split(tmp_path, "train", CutSet.from_cuts(cuts))
    path = cuts_path(tmp_path, "train")
    identity = split_identity(tmp_path, "train")
    save_split(tmp_path, "train", CutSet.from_cuts(cuts))  # the same cuts written again: the same split
    assert split_identity(tmp_path, "train") == identity
    with gzip.open(path, "at") as f:  # a sixth line, bad, as a corpus grown by hand might have
        f.write('{"id": "x"}\n')
    assert split_identity(tmp_path, "train") != identity

    lazy = open_split(tmp_path, "train")  # nothing is read yet
    assert lazy.is_lazy
    with pytest.raises(ManifestError, match=r"cuts_train\.jsonl\.gz:6: cut has no 'start' field"):
        list(lazy)
    skipping = open_split(tmp_path, "train", skip_bad=True)
    with caplog.at_level(logging.WARNING, logger="bestrq.data"):
        for _ in range(2):  # two epochs: the same cuts, the bad line named once
            assert [c.id for c in skipping] == [c.id for c in cuts]
    assert caplog.text.count("cuts_train.jsonl.gz:6: cut has no 'start' field; the line is left out") == 1
    assert skipping.data.bad_lines == {f"{path}:6": "cut has no 'start' field"}
