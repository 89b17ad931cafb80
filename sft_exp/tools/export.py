"""`python -m sft_exp.export <run folder> [--merge] [--out DIR] [--push-to-hub REPO]`: a run's model, ready to serve.

  python -m sft_exp.export outputs/runs/<date>/<time> --merge        # adapter run: <run>/merged
  python -m sft_exp.export outputs/runs/<date>/<time>                # full fine-tune: checks <run>/model
  python -m sft_exp.export outputs/runs/<date>/<time> --merge --push-to-hub me/my-model

Every export is checked before it is written off as done (sft_exp/tools/serving_check.py): the
end-of-turn token was trained and stops generation, and the run's task evaluation re-run on the
exported folder gives the scores the run logged at its last step. A failed check exits 1, naming
what differs; nothing is uploaded then. The folder gets a model card (README.md).

A LoRA/DoRA/QLoRA run leaves only the adapter in <run>/model. Merging folds the adapter into
the base weights and writes a full model that `AutoModelForCausalLM.from_pretrained` loads
without peft. The base is found the way the run found it:
  - <run>/base_model, when the run built its base from model.init_config (model=tiny): a random
    base exists nowhere else, so the run saved it beside the adapter;
  - otherwise model.name_or_path from the run's resolved_config.yaml (a hub id or folder).
A QLoRA base is loaded unquantized (in model.dtype) for the merge: merging into 4-bit weights
would round the adapter away.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional

from sft_exp.errors import UserError
from sft_exp.tools.saved_run import SavedRun

log = logging.getLogger("sft_exp.tools.export")


def merge(run_dir: Path, out: Optional[Path] = None) -> Path:
    """Write the merged model and the run's tokenizer to `out` (default <run>/merged); return it."""
    from peft import PeftModel

    from sft_exp import compat

    compat.load_engines_only_where_used()  # bitsandbytes (peft's LoRA layers), DeepSpeed (save_pretrained)
    run = SavedRun.open(run_dir)
    adapter_dir = run.adapter_dir()
    out = Path(out) if out is not None else run.path / "merged"
    merged = PeftModel.from_pretrained(run.load_base(), str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(str(out))  # with the base's generation config, stops included (ModelLoader.load_model)
    run.trained_tokenizer().save_pretrained(str(out))
    log.info("merged %s into its base: %s", adapter_dir, out)
    return out


def export(run_dir: Path, *, merge_adapter: bool, out: Optional[Path] = None, check: bool = True) -> tuple:
    """(exported folder, failed checks or None): merge (or take <run>/model), check, write the model card."""
    from transformers import GenerationConfig

    from sft_exp.models.stop_tokens import as_ids
    from sft_exp.run.model_card import write_model_card
    from sft_exp.tools import serving_check

    run_dir = Path(run_dir)
    folder = merge(run_dir, out) if merge_adapter else SavedRun.open(run_dir).full_model_dir()
    write_model_card(run_dir, folder, as_ids(GenerationConfig.from_pretrained(str(folder)).eos_token_id))
    if not check:
        return folder, None
    checks = serving_check.check_folder(run_dir, folder, run_dir / "export_check")
    print(serving_check.table(checks))
    return folder, serving_check.failures(checks)


UPLOAD_IGNORED = ["training_args.bin", "*.tmp"]  # a pickle of the Trainer's arguments: not part of the model


def check_repo_id(repo: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo)
    except HFValidationError as e:
        raise UserError(
            f"--push-to-hub {repo!r}: not a Hub repository id ({e}); use owner/name, e.g. me/my-model"
        ) from None


def push_to_hub(folder: Path, repo: str, private: bool = False) -> str:
    """Upload the exported folder (model card included) to the Hub repository `repo`; its URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    check_repo_id(repo)
    missing = [
        name
        for name in ("config.json", "generation_config.json", "README.md", "tokenizer_config.json")
        if not (Path(folder) / name).is_file()
    ]
    if missing:
        raise UserError(f"{folder}: {', '.join(missing)} missing; export the run again before pushing it")
    api = HfApi()
    try:
        api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
        commit = api.upload_folder(
            folder_path=str(folder),
            repo_id=repo,
            repo_type="model",
            ignore_patterns=UPLOAD_IGNORED,
            commit_message="Upload model exported by sft_exp",
        )
    except (OfflineModeIsEnabled, HfHubHTTPError, OSError) as e:
        raise HubUnreachable(
            f"uploading {folder} to the Hub repository {repo} failed: {type(e).__name__}: {e}. "
            "Check the network and `huggingface-cli login` (or HF_TOKEN), then run "
            f"`huggingface-cli upload {repo} {folder}`"
        ) from e
    return getattr(commit, "commit_url", None) or f"https://huggingface.co/{repo}"


class HubUnreachable(RuntimeError):
    """The upload itself failed (network, login): exit 1, the exported folder is complete."""


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sft_exp.export",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    parser.add_argument("run_dir", type=Path, help="a run folder (outputs/runs/<date>/<time>)")
    parser.add_argument("--merge", action="store_true", help="merge the adapter into the base model")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: <run>/merged)")
    parser.add_argument(
        "--push-to-hub", metavar="REPO", default=None, help="upload the exported folder to this Hub repo"
    )
    parser.add_argument("--private", action="store_true", help="with --push-to-hub: create the repository private")
    parser.add_argument("--no-check", action="store_true", help="skip the serving check (no task re-run)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    if args.out is not None and not args.merge:
        parser.error("--out is where --merge writes; a full fine-tune is exported in place (<run>/model)")
    try:
        if args.push_to_hub:
            check_repo_id(args.push_to_hub)  # before minutes of merging and checking
        out, failed = export(args.run_dir, merge_adapter=args.merge, out=args.out, check=not args.no_check)
        if failed:
            log.error("the exported model does not serve as it was trained: %s", failed)
            return 1
        if args.push_to_hub:
            print(push_to_hub(out, args.push_to_hub, private=args.private))
    except UserError as e:
        log.error("%s", e)
        return 2
    except HubUnreachable as e:
        log.error("%s", e)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
