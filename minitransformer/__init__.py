"""minitransformer: a small, readable BERT / RoBERTa / GPT-2 in pure PyTorch that loads real checkpoints."""
from .config import TransformerConfig
from .generate import generate
from .loading import load_pretrained
from .model import Transformer
from .tokenizer import Tokenizer

__all__ = ["TransformerConfig", "Transformer", "Tokenizer", "load_pretrained", "generate"]
