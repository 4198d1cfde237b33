"""The command line: the verbs run end to end and bad input gives a clear error."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

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
    # an output path where a file stands: the system's error, said of the path (it was a NotADirectoryError traceback)
    assert main(["synth", "--out", str(bad), "--hours", "0.01"]) == 2
    assert capsys.readouterr().err == f"bestrq synth: error: {bad}: exists and is not a folder\n"
    assert main(["synth", "--out", str(bad / "corpus"), "--hours", "0.01"]) == 2
    assert capsys.readouterr().err == f"bestrq synth: error: {bad / 'corpus'}: {bad} is a file, not a folder\n"


def test_console_script_help():
    result = subprocess.run([sys.executable, "-m", "bestrq.cli", "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0 and "synth" in result.stdout and "prepare" in result.stdout


def test_numbers_out_of_range_are_refused_before_any_work(tmp_path, capsys):
    audio = tmp_path / "audio"
    audio.mkdir()
    cases = [
        (["synth", "--out", str(tmp_path / "s"), "--hours", "0"], "hours: must be > 0, got 0.0"),
        (["synth", "--out", str(tmp_path / "s"), "--hours", "-1"], "hours: must be > 0, got -1.0"),
        (["synth", "--out", str(tmp_path / "s"), "--speakers", "0"], "speakers: must be >= 2"),
        (["synth", "--out", str(tmp_path / "s"), "--sv-speakers", "0"], "sv_speakers: must be >= 1, got 0"),
        (["synth", "--out", str(tmp_path / "s"), "--jobs", "-3"], "jobs: must be >= 1, got -3"),
        (["prepare", "folder", str(audio), "--out", str(tmp_path / "p"), "--max-duration", "-5"],
         "max_duration must be >= 0 seconds"),
        (["prepare", "folder", str(audio), "--out", str(tmp_path / "p"), "--jobs", "0"], "jobs must be >= 1, got 0"),
        (["probe", "--checkpoint", "fbank", "--data", str(tmp_path), "--epochs", "0"], "epochs: must be >= 1, got 0"),
        (["probe", "--checkpoint", "fbank", "--data", str(tmp_path), "--lr", "-1"], "lr: must be > 0, got -1.0"),
        (["probe", "--checkpoint", "fbank", "--data", str(tmp_path), "--batch-seconds", "0"],
         "batch_seconds: must be > 0, got 0.0"),
        (["probe", "--checkpoint", "fbank", "--data", str(tmp_path), "--max-minutes", "-1"],
         "max_minutes: must be >= 0, got -1.0"),
        (["probe", "--checkpoint", "fbank", "--data", str(tmp_path), "--device", "gpu"],
         "device: 'gpu' is not a device this runs on"),
        (["pretrain", "--set", "encoder.num_heads=0", "--out", str(tmp_path / "r")],
         "encoder.num_heads: must be >= 1, got 0"),
        (["pretrain", "--set", "optim.lr=-1", "--out", str(tmp_path / "r")], "optim.lr: must be > 0, got -1.0"),
    ]
    if not torch.cuda.is_available():
        cases += [(["pretrain", "--set", f"data.corpus={tmp_path}", "--set", "train.device=cuda",
                    "--out", str(tmp_path / "r")], "train.device=cuda, but no CUDA device is available"),
                  (["probe", "--checkpoint", "fbank", "--data", str(tmp_path), "--device", "cuda"],
                   "device=cuda, but no CUDA device is available")]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert f"bestrq {argv[0]}: error: " in err and message in err and "Traceback" not in err, (argv, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audio"]  # nothing made, nothing half-written
    for argv in (["--rounds", "0"], ["--warmup", "-1"], ["--batch-seconds", "0"], ["--sizes", "tiny",
                 "--batch-seconds", "10", "20"], ["--device", "gpu"]):
        with pytest.raises(SystemExit) as stopped:
            main(["bench", "--corpus", str(tmp_path), *argv])
        assert stopped.value.code == 2
        assert "bestrq bench: error: --" in capsys.readouterr().err


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


def test_every_option_of_every_verb_says_what_it_does():
    import argparse

    from bestrq.cli import build_parser

    verbs = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    silent = [f"{verb} {action.option_strings[0] if action.option_strings else action.dest}"
              for verb, parser in verbs.items() for action in parser._actions
              if not action.help and not isinstance(action, argparse._HelpAction)]
    assert set(verbs) >= {"synth", "prepare", "pretrain", "probe", "report", "export", "bench", "study"}
    assert not silent, f"options without help: {silent}"


def test_each_setting_is_declared_once_for_the_flags_the_study_and_the_checks():
    """`bestrq probe` and `bestrq synth` make a flag of every field of their settings, with the field's type,
    help, choices and default; the study's sections inherit the same fields; a declared choice is checked."""
    import argparse
    import dataclasses

    from bestrq.cli import build_parser
    from bestrq.config import ConfigError, load_config
    from bestrq.probes.tasks import ProbeConfig, ProbeSettings
    from bestrq.study.config import CorpusConfig, ProbeSection
    from bestrq.synth.corpus import SynthSettings

    verbs = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    for verb, cls in (("probe", ProbeConfig), ("synth", SynthSettings)):
        flags = {a.dest: a for a in verbs[verb]._actions}
        for f in dataclasses.fields(cls):
            action = flags[f.name]
            assert action.default == f.default and action.help.startswith(f.metadata["help"].replace("%", "%%"))
            assert action.choices == (list(f.metadata["choices"]) if f.metadata["choices"] else None) or (
                tuple(action.choices) == f.metadata["choices"])
    assert issubclass(ProbeSection, ProbeSettings) and issubclass(CorpusConfig, SynthSettings)
    args = build_parser().parse_args(["probe", "--checkpoint", "fbank", "--data", "d", "--epochs", "7",
                                      "--intent-head", "lstm", "--unfreeze"])
    from bestrq.cli import _settings

    made = _settings(args, ProbeConfig)
    assert (made.epochs, made.intent_head, made.unfreeze, made.patience) == (7, "lstm", True, 4)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["probe", "--checkpoint", "fbank", "--data", "d", "--intent-head", "gru"])
    with pytest.raises(ConfigError, match=r"encoder\.position: must be one of relative_key, rotary, not 'alibi'"):
        load_config("bestrq_tiny", ["encoder.position=alibi"])
    with pytest.raises(ConfigError, match=r"masking\.mode: must be one of '', aligned, independent, not 'x'"):
        load_config("bestrq_tiny", ["masking.mode=x"])
    with pytest.raises(ValueError, match=r"intent_head: must be one of mlp, lstm, not 'gru'"):
        ProbeConfig(intent_head="gru")
