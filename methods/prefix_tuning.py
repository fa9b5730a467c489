"""Prefix tuning (Li & Liang 2021, "Prefix-Tuning: Optimizing Continuous Prompts for Generation").

Idea: freeze the model and learn, for every layer l, P key and P value vectors that the
layer's attention sees in front of the real tokens, as if P "virtual tokens" had been read
before the input. Every head of layer l then computes

    head_l(x) = softmax(Q_l(x) [K_prefix_l ; K_l(x)]^T / sqrt(d)) [V_prefix_l ; V_l(x)]

Reparameterization (section 4.3): optimising the prefixes directly is unstable, so they are
produced by an MLP from a smaller matrix E [P, H]:

    [K_prefix ; V_prefix] of all layers = W_2 tanh(W_1 E + b_1) + b_2        [P, 2 x layers x H]

After training only the product is needed: `eject()` computes it once and drops E and the MLP
(same outputs, far fewer numbers stored). `--flat` trains the prefix directly.

Encoder–decoders (T5, BART; Li & Liang's summarization runs on BART) have three attentions a prefix
can enter, and `--placement` picks any of them, each with its own prefix and MLP as in Li & Liang's
code: the encoder's self-attention, the decoder's self-attention, and cross-attention (P key/value
columns beside the encoder outputs every decoder token reads). The default is all three (their code,
and the adapters library's PrefixTuningConfig with encoder_prefix and cross_prefix on). peft places
a seq2seq prefix in the decoder's self-attention only (peft #1188, #410), which is
`--placement decoder` here; tests/test_seq2seq_methods.py checks that layout against peft. peft's
seq2seq prefix also duplicates its [P, 2L x H] prefix for two "submodules" and splits the result
in fours, so decoder layer j reads the slot made for layer 2j mod L: with an even L (t5-small: 6)
layers L/2.. reuse the prefixes of layers 0, 2, 4 and half the slots are never read (their gradient
is zero). Ours gives every layer its own; the tests copy peft's slots across to compare.
The decoder then writes the label word (methods/shared/text_to_text.py).

Conventions. The prefix enters through the model's `prefix` hook: outputs keep the input's length
(heads read [CLS] at offset 0), every token sees every prefix column, and real tokens take positions
P, P+1, ... as with Hugging Face past key/values (and peft), in training and cached generation alike.
An all-zero prefix is NOT a no-op: a zero key scores 0, which still takes softmax mass (exp(0) per
column), and its zero value dilutes the output. Tasks can share a batch (`mixed_task_logits`).

    python methods/prefix_tuning.py --task sst2                 # MLP reparameterization, lr 3e-4
    python methods/prefix_tuning.py --task sst2 --flat          # the prefix itself, lr 1e-2
    python methods/prefix_tuning.py --task e2e --model gpt2     # table-to-text, BLEU on dev
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from data.tasks import TASK_SPECS
from minitransformer import Tokenizer, Transformer, TransformerConfig
from minitransformer.config import Seq2SeqConfig
from minitransformer.model import KeyValue

from methods.shared.distributed import say
from methods.shared.heads import TaskHead, freeze
from methods.shared.options import option, positive_int
from methods.shared.pipeline import command_line, output_dir, parse_command_line, run, save_method
from methods.shared.generation import generate_texts  # noqa: F401 (re-exported: the lessons import it from here)
from methods.shared.prompting import (PLACES, choose_head, for_task, parse_layers, parse_places,  # noqa: F401
                                      read_positions)  # PLACES, parse_layers: re-exported
from methods.shared.text_to_text import LabelTargets, is_encoder_decoder, label_scores, text_to_text_head
from methods.shared.training import count_parameters


# An MLP-made prefix needs a small step (peft: majority class at 1e-3); a flat one is a direct prompt.
DEFAULT_LR = {"mlp": 3e-4, "flat": 1e-2}
PREFERS_LABEL_WORDS = False  # Li & Liang generate with the LM head; for classification a new head is trained


@dataclass
class PrefixTuningConfig:
    num_virtual_tokens: int = option(20, "prefix length P", type=positive_int)
    flat: bool = option(False, "train the prefix directly instead of through the MLP (unstable at the MLP's "
                        "learning rate, see Li & Liang section 4.3)")
    mlp_hidden: int = option(512, "width of the reparameterization MLP (Li & Liang's mid_dim)", type=positive_int,
                             training_only=True)  # with an MLP its shapes are checked; a flat prefix has none
    prefix_dropout: float = option(0.0, "dropout on the prefix while training", training_only=True)
    head: str = option("auto", "task head (auto: a token head for tagging, else a classifier on [CLS] / the last "
                       "token; a verbalizer needs an LM head)", choices=("auto", "classifier", "verbalizer", "token"))
    prompt_layers: str = option("all", "layers that get a prefix, 1-based inclusive: all, 4-6, 1,3-4 (the depth "
                                "ablation of P-tuning v2)")
    template: str | None = option(None, "text template around the input, with the {mask} where a verbalizer "
                                  "reads the label word (default: the task's first, when the head is a verbalizer)")
    placement: str = option("all", "encoder-decoders (T5, BART): where prefixes go, comma-separated among encoder, "
                            "decoder, cross (self-attention of each stack, cross-attention), or all; peft's layout "
                            "is decoder")

    @property
    def default_lr(self) -> float:
        return DEFAULT_LR["flat" if self.flat else "mlp"]


class PrefixEncoder(nn.Module):
    """Key/value prefixes for the chosen layers of a backbone, produced by an MLP or stored flat.

    Output of forward(): per backbone layer None or (keys, values), each [1, heads, P, head_dim]: one prefix
    serves every row, and attention expands it over the batch (a view, no copy). The flat layout per
    virtual token is [layer0 keys, layer0 values, layer1 keys, ...], each H wide (peft's layout)."""

    def __init__(self, model_config: TransformerConfig | Seq2SeqConfig, num_virtual_tokens: int,
                 layers: list[int] | None = None, flat: bool = False, mlp_hidden: int = 512, dropout: float = 0.0,
                 num_layers: int | None = None):
        super().__init__()
        H, self.num_heads, self.head_dim = model_config.hidden_size, model_config.num_heads, model_config.head_dim
        self.num_layers = num_layers or model_config.num_layers  # a T5 decoder may have more layers
        self.layers = list(range(self.num_layers)) if layers is None else sorted(set(layers))
        if not self.layers or not all(0 <= i < self.num_layers for i in self.layers):
            raise ValueError(f"Prefix layers {layers} are outside this model's layers 0..{self.num_layers - 1}.")
        width = 2 * len(self.layers) * self.num_heads * self.head_dim  # T5 v1.1: heads x head_dim != H
        self.embedding = self.mlp = self.flat_prefix = None
        if flat:  # N(0, 1), as nn.Embedding initialises it in peft and the P-tuning v2 code
            self.flat_prefix = nn.Parameter(torch.randn(num_virtual_tokens, width))
        else:
            self.embedding = nn.Parameter(torch.randn(num_virtual_tokens, H))
            # tanh bounds the hidden layer, so a large step on E cannot blow up every layer's keys at once.
            self.mlp = nn.Sequential(nn.Linear(H, mlp_hidden), nn.Tanh(), nn.Linear(mlp_hidden, width))
        self.dropout = nn.Dropout(dropout)

    @property
    def reparameterized(self) -> bool:
        return self.mlp is not None

    def forward(self) -> list[KeyValue | None]:
        flat = self.mlp(self.embedding) if self.reparameterized else self.flat_prefix
        flat = self.dropout(flat)  # (P, 2*L*H); one dropout mask for the whole batch
        P = flat.shape[0]
        per_layer = flat.view(P, 2 * len(self.layers), self.num_heads, self.head_dim)  # (P, 2L, nh, hd)
        # unbind, not one index per layer: its backward writes the 2L gradients into one tensor at once, where
        # indexing would fill a zero tensor of the whole prefix's size for each of them and add the 2L up.
        keys_values = per_layer.permute(1, 2, 0, 3).unsqueeze(1).unbind(0)  # 2L x (1, nh, P, hd)
        prefix: list[KeyValue | None] = [None] * self.num_layers
        for i, layer in enumerate(self.layers):
            prefix[layer] = (keys_values[2 * i], keys_values[2 * i + 1])  # keys, values: (1, nh, P, hd)
        return prefix

    @torch.no_grad()
    def eject(self) -> None:
        """Replace E and the MLP by the prefixes they produce (a trainable flat prefix)."""
        if self.reparameterized:
            flat, self.embedding, self.mlp = self.mlp(self.embedding).clone(), None, None
            self.flat_prefix = nn.Parameter(flat)


class PlacedPrefixes(nn.ModuleDict):
    """An encoder-decoder's prefixes: one PrefixEncoder (its own E and MLP, or flat prefix) per place.
    forward() -> {place: per-layer prefixes of that stack}."""

    def __init__(self, config: Seq2SeqConfig, places: list[str], num_virtual_tokens: int, layers_spec: str,
                 flat: bool, mlp_hidden: int, dropout: float):
        super().__init__()
        for place in places:
            count = config.num_layers if place == "encoder" else config.num_decoder_layers
            self[place] = PrefixEncoder(config, num_virtual_tokens, parse_layers(layers_spec, count), flat,
                                        mlp_hidden, dropout, num_layers=count)

    @property
    def reparameterized(self) -> bool:
        return any(prefix.reparameterized for prefix in self.values())

    def forward(self) -> dict[str, list[KeyValue | None]]:
        return {place: prefix() for place, prefix in self.items()}

    def eject(self) -> None:
        for prefix in self.values():
            prefix.eject()


class PrefixTuning(nn.Module):
    """A frozen backbone with trainable key/value prefixes and a task head.

    Input: a batch dict (input_ids, attention_mask, token_type_ids). Output: logits [B, C] (classifier,
    verbalizer), [B, T, C] (token), or for task_kind "generation" GPT-2's next-token logits [B, T, V]."""

    def __init__(self, backbone: Transformer, tokenizer: Tokenizer, num_labels: int, config: PrefixTuningConfig,
                 task_kind: str = "classification", verbalizer: list[str] | None = None):
        super().__init__()
        freeze(backbone)
        self.backbone, self.tokenizer, self.config = backbone, tokenizer, config
        self.head: TaskHead | None = None
        self.template, self.prompt_length = None, 0  # a key/value prefix takes no input positions
        if is_encoder_decoder(backbone):  # prefixes where --placement says; the decoder writes the answer
            self.prefix = PlacedPrefixes(backbone.config, parse_places(config.placement), config.num_virtual_tokens,
                                         config.prompt_layers, config.flat, config.mlp_hidden, config.prefix_dropout)
            if task_kind != "generation":  # classification: the label word is the answer
                text_to_text_head(config.head, task_kind)
                self.targets = LabelTargets(tokenizer, verbalizer, num_labels)
            return
        if config.placement != "all":
            raise ValueError(f"--placement {config.placement} is for encoder-decoders (T5, BART); this "
                             f"{backbone.config.model_type} model has one stack, and its prefixes go in every layer "
                             "(--prompt-layers chooses which).")
        self.prefix = PrefixEncoder(backbone.config, config.num_virtual_tokens,
                                    parse_layers(config.prompt_layers, backbone.config.num_layers), config.flat,
                                    config.mlp_hidden, config.prefix_dropout)
        if task_kind == "generation":  # no head: GPT-2's own LM head scores the next token
            if not backbone.config.is_decoder:
                raise ValueError("Generation tasks need a decoder such as gpt2 (--model gpt2); this is an encoder.")
            return
        kind = choose_head(config.head, task_kind, backbone, verbalizer, PREFERS_LABEL_WORDS)
        self.head = TaskHead(backbone, tokenizer, num_labels, kind, verbalizer)
        if kind == "verbalizer":  # the batches are built with it: its [MASK] is where the label word is read
            self.template = config.template

    @classmethod
    def for_task(cls, backbone: Transformer, tokenizer: Tokenizer, task, config: PrefixTuningConfig):
        """Built for a task (a data.Task or TaskSpec): its labels and label words, its template for a verbalizer."""
        config = for_task(config, task, backbone, PREFERS_LABEL_WORDS)
        return cls(backbone, tokenizer, len(task.label_names), config, task.kind, task.verbalizer)

    @property
    def saved_contents(self) -> str:  # what save_method writes, recorded in method.json
        return ("training state: prefix embedding E + MLP + head (resume training; eject() gives the deploy prefix)"
                if self.prefix.reparameterized else "deploy state (also resumes training): flat key/value prefix + head")

    def forward(self, batch: dict) -> torch.Tensor:
        prefix = self.prefix()  # computed once per step, shared by every row of the batch
        if isinstance(self.prefix, PlacedPrefixes):
            encoded = self.backbone.encode(batch["input_ids"], batch["attention_mask"], prefix=prefix.get("encoder"))
            if not hasattr(self, "targets"):  # generation: teacher-forced LM logits of the reference [B, T, V]
                memory = self.backbone.memory(encoded, batch["attention_mask"], prefix.get("cross"))
                hidden = self.backbone.decode(self.backbone.shift_right(batch["labels"]), memory,
                                              prefix=prefix.get("decoder"))
                return self.backbone.lm_logits(hidden)
            # classification: [B, C] label-word log-likelihoods (rank classification)
            return label_scores(self.backbone, self.targets, encoded, batch["attention_mask"], prefix.get("decoder"),
                                prefix.get("cross"))
        hidden = self.backbone(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"), prefix=prefix)
        return self.read(hidden, batch)

    def read(self, hidden: torch.Tensor, batch: dict) -> torch.Tensor:
        """The head on the backbone's output: a prefix adds no positions, so it reads where the input has them."""
        if self.head is None:
            return self.backbone.lm_logits(hidden)  # (B, T, V): each position predicts the next token
        if self.head.kind == "token":
            return self.head(hidden)
        return self.head(hidden, read_positions(self.head.kind, batch["input_ids"], batch["attention_mask"],
                                                self.backbone.config.is_decoder, self.tokenizer.mask_id))

    def eject(self) -> "PrefixTuning":
        """Fold the MLP away for deployment: same outputs, only the [P, 2 x layers x H] prefix kept."""
        self.prefix.eject()
        self.config = replace(self.config, flat=True)  # what it now is: a flat prefix (saved so, reloads so)
        return self

    @torch.no_grad()
    def generate_texts(self, tokenizer: Tokenizer, sources: list[str], max_new_tokens: int = 60,
                       batch_size: int = 32) -> list[str]:
        """Greedy continuations of "source ||" with this prefix (cached decoding), up to eos (generation tasks)."""
        return generate_texts(self, tokenizer, sources, max_new_tokens, batch_size)


def gather_task_prefixes(prefixes: list[list[KeyValue | None]], task_ids: torch.Tensor) -> list[KeyValue | None]:
    """Per-row prefixes for a batch mixing tasks: row b gets the prefix of task task_ids[b].

    Input: per task, PrefixEncoder outputs ([1, nh, P, hd] per layer); task_ids [B].
    Output: per layer, (keys, values) each [B, nh, P, hd]."""
    shapes = {tuple(None if kv is None else kv[0].shape for kv in task) for task in prefixes}
    if len(shapes) != 1:
        raise ValueError("Tasks in one batch need prefixes of the same length on the same layers; got "
                         f"{len(shapes)} different layouts. Serve tasks with different prefixes in separate batches.")
    gather = lambda tensors: torch.cat(tensors)[task_ids]  # (tasks, nh, P, hd) -> (B, nh, P, hd)
    return [None if layer[0] is None else (gather([kv[0] for kv in layer]), gather([kv[1] for kv in layer]))
            for layer in zip(*prefixes)]  # layer: each task's (keys, values), or None for every task


def mixed_task_logits(methods: list[PrefixTuning], batch: dict) -> list[torch.Tensor]:
    """One backbone pass for a batch mixing tasks (methods sharing one backbone); batch["task_ids"] [B] picks
    each row's method. Output: B logit rows, each from its own task's head (tasks' label counts may differ)."""
    backbone = methods[0].backbone
    if any(m.backbone is not backbone for m in methods):
        raise ValueError("Mixed-task batches need methods built on one shared backbone (load it once).")
    task_ids = batch["task_ids"]
    prefix = gather_task_prefixes([m.prefix() for m in methods], task_ids)
    hidden = backbone(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"), prefix=prefix)
    rows: list[torch.Tensor | None] = [None] * len(task_ids)
    for task, method in enumerate(methods):
        picked = (task_ids == task).nonzero().squeeze(1)  # this task's rows
        sub_batch = {k: v[picked] for k, v in batch.items() if isinstance(v, torch.Tensor)}
        for row, logits in zip(picked.tolist(), method.read(hidden[picked], sub_batch) if len(picked) else []):
            rows[row] = logits
    return rows


def main(argv: list[str] | None = None):
    config, options = parse_command_line(PrefixTuningConfig, __doc__, argv)
    model, record = run(config, options)
    if model.prefix.reparameterized:  # keep both: OUT resumes training, OUT/deploy serves
        out = output_dir(options, config, record.task)
        deploy = save_method(model.eject(), out / "deploy", TASK_SPECS[record.task], options.model, record.task).parent
        say(f"deploy prefix (MLP ejected): {count_parameters(model)[0]:,} parameters in {deploy}")
    return record


if __name__ == "__main__":
    command_line(main)
