"""Push a run to the Hugging Face Hub while it trains: `callbacks=[default,push_to_hub]
callbacks.push_to_hub.repo_id=me/my-model` (conf/callbacks/push_to_hub.yaml), TRL's `push_to_hub` with its
`hub_strategy`:

- every_save: at each checkpoint its model files (weights, config, tokenizer) go to the repository's root;
- checkpoint: the same, and the whole checkpoint (optimizer state included) to last-checkpoint/, to resume from;
- all_checkpoints: the same, and each checkpoint to its own checkpoint-<step>/ folder;
- end: the final model only.

The final model (the run's model/ folder) is pushed at the end whatever the strategy. Uploads run in the
background, one at a time (every_save and checkpoint skip a save while the previous push still runs, as
transformers does; all_checkpoints queues every one). A failed push does not stop the run: every file is
still in the run folder, the failure is a warning naming the folder and the command that pushes it later,
and summary.json lists what was pushed and what was not. Only rank 0 pushes.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Optional

from transformers import TrainerCallback

from sft_exp.errors import ConfigError

log = logging.getLogger(__name__)

STRATEGIES = ("every_save", "checkpoint", "all_checkpoints", "end")
# A checkpoint's files that are training state, not the model (pushed only with the checkpoint folders).
TRAINING_STATE = ["optimizer.pt", "scheduler.pt", "rng_state*.pth", "trainer_state.json", "*.tmp"]


class PushToHub(TrainerCallback):
    """Upload checkpoints and the final model to the Hub repository `repo_id` (created if missing)."""

    def __init__(
        self, repo_id: str, strategy: str = "every_save", private: bool = False, revision: Optional[str] = None
    ):
        from huggingface_hub import get_token
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        if strategy not in STRATEGIES:
            raise ConfigError(f"callbacks.push_to_hub.strategy={strategy!r} is not one of {', '.join(STRATEGIES)}")
        try:
            validate_repo_id(repo_id)
        except HFValidationError as err:
            raise ConfigError(
                f"callbacks.push_to_hub.repo_id={repo_id!r}: not a Hub repository id ({err}); use "
                "owner/name, e.g. me/my-model"
            ) from None
        if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
            raise ConfigError(
                "callbacks.push_to_hub: HF_HUB_OFFLINE is set, so nothing could be pushed; unset it, "
                "or train without the push (callbacks=default) and push later with "
                "`python -m sft_exp.export <run folder> --push-to-hub REPO`."
            )
        if get_token() is None:
            raise ConfigError(
                "callbacks.push_to_hub: not logged in to the Hugging Face Hub; run `hf auth login` or "
                "set HF_TOKEN, then start again."
            )
        self.repo_id, self.strategy, self.private, self.revision = repo_id, strategy, private, revision
        self.pushed: list[str] = []
        self.failed: dict[str, str] = {}
        self._pending: list[tuple[str, str, Future]] = []  # (folder, the command that pushes it by hand, job)
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="push_to_hub")

    # ------------------------------------------------------------------ Trainer events
    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero or self.strategy == "end":
            return
        self._collect()
        if self.strategy != "all_checkpoints" and any(not job.done() for _, _, job in self._pending):
            log.info(
                "push to %s: the previous push still runs; checkpoint-%d is not pushed", self.repo_id, state.global_step
            )
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        self._submit(folder, f"step {state.global_step}")

    def push_final(self, model_dir: Path) -> dict:
        """Push the final model (and wait for every push); what summary.json records of the pushes."""
        self._collect(wait=True)
        by_hand = f"hf upload {self.repo_id} {model_dir}" + self._revision_flag()
        job = self._worker.submit(self._upload, model_dir, None, [], "final model")
        self._pending.append((str(model_dir), by_hand, job))
        self._collect(wait=True)
        if self.failed:
            log.error(
                "push to %s: %d of %d pushes failed (each named above); the files are in the run folder",
                self.repo_id,
                len(self.failed),
                len(self.failed) + len(self.pushed),
            )
        return {"repo_id": self.repo_id, "strategy": self.strategy, "pushed": self.pushed, "failed": self.failed}

    # ------------------------------------------------------------------ uploads
    def _submit(self, checkpoint: Path, what: str) -> None:
        in_repo = {"checkpoint": "last-checkpoint", "all_checkpoints": checkpoint.name}.get(self.strategy)
        by_hand = (
            f"hf upload {self.repo_id} {checkpoint} "
            + (in_repo or ". " + " ".join(f"--exclude '{pattern}'" for pattern in TRAINING_STATE))
            + self._revision_flag()
        )
        job = self._worker.submit(self._upload, checkpoint, in_repo, TRAINING_STATE, what)
        self._pending.append((str(checkpoint), by_hand, job))

    def _revision_flag(self) -> str:
        return f" --revision {self.revision}" if self.revision else ""

    def _upload(self, folder: Path, whole_to: Optional[str], ignored: list, what: str) -> None:
        """The model files of `folder` to the repository root; with `whole_to`, all of it to that subfolder."""
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(self.repo_id, private=self.private, exist_ok=True, repo_type="model")
        if self.revision:
            api.create_branch(self.repo_id, branch=self.revision, exist_ok=True)
        message = f"sft_exp: {what}"
        api.upload_folder(
            repo_id=self.repo_id,
            folder_path=str(folder),
            revision=self.revision,
            ignore_patterns=ignored,
            commit_message=message,
        )
        if whole_to:
            api.upload_folder(
                repo_id=self.repo_id,
                folder_path=str(folder),
                path_in_repo=whole_to,
                revision=self.revision,
                commit_message=f"{message}, checkpoint",
            )

    def _collect(self, wait: bool = False) -> None:
        """Record the finished pushes; a failure is a warning with the command that pushes that folder later."""
        still = []
        for folder, by_hand, job in self._pending:
            if not (wait or job.done()):
                still.append((folder, by_hand, job))
                continue
            error = job.exception()
            if error is None:
                self.pushed.append(folder)
                continue
            reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            self.failed[folder] = reason
            log.warning(
                "push of %s to the Hub repository %s failed (%s); the run goes on and the files stay "
                "there: push them later with `%s`",
                folder,
                self.repo_id,
                reason,
                by_hand,
            )
        self._pending = still


def push_final(callbacks: list, model_dir: Path) -> dict:
    """Each PushToHub callback's final push; {"hub_push": its record} for summary.json (empty without one)."""
    records = [callback.push_final(model_dir) for callback in callbacks if isinstance(callback, PushToHub)]
    return {"hub_push": records[0] if len(records) == 1 else records} if records else {}
