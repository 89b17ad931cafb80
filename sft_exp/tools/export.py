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

from omegaconf import OmegaConf

from sft_exp.errors import UserError

log = logging.getLogger("sft_exp.tools.export")


def _adapter_folder(run_dir: Path) -> Path:
    model_dir = run_dir / "model"
    if not (run_dir / "resolved_config.yaml").is_file():
        raise UserError(f"{run_dir} is not a run folder (no resolved_config.yaml); give the folder a run wrote.")
    if not model_dir.is_dir():
        raise UserError(f"{run_dir} has no model/ folder: the run did not finish; export one of its checkpoints "
                        "by resuming it to the end first.")
    if not (model_dir / "adapter_config.json").is_file():
        raise UserError(f"{model_dir} is already a full model (the run trained without peft): load it with "
                        "from_pretrained as it is; there is nothing to merge.")
    return model_dir


def _run_config(run_dir: Path):
    return OmegaConf.load(Path(run_dir) / "resolved_config.yaml")


def load_base(run_dir: Path):
    """The run's base model, unquantized, in the run's model.dtype (a GGUF base de-quantized, as trained)."""
    from sft_exp.models.loader import ModelLoader

    model_cfg = OmegaConf.to_container(_run_config(run_dir).model, resolve=True)
    saved_base = run_dir / "base_model"
    if saved_base.is_dir():
        model_cfg.update(name_or_path=str(saved_base), init_config=None, gguf_file=None, tokenizer=None)
    elif not model_cfg.get("name_or_path"):
        raise UserError(f"{run_dir} has no base_model/ folder and its model was built from config: "
                        "the base weights are gone, so the adapter cannot be merged.")
    load_kwargs = dict(model_cfg.get("load_kwargs") or {})
    load_kwargs.pop("quantization_config", None)
    load_kwargs.pop("device_map", None)
    model_cfg["load_kwargs"] = load_kwargs
    loader = ModelLoader.from_mapping(model_cfg)
    # The adapter's own tokenizer (saved beside it) sets the special tokens; its size must fit the base.
    return loader.load_model(trained_tokenizer(run_dir))


def trained_tokenizer(run_dir: Path):
    """The tokenizer saved with the run's model, carrying the chat template the run trained with.

    train.run sets that template on the tokenizer it saves; for a run folder written before it did,
    the template named by the run's data.chat_template is set here, so the merged model is prompted
    the way it was trained.
    """
    from transformers import AutoTokenizer

    from sft_exp.data.templates import resolve_chat_template

    tokenizer = AutoTokenizer.from_pretrained(str(Path(run_dir) / "model"))
    setting = OmegaConf.select(_run_config(run_dir), "data.chat_template")
    if setting is None:
        return tokenizer
    try:
        template = resolve_chat_template(setting, tokenizer)
    except UserError as e:
        log.warning("kept the saved tokenizer's chat template: the run's data.chat_template is unreadable (%s)", e)
        return tokenizer
    if template != tokenizer.chat_template:
        log.info("set the run's trained chat template (data.chat_template=%s) on the merged tokenizer", setting)
        tokenizer.chat_template = template
    return tokenizer


def merge(run_dir: Path, out: Optional[Path] = None) -> Path:
    """Write the merged model and the run's tokenizer to `out` (default <run>/merged); return it."""
    from peft import PeftModel

    run_dir = Path(run_dir)
    adapter_dir = _adapter_folder(run_dir)
    out = Path(out) if out is not None else run_dir / "merged"
    base = load_base(run_dir)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(str(out))  # with the base's generation config, stops included (ModelLoader.load_model)
    trained_tokenizer(run_dir).save_pretrained(str(out))
    log.info("merged %s into its base: %s", adapter_dir, out)
    return out


def _full_model_folder(run_dir: Path) -> Path:
    """<run>/model of a run that trained without peft (already a full model: it is what is exported)."""
    if not (run_dir / "resolved_config.yaml").is_file():
        raise UserError(f"{run_dir} is not a run folder (no resolved_config.yaml); give the folder a run wrote.")
    model_dir = run_dir / "model"
    if not (model_dir / "config.json").is_file():
        if (model_dir / "adapter_config.json").is_file():
            raise UserError(f"{model_dir} is a LoRA adapter: add --merge to fold it into its base model.")
        raise UserError(f"{run_dir} has no model/ folder: the run did not finish; resume it to the end first.")
    return model_dir


def export(run_dir: Path, *, merge_adapter: bool, out: Optional[Path] = None, check: bool = True) -> tuple:
    """(exported folder, failed checks or None): merge (or take <run>/model), check, write the model card."""
    from transformers import GenerationConfig

    from sft_exp.models.stop_tokens import as_ids
    from sft_exp.run.model_card import write_model_card
    from sft_exp.tools import serving_check

    run_dir = Path(run_dir)
    folder = merge(run_dir, out) if merge_adapter else _full_model_folder(run_dir)
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
        raise UserError(f"--push-to-hub {repo!r}: not a Hub repository id ({e}); use owner/name, e.g. me/my-model")


def push_to_hub(folder: Path, repo: str, private: bool = False) -> str:
    """Upload the exported folder (model card included) to the Hub repository `repo`; its URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    check_repo_id(repo)
    missing = [name for name in ("config.json", "generation_config.json", "README.md", "tokenizer_config.json")
               if not (Path(folder) / name).is_file()]
    if missing:
        raise UserError(f"{folder}: {', '.join(missing)} missing; export the run again before pushing it")
    api = HfApi()
    try:
        api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
        commit = api.upload_folder(folder_path=str(folder), repo_id=repo, repo_type="model",
                                   ignore_patterns=UPLOAD_IGNORED, commit_message="Upload model exported by sft_exp")
    except (OfflineModeIsEnabled, HfHubHTTPError, OSError) as e:
        raise HubUnreachable(f"uploading {folder} to the Hub repository {repo} failed: {type(e).__name__}: {e}. "
                             "Check the network and `huggingface-cli login` (or HF_TOKEN), then run "
                             f"`huggingface-cli upload {repo} {folder}`") from e
    return getattr(commit, "commit_url", None) or f"https://huggingface.co/{repo}"


class HubUnreachable(RuntimeError):
    """The upload itself failed (network, login): exit 1, the exported folder is complete."""


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sft_exp.export", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("run_dir", type=Path, help="a run folder (outputs/runs/<date>/<time>)")
    parser.add_argument("--merge", action="store_true", help="merge the adapter into the base model")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: <run>/merged)")
    parser.add_argument("--push-to-hub", metavar="REPO", default=None, help="upload the exported folder to this Hub repo")
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
