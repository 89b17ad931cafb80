"""`python -m sft_exp.export <run folder> --merge [--out DIR]`: an adapter run's model, merged into its base.

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
    merged.save_pretrained(str(out))
    trained_tokenizer(run_dir).save_pretrained(str(out))
    log.info("merged %s into its base: %s", adapter_dir, out)
    return out


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sft_exp.export", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a run folder (outputs/runs/<date>/<time>)")
    parser.add_argument("--merge", action="store_true", help="merge the adapter into the base model")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: <run>/merged)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    if not args.merge:
        parser.error("say what to export: --merge writes the adapter merged into its base model")
    try:
        out = merge(args.run_dir, args.out)
    except UserError as e:
        log.error("%s", e)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
