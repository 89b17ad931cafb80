"""The private APIs of datasets and transformers in sft_exp.compat still do what sft_exp relies on.

A failure here after an upgrade names the API that changed; fix sft_exp/compat.py, nothing else.
"""
from __future__ import annotations

import datasets
import pyarrow as pa
from transformers.utils.chat_template_utils import render_jinja_template

from sft_exp import compat
from sft_exp.data.templates import CHATML


def test_row_indices_are_the_rows_a_selected_dataset_shows_in_order():
    dataset = datasets.Dataset.from_dict({"x": [10, 11, 12, 13, 14]})
    assert compat.row_indices(dataset) is None  # fresh: all rows, in order
    selected = dataset.select([3, 0, 4]).shuffle(seed=0)
    indices = compat.row_indices(selected)
    assert isinstance(indices, (pa.Array, pa.ChunkedArray))
    assert dataset.data.table.take(indices).column("x").to_pylist() == selected["x"]
    mixed = datasets.concatenate_datasets([selected, dataset.select([1])])
    taken = mixed.data.table.take(compat.row_indices(mixed)).column("x").to_pylist()
    assert taken == mixed["x"]  # concatenation keeps one indices mapping over one table


def test_dataset_fingerprint_identifies_content_and_history(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"x": 1}\n{"x": 2}\n')
    first = datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp_path / "cache"))
    again = datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp_path / "cache"))
    fingerprint = compat.dataset_fingerprint(first)
    assert isinstance(fingerprint, str) and fingerprint == compat.dataset_fingerprint(again)
    assert compat.dataset_fingerprint(first.select([1])) != fingerprint
    path.write_text('{"x": 1}\n{"x": 3}\n')
    changed = datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp_path / "cache"))
    assert compat.dataset_fingerprint(changed) != fingerprint


def test_compiled_chat_template_renders_like_transformers():
    compile_template = compat.compile_jinja_template()
    assert compile_template is not None, "transformers no longer has _compile_jinja_template (the fast path is off)"
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    variables = {"bos_token": "<s>", "eos_token": "</s>"}
    expected = render_jinja_template(conversations=[messages], chat_template=CHATML, **variables)[0][0]
    template = compile_template(CHATML.replace("{% generation %}", "").replace("{% endgeneration %}", ""))
    kwargs = {"messages": messages, "tools": None, "documents": None, "add_generation_prompt": False}
    assert template.render(**kwargs, **variables) == expected
    assert compile_template(CHATML).render(**kwargs, **variables) == expected  # it knows {% generation %}
