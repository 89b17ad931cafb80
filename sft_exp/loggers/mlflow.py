"""MLflow: a local sqlite store in <run>/mlflow unless a tracking URI is given; params are the config."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

from sft_exp.loggers.base import Logger, RunDescription
from sft_exp.plain import dotted

RUN_ID_FILE = "sft_exp_run_id"
MAX_PARAM_LENGTH = 500  # MLflow rejects longer parameter values


class MLflowLogger(Logger):
    name = "mlflow"

    # tracking_uri: None: a local store in <run folder>/mlflow (sqlite); or any MLflow tracking URI (http://...,
    # databricks). run_name: None: the job's overrides in a multirun, MLflow's own name otherwise.
    def __init__(
        self,
        tracking_uri: Optional[str] = None,
        experiment_name: str = "sft_exp",
        run_name: Optional[str] = None,
        tags: Dict[str, str] = {},  # noqa: B006 (copied, never mutated)
    ):
        super().__init__()
        self.tracking_uri, self.experiment_name, self.run_name = tracking_uri, experiment_name, run_name
        self.tags = dict(tags or {})
        self.client = self.run_id = None

    def _start(self, run: RunDescription) -> None:
        from mlflow.tracking import MlflowClient

        folder = Path(run.run_dir) / "mlflow"
        folder.mkdir(parents=True, exist_ok=True)
        uri = self.tracking_uri or f"sqlite:///{folder.resolve() / 'mlflow.db'}"
        self.client = MlflowClient(tracking_uri=uri)
        id_file = folder / RUN_ID_FILE
        if run.resumed and id_file.is_file():
            self.run_id = id_file.read_text().strip()
            return
        experiment = self.client.get_experiment_by_name(self.experiment_name)
        experiment_id = (
            experiment.experiment_id
            if experiment
            else self.client.create_experiment(
                self.experiment_name, artifact_location=(folder / "artifacts").resolve().as_uri()
            )
        )
        tags = {**self.tags, **({"sweep": run.group} if run.group else {})}
        created = self.client.create_run(experiment_id, run_name=self.run_name or run.name, tags=tags)
        self.run_id = created.info.run_id
        id_file.write_text(self.run_id + "\n")
        params = [(key, str(value)[:MAX_PARAM_LENGTH]) for key, value in dotted(run.config).items()]
        from mlflow.entities import Param

        for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in params[start : start + 100]])

    def _log(self, metrics: dict, step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(_key(k), float(v), now, step) for k, v in metrics.items()])

    def _summary(self, summary: dict) -> None:
        for key, value in summary.items():
            self.client.set_tag(self.run_id, f"summary.{_key(key)}", str(value))

    def _finish(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status="FINISHED" if status == "completed" else "FAILED")


def _key(name: str) -> str:
    """MLflow keys allow letters, digits, _ - . space and /; anything else becomes _."""
    return "".join(c if c.isalnum() or c in "_-. /" else "_" for c in name)
