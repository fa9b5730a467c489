"""minitransformer: a small, readable BERT / RoBERTa / GPT-2 and T5 / BART in pure PyTorch that loads real checkpoints."""
from .config import Seq2SeqConfig, TransformerConfig
from .generate import generate, generate_seq2seq
from .loading import load_pretrained
from .model import Transformer, compile_blocks
from .seq2seq import EncoderDecoder
from .tokenizer import Tokenizer

__all__ = ["TransformerConfig", "Transformer", "Seq2SeqConfig", "EncoderDecoder", "Tokenizer", "load_pretrained", "generate", "generate_seq2seq",
           "compile_blocks"]
