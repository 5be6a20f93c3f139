"""Models without a hub: the character tokenizer, the tiny model builder and the loader."""

from __future__ import annotations

import pytest

from riskpo.models.loading import load_model_and_tokenizer
from riskpo.models.tiny import build_tiny_model, build_tokenizer


def test_character_tokenizer_round_trips_text_with_spaces_and_newlines():
    tokenizer = build_tokenizer()
    text = "12 + 34 = 46\nAnswer: (7*8)/2"
    ids = tokenizer(text)["input_ids"]
    assert len(ids) == len(text)  # one token per character, no special tokens added
    assert tokenizer.decode(ids) == text
    assert [tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id] == [0, 1, 2]


def test_chat_template_renders_messages_with_a_generation_prompt():
    tokenizer = build_tokenizer(padding_side="right")
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "1+1="}], add_generation_prompt=True, tokenize=False
    )
    assert rendered == "<bos>user: 1+1=\nassistant: "
    assert tokenizer.padding_side == "right"


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_tiny_model_saves_and_loads_with_its_tokenizer(tmp_path, arch):
    path = build_tiny_model(tmp_path / arch, arch=arch)
    model, tokenizer = load_model_and_tokenizer(path)
    parameters = sum(p.numel() for p in model.parameters())
    assert 0.5e6 < parameters < 1.5e6
    assert model.config.model_type == arch
    assert model.config.head_dim == 64
    assert tokenizer.decode(tokenizer("a b\nc")["input_ids"]) == "a b\nc"  # qwen2 keeps spaces


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match="arch"):
        build_tiny_model(tmp_path, arch="gpt2")
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        load_model_and_tokenizer(tmp_path / "no_such_dir")
