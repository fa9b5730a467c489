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


SEQ2SEQ_MODEL_TYPES = ("t5", "bart")


@dataclass
class Seq2SeqConfig:
    """An encoder–decoder (T5, BART): an encoder stack, a decoder stack with cross-attention, one shared
    embedding. The two families differ in a handful of switches, all read from config.json:

    T5 (Raffel et al. 2020): pre-norm with RMS norms and no biases, no position embeddings but a learned
    bias per relative-position bucket (computed once per stack, shared by its layers), unscaled attention
    (the 1/sqrt(d) is folded into the initialisation), ReLU or gated-GELU (v1.1, flan-t5) feed-forward,
    and where the LM head is tied to the embeddings, decoder outputs scaled by d_model**-0.5.
    BART (Lewis et al. 2020): post-norm with layer norms and biases, learned positions numbered from 2
    (fairseq's offset), a layer norm on the embeddings, GELU, and a fixed bias on the logits."""
    model_type: str = "t5"             # t5 | bart
    vocab_size: int = 32128
    hidden_size: int = 512             # d_model
    num_layers: int = 6                # encoder layers
    num_decoder_layers: int = 6
    num_heads: int = 8
    head_dim: int = 64                 # T5's d_kv (heads x head_dim may differ from hidden_size)
    intermediate_size: int = 2048      # d_ff
    activation: str = "relu"           # relu | gelu_new (T5 gated-gelu) | gelu (BART)
    gated: bool = False                # T5 v1.1: act(wi_0 x) * wi_1 x
    layer_norm_eps: float = 1e-6
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.0     # BART only; T5 drops attention weights with hidden_dropout
    activation_dropout: float = 0.0    # BART: after the feed-forward's activation (T5: hidden_dropout there)
    relative_buckets: int = 32         # T5
    relative_max_distance: int = 128   # T5
    max_positions: int = 0             # BART's learned positions (0 for T5, which has none)
    position_offset: int = 2           # BART numbers positions from 2
    scale_embedding: bool = False      # BART: embeddings x sqrt(d_model)
    scale_decoder_outputs: bool = True  # T5 with a tied LM head: decoder outputs x d_model**-0.5
    pad_token_id: int = 0
    eos_token_id: int = 1
    bos_token_id: int | None = None
    decoder_start_token_id: int = 0    # T5 starts decoding at <pad>, BART at </s>
    fast: bool = True                  # the speed switch of TransformerConfig (dropout masks by torch.rand)

    def __post_init__(self):
        if self.model_type not in SEQ2SEQ_MODEL_TYPES:
            raise ValueError(f"Unsupported encoder-decoder {self.model_type!r}; supported: "
                             f"{', '.join(SEQ2SEQ_MODEL_TYPES)}.")
        if self.activation not in SUPPORTED_ACTIVATIONS:
            raise ValueError(f"Unsupported activation {self.activation!r}; supported: {', '.join(SUPPORTED_ACTIVATIONS)}.")

    is_decoder = False                 # as a whole it is neither: see is_encoder_decoder
    is_encoder_decoder = True

    @property
    def is_t5(self) -> bool:
        return self.model_type == "t5"

    @classmethod
    def from_hf(cls, hf: dict) -> "Seq2SeqConfig":
        model_type = hf.get("model_type")
        if model_type == "t5":
            act = hf.get("feed_forward_proj", "relu").split("-")
            if len(act) > 2 or (len(act) == 2 and act[0] != "gated"):
                raise ValueError(f"feed_forward_proj={hf['feed_forward_proj']!r} is not supported (relu, gelu, "
                                 "gated-gelu, gated-relu...).")
            activation = "gelu_new" if hf.get("feed_forward_proj") == "gated-gelu" else act[-1]
            return cls(model_type="t5", vocab_size=hf["vocab_size"], hidden_size=hf["d_model"],
                       num_layers=hf["num_layers"], num_decoder_layers=hf.get("num_decoder_layers") or hf["num_layers"],
                       num_heads=hf["num_heads"], head_dim=hf["d_kv"], intermediate_size=hf["d_ff"],
                       activation=activation, gated=len(act) == 2, layer_norm_eps=hf.get("layer_norm_epsilon", 1e-6),
                       hidden_dropout=hf.get("dropout_rate", 0.1), attention_dropout=hf.get("dropout_rate", 0.1),
                       activation_dropout=hf.get("dropout_rate", 0.1),
                       relative_buckets=hf.get("relative_attention_num_buckets", 32),
                       relative_max_distance=hf.get("relative_attention_max_distance", 128),
                       # transformers >= 5 writes its own switch (and always tie_word_embeddings=true); older
                       # configs say tie_word_embeddings=false for v1.1, whose outputs are not rescaled
                       scale_decoder_outputs=hf.get("scale_decoder_outputs", hf.get("tie_word_embeddings", True) is not False),
                       pad_token_id=hf.get("pad_token_id", 0), eos_token_id=hf.get("eos_token_id", 1),
                       decoder_start_token_id=hf.get("decoder_start_token_id", 0))
        if model_type == "bart":
            if hf.get("add_final_layer_norm") or hf.get("normalize_before"):
                raise ValueError("This BART variant (mBART-style normalize_before / add_final_layer_norm) is not "
                                 "supported.")
            heads = hf["encoder_attention_heads"]
            if hf["decoder_attention_heads"] != heads or hf["decoder_ffn_dim"] != hf["encoder_ffn_dim"]:
                raise ValueError("BART with different encoder and decoder widths is not supported.")
            return cls(model_type="bart", vocab_size=hf["vocab_size"], hidden_size=hf["d_model"],
                       num_layers=hf["encoder_layers"], num_decoder_layers=hf["decoder_layers"], num_heads=heads,
                       head_dim=hf["d_model"] // heads, intermediate_size=hf["encoder_ffn_dim"],
                       activation=hf.get("activation_function", "gelu"), layer_norm_eps=1e-5,
                       hidden_dropout=hf.get("dropout", 0.1), attention_dropout=hf.get("attention_dropout", 0.0),
                       activation_dropout=hf.get("activation_dropout", 0.0),
                       max_positions=hf["max_position_embeddings"], scale_embedding=hf.get("scale_embedding", False),
                       scale_decoder_outputs=False, pad_token_id=hf.get("pad_token_id", 1),
                       eos_token_id=hf.get("eos_token_id", 2), bos_token_id=hf.get("bos_token_id", 0),
                       decoder_start_token_id=hf.get("decoder_start_token_id", 2))
        raise ValueError(f"Unsupported encoder-decoder model_type {model_type!r}; supported: "
                         f"{', '.join(SEQ2SEQ_MODEL_TYPES)}.")
