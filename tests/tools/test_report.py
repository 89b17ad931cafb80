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


def test_jobs_of_different_losses_are_compared_by_eval_nll(tmp_path):
    """In a loss=nll,dft sweep each job's eval_loss is its own loss (DFT's is not on the NLL scale): the report
    says so above the table; jobs of one loss get no such line."""
    import json

    from sft_exp.tools.report import report

    for job, loss, eval_loss in (("0", "NLLLoss", 2.1), ("1", "DFTLoss", 0.4)):
        run = tmp_path / job
        run.mkdir()
        (run / "summary.json").write_text(json.dumps({"status": "completed", "eval_loss": eval_loss, "eval_nll": 2.0}))
        (run / "resolved_config.yaml").write_text(f"loss:\n  _target_: sft_exp.training.losses.{loss}\n")
    assert (
        "Jobs train different losses (DFTLoss, NLLLoss): each eval_loss is its job's own loss; compare them by "
        "eval_nll." in report(tmp_path)
    )
    (tmp_path / "1" / "resolved_config.yaml").write_text("loss:\n  _target_: sft_exp.training.losses.NLLLoss\n")
    assert "different losses" not in report(tmp_path)
