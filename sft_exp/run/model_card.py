"""model/README.md: the run's model card in the Hub's format (huggingface_hub's `ModelCard`).

Everything in it is read from the run folder (resolved_config.yaml, run_info.json, summary.json),
so `export` writes the same card beside a merged model. It says what a reader needs to trust the
model: the base model, the data (sources, row counts, fingerprint), the resolved config, the task
scores before and after training, where generation stops, and the versions of the frameworks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from sft_exp.atomic import read_json

CARD_FILE = "README.md"


def _base_model(model_cfg: dict) -> tuple:
    """(text for the card, hub id or None): a hub id goes into the card's metadata, a local path does not."""
    name = model_cfg.get("name_or_path")
    if not name:
        kind = (model_cfg.get("init_config") or {}).get("model_type", "?")
        return f"none: a fresh `{kind}` model built from `model.init_config` (random weights)", None
    is_hub_id = not Path(name).expanduser().exists() and name.count("/") == 1 and not name.startswith((".", "/", "~"))
    gguf = f" (GGUF file `{model_cfg['gguf_file']}`, de-quantized)" if model_cfg.get("gguf_file") else ""
    return f"`{name}`{gguf}", name if is_hub_id else None


_TIMINGS = ("_runtime", "_per_second", "_preparation_time")  # how fast, not how good: left out


def _scores(summary: dict) -> list:
    """(metric, before, after) of every eval_* value the run logged both before and after training."""
    rows = []
    for key, after in summary.items():
        if key.startswith("eval_") and not key.endswith(("_before", *_TIMINGS)) and isinstance(after, (int, float)):
            rows.append((key, summary.get(f"{key}_before"), after))
    return rows


def _number(value) -> str:
    return "" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def _evaluation_lines(summary: dict, evaluations: dict) -> list:
    """Every score before and after training, with the n it was measured on and its source."""
    from sft_exp.run.scores import basis_cells

    scores = _scores(summary)
    if not scores:
        return []
    lines = [
        "",
        "## Evaluation",
        "",
        "| metric | n | source | before training | after training |",
        "|---|---|---|---|---|",
    ]
    for key, before, after in scores:
        n, source = basis_cells(key, evaluations)
        lines.append(f"| {key} | {n} | {f'`{source}`' if source else ''} | {_number(before)} | {_number(after)} |")
    return lines


def contamination_lines(found: dict) -> list:
    """The contamination check of the training rows against what the scores were measured on."""
    if not found:  # a run folder from before the check
        return []
    if found.get("mode") == "off":
        return ["", "## Contamination", "", "Not checked (`data.decontamination.mode=off`)."]
    lines = [
        "",
        "## Contamination",
        "",
        f"Training rows checked against every evaluation text of the run ({found['ngram']}-word n-grams, "
        f"lower-cased, as s1 and open-r1; held-out rows also whole): {found['rows']} of {found['rows_checked']} "
        f"match (mode `{found['mode']}`); {found['duplicates']} exact duplicate training rows "
        f"(`data.deduplicate={found['deduplicate']}`)."
        + (" The matching rows are listed in `contamination.jsonl` in the run folder." if found["rows"] else ""),
        "",
        "| evaluation | source | items | training rows matching | items matched |",
        "|---|---|---|---|---|",
    ]
    for name, group in (found.get("per_eval") or {}).items():
        lines.append(
            f"| {name} | `{group['source']}` | {group['items_checked']} | {group['rows']} | {group['items_matched']} |"
        )
    lines += [f"| {item['name']} | not checked: {item['reason']} | | | |" for item in found.get("not_checked") or []]
    return lines


def card_text(run_dir: Path, stop_ids: Optional[list] = None, summary: Optional[dict] = None) -> tuple:
    """(metadata dict, markdown body) of the run's card; `summary`: the run's, before summary.json is written."""
    from omegaconf import OmegaConf

    run_dir = Path(run_dir)
    config = OmegaConf.to_container(OmegaConf.load(run_dir / "resolved_config.yaml"), resolve=True)
    info = read_json(run_dir / "run_info.json")
    summary = summary if summary is not None else read_json(run_dir / "summary.json")
    stats = info.get("data_stats") or {}
    base_text, base_id = _base_model(config.get("model") or {})
    peft = config.get("peft")
    metadata = {
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        "tags": ["sft_exp", "sft", *(["peft", "lora"] if peft else [])],
    }
    if base_id:
        metadata["base_model"] = base_id
    lines = [
        "# Fine-tuned with sft_exp",
        "",
        f"- Base model: {base_text}",
        f"- Training: {'LoRA adapter (' + str(peft.get('_target_', 'peft')).rsplit('.', 1)[-1] + ')' if peft else 'full fine-tune'}, "
        f"{summary.get('global_step', '?')} optimizer steps, {summary.get('num_tokens', '?')} tokens, status "
        f"`{summary.get('status', '?')}`",
        f"- Chat template: `data.chat_template={config.get('data', {}).get('chat_template')}` (saved with the tokenizer)",
    ]
    end = stats.get("end_of_turn") or {}
    if end.get("token"):
        lines.append(
            f"- End of turn: `{end['token']}` (id {end['id']}), {end['trained']} of {end['supervised']} "
            f"supervised tokens ({100 * (end['share'] or 0):.2f}%)"
        )
    if stop_ids:
        lines.append(f"- Generation stops at token ids {stop_ids} (generation_config.json `eos_token_id`)")
    lines += [
        "",
        "## Data",
        "",
        f"Fingerprint `{info.get('data_fingerprint', '?')}`; {stats.get('train_rows', '?')} "
        f"training rows, {stats.get('eval_rows', '?')} eval rows, {stats.get('supervised_tokens', '?')} "
        "supervised tokens.",
        "",
        "| source | role | path | format | rows read | rows kept | rows dropped |",
        "|---|---|---|---|---|---|---|",
    ]
    for role, group in (("train", stats.get("sources") or {}), ("eval", stats.get("eval_sources") or {})):
        for name, source in group.items():
            lines.append(
                f"| {name} | {role} | `{source.get('path')}` | {source.get('format')} | {source.get('rows_read')} "
                f"| {source.get('rows_kept')} | {source.get('rows_dropped') or 0} |"
            )
    lines += _evaluation_lines(summary, info.get("evaluations") or {})
    lines += contamination_lines(stats.get("contamination") or {})
    versions = info.get("versions") or {}
    lines += [
        "",
        "## Framework versions",
        "",
        *[f"- {name}: {version}" for name, version in versions.items() if version],
    ]
    if (info.get("git") or {}).get("commit"):
        lines.append(f"- sft_exp commit: {info['git']['commit']}{' (dirty)' if info['git'].get('dirty') else ''}")
    lines += ["", "## Resolved config", "", "```yaml", OmegaConf.to_yaml(OmegaConf.create(config)).rstrip(), "```", ""]
    return metadata, "\n".join(lines)


def write_model_card(
    run_dir: Path, folder: Path, stop_ids: Optional[list] = None, summary: Optional[dict] = None
) -> Path:
    """Write <folder>/README.md (replacing peft's placeholder card in an adapter folder); return its path."""
    from huggingface_hub import ModelCard, ModelCardData

    metadata, body = card_text(run_dir, stop_ids, summary)
    card = ModelCard(f"---\n{ModelCardData(**metadata).to_yaml()}\n---\n\n{body}")
    path = Path(folder) / CARD_FILE
    card.save(str(path))
    return path


def save_serving_files(model, run_dir: Path, summary: dict) -> None:
    """Beside <run>/model: the generation config (an adapter folder too, so a server of base + adapter
    stops where the run trained it to) and the model card."""
    from sft_exp.models.stop_tokens import generation_stop_ids, save_generation_config

    folder = Path(run_dir) / "model"
    save_generation_config(model, folder)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    write_model_card(run_dir, folder, generation_stop_ids(base), summary)
