"""The command line: the verbs run end to end and bad input gives a clear error."""

from __future__ import annotations

import json
import subprocess
import sys

from bestrq.cli import main
from bestrq.data.manifest import list_splits


def test_synth_and_prepare_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "corpus"
    assert main(["synth", "--out", str(out), "--hours", "0.01", "--speakers", "30", "--sv-speakers", "10",
                 "--seed", "2", "--quiet", "--jobs", "1"]) == 0
    printed = capsys.readouterr().out
    assert "x real time" in printed and "verification trials" in printed
    assert list_splits(out) == ["dev", "sv", "test", "train"]
    assert json.loads((out / "summary.json").read_text())["settings"]["seed"] == 2
    assert main(["prepare", "folder", str(out / "audio"), "--out", str(tmp_path / "unlabelled")]) == 0
    assert list_splits(tmp_path / "unlabelled") == ["train"]


def test_errors_are_messages_not_tracebacks(tmp_path, capsys):
    assert main(["prepare", "fairseq", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "bestrq prepare: error:" in err and "nowhere" in err and "Traceback" not in err
    bad = tmp_path / "bad.tsv"
    bad.write_text("/root\nonly-one-field\n")
    assert main(["prepare", "fairseq", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert f"{bad}:2:" in capsys.readouterr().err


def test_console_script_help():
    result = subprocess.run([sys.executable, "-m", "bestrq.cli", "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0 and "synth" in result.stdout and "prepare" in result.stdout


def test_pretrain_config_errors_name_the_key_and_the_valid_ones(tmp_path, capsys):
    assert main(["pretrain", "--set", "encoder.layers=3", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown key encoder.layers" in err and "num_layers" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [1, 2\n")
    assert main(["pretrain", "--config", str(bad)]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert main(["pretrain", "--config", "bestrq_tiny", "--set", f"data.corpus={tmp_path / 'none'}",
                 "--out", str(tmp_path / "run")]) == 2
    assert "none" in capsys.readouterr().err
