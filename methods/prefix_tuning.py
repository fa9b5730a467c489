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

import argparse
import json
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from data import TableExample, corpus_bleu, load_task
from data.batching import IGNORE_INDEX
from data.tasks import TASK_SPECS
from minitransformer import Tokenizer, Transformer, TransformerConfig, generate, load_pretrained
from minitransformer.model import KeyValue

from methods.heads import HEAD_KINDS, TaskHead, freeze
from methods.runner import common_parser, positive_int, run, save_method
from methods.training import TrainConfig, count_parameters, get_device, set_seed, train

# An MLP-made prefix needs a small step (peft: majority class at 1e-3); a flat one is a direct prompt.
DEFAULT_LR = {"mlp": 3e-4, "flat": 1e-2}


@dataclass
class PrefixTuningConfig:
    num_virtual_tokens: int = 20        # P, the prefix length
    flat: bool = False                  # train the prefix directly instead of through the MLP
    mlp_hidden: int = 512               # width of the reparameterization MLP (Li & Liang's mid_dim)
    prefix_dropout: float = 0.0         # dropout on the prefix while training
    head: str = "auto"                  # auto (token for NER, else classifier), classifier, verbalizer, token
    layers: list[int] | None = None     # 0-based layers that get a prefix; None: all (see p_tuning_v2.py)


class PrefixEncoder(nn.Module):
    """Key/value prefixes for the chosen layers of a backbone, produced by an MLP or stored flat.

    Output of forward(): per backbone layer None or (keys, values), each [1, heads, P, head_dim]: one prefix
    serves every row, and attention expands it over the batch (a view, no copy). The flat layout per
    virtual token is [layer0 keys, layer0 values, layer1 keys, ...], each H wide (peft's layout)."""

    def __init__(self, model_config: TransformerConfig, num_virtual_tokens: int, layers: list[int] | None = None,
                 flat: bool = False, mlp_hidden: int = 512, dropout: float = 0.0):
        super().__init__()
        H, self.num_heads, self.head_dim = model_config.hidden_size, model_config.num_heads, model_config.head_dim
        self.num_layers = model_config.num_layers
        self.layers = list(range(self.num_layers)) if layers is None else sorted(set(layers))
        if not self.layers or not all(0 <= i < self.num_layers for i in self.layers):
            raise ValueError(f"Prefix layers {layers} are outside this model's layers 0..{self.num_layers - 1}.")
        width = 2 * len(self.layers) * H
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
        per_layer = per_layer.permute(1, 2, 0, 3).unsqueeze(1)  # (2L, 1, nh, P, hd)
        prefix: list[KeyValue | None] = [None] * self.num_layers
        for i, layer in enumerate(self.layers):
            prefix[layer] = (per_layer[2 * i], per_layer[2 * i + 1])  # keys, values: (1, nh, P, hd)
        return prefix

    @torch.no_grad()
    def eject(self) -> None:
        """Replace E and the MLP by the prefixes they produce (a trainable flat prefix)."""
        if self.reparameterized:
            flat, self.embedding, self.mlp = self.mlp(self.embedding).clone(), None, None
            self.flat_prefix = nn.Parameter(flat)


class PrefixTuning(nn.Module):
    """A frozen backbone with trainable key/value prefixes and a task head.

    Input: a batch dict (input_ids, attention_mask, token_type_ids). Output: logits [B, C] (classifier,
    verbalizer), [B, T, C] (token), or for task_kind "generation" GPT-2's next-token logits [B, T, V]."""

    def __init__(self, backbone: Transformer, tokenizer: Tokenizer, num_labels: int, config: PrefixTuningConfig,
                 task_kind: str = "classification", verbalizer: list[str] | None = None, template: str | None = None):
        super().__init__()
        freeze(backbone)
        self.backbone, self.config = backbone, config
        self.prefix = PrefixEncoder(backbone.config, config.num_virtual_tokens, config.layers, config.flat,
                                    config.mlp_hidden, config.prefix_dropout)
        self.head: TaskHead | None = None
        if task_kind == "generation":  # no head: GPT-2's own LM head scores the next token
            if not backbone.config.is_decoder:
                raise ValueError("Generation tasks need a decoder such as gpt2 (--model gpt2); this is an encoder.")
            return
        kind = config.head if config.head != "auto" else ("token" if task_kind == "ner" else "classifier")
        self.head = TaskHead(backbone, tokenizer, num_labels, kind, verbalizer)
        if kind == "verbalizer":
            self.template = template  # runner.run builds the batches with it (the [MASK] slot)

    @property
    def saved_contents(self) -> str:  # what save_method writes, recorded in method.json
        return ("training state: prefix embedding E + MLP + head (resume training; eject() gives the deploy prefix)"
                if self.prefix.reparameterized else "deploy state (also resumes training): flat key/value prefix + head")

    def forward(self, batch: dict) -> torch.Tensor:
        prefix = self.prefix()  # computed once per step, shared by every row of the batch
        hidden = self.backbone(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"), prefix=prefix)
        if self.head is None:
            return self.backbone.lm_logits(hidden)  # (B, T, V): each position predicts the next token
        return self.head(hidden, batch)  # offset 0: a key/value prefix adds no positions

    def eject(self) -> "PrefixTuning":
        """Fold the MLP away for deployment: same outputs, only the [P, 2 x layers x H] prefix kept."""
        self.prefix.eject()
        return self


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
        for row, logits in zip(picked.tolist(), method.head(hidden[picked], sub_batch) if len(picked) else []):
            rows[row] = logits
    return rows


# ---- table-to-text generation (GPT-2) ---------------------------------------------------------

def prompt_text(source: str) -> str:  # the linearized table, then " ||" as in Li & Liang's E2E files
    return f"{source} ||"


def lm_batches(examples: list[TableExample], tokenizer: Tokenizer, batch_size: int, shuffle: bool = False,
               seed: int = 0, max_length: int | None = None) -> Iterator[dict]:
    """Training batches for a causal LM: "source ||" + " reference" + eos, one row per reference.

    labels [B, T]: labels[t] = token t + 1 where that token belongs to the reference (or is eos),
    else -100, so only the reference is learned (the LM loss of Li & Liang)."""
    pairs = [(e.source, reference) for e in examples for reference in e.references]
    if shuffle:
        random.Random(seed).shuffle(pairs)
    for start in range(0, len(pairs), batch_size):
        rows, prompt_lengths = [], []
        for source, reference in pairs[start:start + batch_size]:
            prompt = tokenizer.token_ids(prompt_text(source))
            rows.append((prompt + tokenizer.token_ids(" " + reference) + [tokenizer.eos_id])[:max_length])
            prompt_lengths.append(len(prompt))
        input_ids = pad_sequence([torch.tensor(r) for r in rows], batch_first=True, padding_value=tokenizer.pad_id)
        labels = torch.full_like(input_ids, IGNORE_INDEX)  # (B, T)
        for i, (ids, prompt_length) in enumerate(zip(rows, prompt_lengths)):
            labels[i, prompt_length - 1:len(ids) - 1] = torch.tensor(ids[prompt_length:])
        mask = pad_sequence([torch.ones(len(r), dtype=torch.long) for r in rows], batch_first=True)
        yield {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


@torch.no_grad()
def generate_texts(method: PrefixTuning, tokenizer: Tokenizer, sources: list[str], max_new_tokens: int = 60,
                   batch_size: int = 32) -> list[str]:
    """Greedy continuations of "source ||" with the method's prefix (cached decoding), up to eos."""
    method.eval()
    device, texts = next(method.parameters()).device, []
    for start in range(0, len(sources), batch_size):
        batch = tokenizer.encode([prompt_text(s) for s in sources[start:start + batch_size]], padding_side="left",
                                 add_special_tokens=False)
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        out = generate(method.backbone, ids, mask, max_new_tokens, eos_id=tokenizer.eos_id, prefix=method.prefix())
        for row in out[:, ids.shape[1]:].tolist():
            texts.append(tokenizer.decode(row[:row.index(tokenizer.eos_id)] if tokenizer.eos_id in row else row).strip())
    return texts


def run_generation(args: argparse.Namespace, name: str, config: PrefixTuningConfig,
                   method_class: type[PrefixTuning] = PrefixTuning) -> tuple[dict, PrefixTuning]:
    """Train a prefix with the LM loss on the references, then decode the dev tables and score BLEU."""
    set_seed(args.seed)
    device, task = get_device(args.device), load_task(args.task, args.data_dir)
    backbone, tokenizer = load_pretrained(args.model, device=device)
    train_examples = task.splits["train"][: args.limit_train]
    method = method_class(backbone, tokenizer, 0, config, task.kind).to(device)
    trainable, total = count_parameters(method)
    print(f"{name} on {task.name} with {args.model}: {trainable:,} trainable of {total:,} parameters "
          f"({100 * trainable / total:.3f}%)")
    steps = math.ceil(sum(len(e.references) for e in train_examples) / args.batch_size)
    make = lambda epoch: lm_batches(train_examples, tokenizer, args.batch_size, True, args.seed + epoch, args.max_length)
    result = train(method, make, steps, None, TrainConfig(epochs=args.epochs, max_steps=args.max_steps, lr=args.lr,
                   seed=args.seed, progress=not args.no_progress), device=device)
    hypotheses = generate_texts(method, tokenizer, [e.source for e in task.splits["dev"]], args.max_new_tokens)
    out = Path(args.out or f"runs/{name}-{task.name}")
    save_method(method, out, name, asdict(config))
    record = {"method": name, "model": args.model, "task": task.name, "metric": "bleu", "options": vars(args),
              "dev_metric": corpus_bleu(hypotheses, [e.references for e in task.splits["dev"]]), "trainable_params": trainable,
              "seconds_per_step": result.train_seconds / max(1, result.steps), "samples": hypotheses[:5]}
    (out / "results.json").write_text(json.dumps(record, indent=2, default=str))
    print(f"dev BLEU {100 * record['dev_metric']:.2f}; wrote {out}/results.json")
    return record, method


def run_method(args: argparse.Namespace, name: str, config: PrefixTuningConfig,
               method_class: type[PrefixTuning] = PrefixTuning) -> dict:
    """Train as the command line asked; a reparameterized prefix is also saved ejected in OUT/deploy."""
    if getattr(TASK_SPECS.get(args.task), "kind", None) == "generation":
        record, method = run_generation(args, name, config, method_class)
    else:
        built: list[PrefixTuning] = []

        def build(backbone: Transformer, tokenizer: Tokenizer, task, _) -> PrefixTuning:
            built.append(method_class(backbone, tokenizer, len(task.label_names), config, task.kind,
                                      task.verbalizer, task.templates[0] if task.templates else None))
            return built[-1]
        record, method = run(args, name, build, asdict(config)), built[0]
    if method.prefix.reparameterized:  # keep both: out/ resumes training, out/deploy serves
        deploy = Path(args.out or f"runs/{name}-{record['task']}") / "deploy"
        save_method(method.eject(), deploy, name, {**asdict(config), "flat": True})
        print(f"deploy prefix (MLP ejected): {count_parameters(method)[0]:,} parameters in {deploy}")
    return record


def add_prefix_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--virtual-tokens", type=positive_int, default=20, help="prefix length P")
    parser.add_argument("--mlp-hidden", type=positive_int, default=512, help="reparameterization MLP width")
    parser.add_argument("--prefix-dropout", type=float, default=0.0, help="dropout on the prefix while training")
    parser.add_argument("--head", choices=("auto",) + HEAD_KINDS, default="auto", help="task head (auto: token "
                        "head for NER, else [CLS]/last-token classifier; verbalizer needs an LM head)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=60, help="generation tasks: tokens to decode")
    return parser


def main(argv: list[str] | None = None) -> dict:
    parser = add_prefix_arguments(common_parser(__doc__, lr=None))
    parser.add_argument("--flat", action="store_true", help="train the prefix directly (no MLP; unstable at "
                        "the MLP's learning rate, see Li & Liang section 4.3)")
    args = parser.parse_args(argv)
    args.lr = args.lr or DEFAULT_LR["flat" if args.flat else "mlp"]
    config = PrefixTuningConfig(num_virtual_tokens=args.virtual_tokens, flat=args.flat, mlp_hidden=args.mlp_hidden,
                                prefix_dropout=args.prefix_dropout, head=args.head)
    return run_method(args, "prefix_tuning" + ("_flat" if args.flat else ""), config)


if __name__ == "__main__":
    main()
