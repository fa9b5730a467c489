"""The model configuration, read from a Hugging Face `config.json`.

One dataclass describes BERT, RoBERTa and GPT-2: they differ in a handful of
switches (encoder or decoder, where the layer norm sits, how positions start).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

SUPPORTED_MODEL_TYPES = ("bert", "roberta", "gpt2")
SUPPORTED_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu")


@dataclass
class TransformerConfig:
    model_type: str = "bert"           # bert | roberta | gpt2
    vocab_size: int = 30522
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_positions: int = 512
    type_vocab_size: int = 2           # 0: no token-type embedding (GPT-2)
    layer_norm_eps: float = 1e-12
    activation: str = "gelu"           # gelu (exact, BERT) or gelu_new (tanh approximation, GPT-2)
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    pad_token_id: int = 0
    position_offset: int = 0           # RoBERTa numbers positions from padding_idx + 1 (fairseq heritage)
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    # Speed devices, not model settings: skip the padding inside the blocks, draw dropout masks with
    # torch.rand, attend by hand on CPU while training with dropout. False: the plain path beside them
    # (padded batches throughout, nn.Dropout, SDPA); the same outputs and gradients (tests/test_minitransformer.py).
    fast: bool = True

    def __post_init__(self):
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"Unsupported model_type {self.model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}.")
        if self.activation not in SUPPORTED_ACTIVATIONS:
            raise ValueError(f"Unsupported activation {self.activation!r}; supported: {', '.join(SUPPORTED_ACTIVATIONS)}.")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}.")

    @property
    def is_decoder(self) -> bool:
        """GPT-2 is a causal, pre-norm decoder; BERT and RoBERTa are bidirectional, post-norm encoders."""
        return self.model_type == "gpt2"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def from_hf(cls, hf: dict) -> "TransformerConfig":
        """Translate a Hugging Face config dict (the contents of config.json)."""
        model_type = hf.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"Unsupported model_type {model_type!r} in config.json; "
                             f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}.")
        if model_type == "gpt2":
            for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "add_cross_attention"):
                if hf.get(flag):
                    raise ValueError(f"GPT-2 option {flag}=True is not supported by minitransformer.")
            hidden = hf["n_embd"]
            return cls(model_type="gpt2", vocab_size=hf["vocab_size"], hidden_size=hidden,
                       num_layers=hf["n_layer"], num_heads=hf["n_head"],
                       intermediate_size=hf.get("n_inner") or 4 * hidden,  # n_inner=None means 4 x hidden
                       max_positions=hf["n_positions"], type_vocab_size=0,
                       layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
                       activation=hf.get("activation_function", "gelu_new"),
                       hidden_dropout=hf.get("resid_pdrop", 0.1), attention_dropout=hf.get("attn_pdrop", 0.1),
                       pad_token_id=hf.get("pad_token_id") or hf.get("eos_token_id", 50256),
                       bos_token_id=hf.get("bos_token_id", 50256), eos_token_id=hf.get("eos_token_id", 50256))
        if hf.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"position_embedding_type={hf['position_embedding_type']!r} is not supported (absolute only).")
        if hf.get("is_decoder") or hf.get("add_cross_attention"):
            raise ValueError(f"{model_type} as a decoder (is_decoder/add_cross_attention) is not supported.")
        pad = hf.get("pad_token_id", 1 if model_type == "roberta" else 0)
        return cls(model_type=model_type, vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
                   num_layers=hf["num_hidden_layers"], num_heads=hf["num_attention_heads"],
                   intermediate_size=hf["intermediate_size"], max_positions=hf["max_position_embeddings"],
                   type_vocab_size=hf.get("type_vocab_size", 2), layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
                   activation=hf.get("hidden_act", "gelu"), hidden_dropout=hf.get("hidden_dropout_prob", 0.1),
                   attention_dropout=hf.get("attention_probs_dropout_prob", 0.1), pad_token_id=pad,
                   position_offset=pad + 1 if model_type == "roberta" else 0,
                   bos_token_id=hf.get("bos_token_id"), eos_token_id=hf.get("eos_token_id"))

    @classmethod
    def from_file(cls, path: str | Path) -> "TransformerConfig":
        """The config of a checkpoint folder's config.json; a broken or incomplete file is an error naming it."""
        try:
            hf = json.loads(Path(path).read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON ({error.msg} at line {error.lineno}): the file is damaged or "
                             "cut short; copy or download the checkpoint again.") from None
        try:
            return cls.from_hf(hf)
        except KeyError as error:
            raise ValueError(f"{path} lacks {error.args[0]!r}, which a {hf.get('model_type', '?')} config needs: is "
                             "it the config.json of a complete checkpoint?") from None
