"""The sweep report's bad input (its output is checked on a real sweep in test_sweeps.py)."""
from __future__ import annotations

from sft_exp.tools.report import main


def test_a_folder_without_runs_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    assert main([str(tmp_path)]) == 2
    assert "holds no run folders" in capsys.readouterr().err


def test_a_missing_folder_is_a_clear_error(tmp_path, capsys):
    assert main([str(tmp_path / "nowhere")]) == 2
    assert "no such folder" in capsys.readouterr().err
