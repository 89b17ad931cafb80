"""model.eos_token (TRL's and open-r1's `eos_token`): the tokenizer's EOS, what training appends, config.json's
eos_token_id, the saved tokenizer and the generation stops all become that token."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer, GenerationConfig

from sft_exp.data import DataSettings, prepare_datasets
from sft_exp.errors import ConfigError
from sft_exp.models.loader import ModelLoader
from tests.helpers import write_base_model


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    return write_base_model(tmp_path_factory.mktemp("base") / "model")


def test_eos_token_is_what_training_appends_and_what_the_model_saves(base_model, tmp_path):
    loader = ModelLoader(name_or_path=str(base_model), eos_token="<|im_end|>")
    tokenizer = loader.load_tokenizer()
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"  # its own pad stays
    rows = tmp_path / "text.jsonl"
    rows.write_text(json.dumps({"text": "abc"}) + "\n")
    data = prepare_datasets(DataSettings(sources=[{"path": str(rows)}], eval_split_size=0, seed=0), tokenizer)
    assert data.train[0]["input_ids"][-1] == im_end and data.train[0]["labels"][-1] == im_end
    model = loader.load_model(tokenizer)
    own = GenerationConfig.from_pretrained(base_model).eos_token_id
    assert model.config.eos_token_id == im_end and set(model.generation_config.eos_token_id) == {own, im_end}
    model.save_pretrained(tmp_path / "saved")
    tokenizer.save_pretrained(tmp_path / "saved")
    assert AutoTokenizer.from_pretrained(tmp_path / "saved").eos_token == "<|im_end|>"
    assert json.loads((tmp_path / "saved" / "config.json").read_text())["eos_token_id"] == im_end
    assert im_end in GenerationConfig.from_pretrained(tmp_path / "saved").eos_token_id


def test_without_eos_token_the_tokenizer_keeps_its_own(base_model):
    assert ModelLoader(name_or_path=str(base_model)).load_tokenizer().eos_token == "<|endoftext|>"


def test_an_eos_token_the_tokenizer_lacks_is_refused_before_the_model_loads(base_model):
    with pytest.raises(
        ConfigError,
        match=r"model.eos_token='<\|eot_id\|>' is not a token of the tokenizer of .*its "
        r"EOS is '<\|endoftext\|>'",
    ):
        ModelLoader(name_or_path=str(base_model), eos_token="<|eot_id|>").load_tokenizer()
