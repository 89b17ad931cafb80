"""The defaults a run on a user's own data trains with where TRL's differ, said in the run's first lines, each
with the key that changes it (docs/coming-from-trl.md says why they differ)."""

from __future__ import annotations


def data_defaults(settings, trainer, asked: list[str]) -> str:
    """One line: the loss mask, the held-out evaluation and the length of training of this run, each with the
    key that changes it and TRL's default beside it. `asked`: the command line's overrides (a setting given
    there is the user's, not a default, and is not repeated)."""

    def given(key: str) -> bool:
        return any(o.lstrip("+~").startswith(key) for o in asked)

    said = []
    if not given("data.assistant_only_loss") and not given("data.completion_only_loss"):
        conversations = "assistant replies only" if settings.assistant_only_loss else "every token"
        said.append(
            f"loss on {conversations} of conversations (data.assistant_only_loss="
            f"{str(settings.assistant_only_loss).lower()}; TRL: false, every token) and on completions only "
            "of prompt/completion rows (data.completion_only_loss; TRL: the same)"
        )
    if not given("data.eval_split_size") and not settings.eval_sources and settings.eval_split_size:
        own_files = [source for source in settings.sources if source.eval_path]
        held = (
            f"{_share(settings.eval_split_size)} of each source's rows held out"
            if not own_files
            else "each source's eval_path held out"
        )
        said.append(
            f"{held} and evaluated before and after training (data.eval_split_size=0 for none; TRL: no evaluation)"
        )
    if not given("trainer.max_steps") and not given("trainer.num_train_epochs"):
        length = (
            f"{trainer.max_steps} steps (trainer.max_steps)"
            if trainer.max_steps > 0
            else f"{trainer.num_train_epochs:g} epoch(s) (trainer.num_train_epochs; TRL: 3)"
        )
        said.append(length)
    return "your data trains with: " + "; ".join(said) if said else ""


def _share(size: float) -> str:
    return f"{size:g} rows" if size >= 1 else f"{100 * size:g}%"
