"""Hard (discrete) prompts: a human-written template turns a task into the model's own game.

PET (Schick & Schütze 2021) wraps the input x in a cloze template, T(x) = "x It was [MASK].",
and scores each label y by the masked-LM logit of its label word v(y) (the verbalizer) at [MASK]:

    p(y | x) = softmax_y  s( v(y) | T(x) ),   s = the LM's logit of a word at the slot

GPT-2 has no [MASK]: the prompt stops before the slot and v(y) is scored as the *next* token.
No weight changes, so this is zero-shot classification. Four variants (--mode):

* zero-shot:     the template and verbalizer alone.
* icl:           in-context learning (Brown et al. 2020): k solved examples per class, each the
                 template filled with its label word, go before the query. Also the random-label
                 control of Min et al. 2022 (same demonstrations, only the labels drawn at random)
                 and zero-shot for reference.
* sensitivity:   every template of the task, and the spread of their accuracies (Jiang et al. 2020,
                 Zhao et al. 2021: wording alone moves accuracy by many points).
* template-head: for a model without an LM head (all-MiniLM-L6-v2 is an encoder only), label
                 words cannot be scored: the template still wraps x, the encoder stays frozen, and
                 a linear head trained on the [MASK] position's hidden state predicts y.

    python methods/hard_prompt.py --mode icl --model gpt2 --shots 4 --task sst2
"""
from __future__ import annotations

import argparse
import datetime
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from torch import nn

from data import Example, Task, VerbalizerError, apply_template, batches, check_template, k_shot, load_task
from minitransformer import Tokenizer, Transformer, load_pretrained

from methods.heads import TaskHead, freeze, last_token_positions
from methods.runner import common_parser, positive_int, run
from methods.training import count_parameters, evaluate, get_device, set_seed

MODES = ("zero-shot", "icl", "sensitivity", "template-head")
READS = ("mask", "cls", "mean")  # template-head: the [MASK]/slot position, [CLS] through the pooler, mean of tokens
SEPARATOR = "\n\n"               # between in-context demonstrations


@dataclass
class HardPromptConfig:
    mode: str = "zero-shot"
    templates: list[str] | None = None   # None: the task's templates (one mode uses the first)
    verbalizer: list[str] | None = None  # one label word per label; None: the task's
    shots: int = 4                       # icl: demonstrations per class
    read: str = "mask"                   # template-head: where the linear head reads


class HardPrompt(nn.Module):
    """A frozen model behind a text template; logits from the verbalizer, or from a trained linear head.

    Input: a batch built with `self.template` (run and evaluate_splits do that). Output: logits [B, C].
    read=None scores the label words with the LM head (zero-shot, icl); read="mask"|"cls"|"mean"
    trains only a linear head on the frozen model (template-head).
    """

    def __init__(self, backbone: Transformer, tokenizer: Tokenizer, num_labels: int, template: str,
                 verbalizer: list[str] | None = None, read: str | None = None):
        super().__init__()
        if read not in (None, *READS):
            raise ValueError(f"Unknown read {read!r}; choose one of {', '.join(READS)}.")
        self.backbone, self.template, self.read = freeze(backbone), template, read
        self.is_decoder, self.mask_id = backbone.config.is_decoder, tokenizer.mask_id
        if read is None:
            self.head = TaskHead(backbone, tokenizer, num_labels, "verbalizer", verbalizer)
        elif read == "cls":  # the same head as fine_tuning's head-only probe: only the template differs
            self.head = TaskHead(backbone, tokenizer, num_labels, "classifier")
        else:
            self.dropout, self.linear = nn.Dropout(0.1), nn.Linear(backbone.config.hidden_size, num_labels)
            nn.init.normal_(self.linear.weight, std=0.02)
            nn.init.zeros_(self.linear.bias)
        self.saved_contents = f"the linear head (read={read}); the template is in method.json"

    def forward(self, batch: dict) -> torch.Tensor:
        hidden = self.backbone(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))  # (B, T, H)
        if self.read in (None, "cls"):
            return self.head(hidden, batch)
        if self.read == "mask":
            picked = hidden[torch.arange(hidden.shape[0], device=hidden.device), self.slot_positions(batch)]  # (B, H)
        else:  # mean over real tokens, the pooling all-MiniLM-L6-v2 was trained with
            weights = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            picked = (hidden * weights).sum(1) / weights.sum(1)  # (B, H)
        return self.linear(self.dropout(picked))  # (B, C)

    def slot_positions(self, batch: dict) -> torch.Tensor:
        """Where the label word goes: the [MASK] (encoder) or the last real token (decoder), [B]."""
        if self.is_decoder:
            return last_token_positions(batch["attention_mask"])
        is_mask = batch["input_ids"] == self.mask_id  # (B, T)
        if not bool(is_mask.any(1).all()):
            raise ValueError("Every input needs the template's [MASK]; was the prompt cut by max_length?")
        return is_mask.float().argmax(1)


def parse_verbalizer(words: list[str], label_names: list[str]) -> list[str]:
    """`label=word` pairs (any order), or one word per label in label order -> words in label order."""
    named = all("=" in word for word in words)
    mapping = dict(word.split("=", 1) for word in words) if named else dict(zip(label_names, words))
    missing = [name for name in label_names if name not in mapping]
    extra = [name for name in mapping if name not in label_names] if named else words[len(label_names):]
    if missing or extra:
        raise VerbalizerError(f"The verbalizer needs one word for each label ({', '.join(label_names)})"
                              + (f"; no word for {missing}" if missing else "")
                              + (f"; not labels of this task: {extra}" if extra else "")
                              + f". Write e.g. --verbalizer {' '.join(name + '=WORD' for name in label_names)}.")
    return [mapping[name] for name in label_names]


def demonstrations(pool: list[Example], shots: int, num_labels: int, seed: int, random_labels: bool = False
                   ) -> list[tuple[Example, int]]:
    """k examples per class (seeded, data.k_shot) with the label each demonstration shows.

    random_labels: the same examples in the same order, each label drawn uniformly from all
    labels (Min et al. 2022), so only the labels differ from the gold-label prompt.
    """
    chosen = k_shot(pool, shots, seed)
    rng = random.Random(seed)
    return [(example, rng.randrange(num_labels) if random_labels else example.label) for example in chosen]


def icl_template(template: str, demos: list[tuple[Example, int]], verbalizer: list[str]) -> str:
    """A template whose fixed part is the solved demonstrations, then the query's own template.

    A demonstration is the template filled with its text(s) and the label word it shows. Its braces
    are doubled, so that only the query's slots remain to be filled.
    """
    blocks = [template.format(text=example.text, text_pair=example.text_pair, mask=verbalizer[label])
              .replace("{", "{{").replace("}", "}}") for example, label in demos]
    return SEPARATOR.join(blocks + [template])


def longest_prompt(examples: list[Example], tokenizer: Tokenizer, template: str) -> int:
    """Tokens (special ones included) in the longest prompt that `template` makes from `examples`."""
    texts = [apply_template(template, example, tokenizer.mask_token) for example in examples]
    return int(tokenizer.encode(texts)["attention_mask"].sum(1).max())


def evaluate_splits(model: HardPrompt, tokenizer: Tokenizer, task: Task, device: torch.device,
                    splits: tuple[str, ...] = ("dev", "test")) -> dict[str, float]:
    """{"dev_metric": ..., "test_metric": ...} for the splits the task has. Prompts are never cut
    (a cut could remove the slot): one longer than the model reads is an error."""
    scores = {}
    for split in [split for split in splits if split in task.splits]:
        longest = longest_prompt(task.splits[split], tokenizer, model.template)
        if longest > tokenizer.model_max_length:
            raise ValueError(f"The longest prompt is {longest} tokens, but the model reads at most "
                             f"{tokenizer.model_max_length}: use fewer demonstrations (--shots) or a shorter template.")
        examples = batches(task.splits[split], tokenizer, 32, template=model.template)
        scores[f"{split}_metric"] = evaluate(model, examples, task.metric, device)
    return scores


def choose_variant(mode: str, backbone: Transformer, model_name: str) -> tuple[str, str]:
    """The variant that can run on this model, and why (printed and stored in results.json)."""
    if mode == "template-head":
        return mode, "asked for with --mode template-head"
    if backbone.has_lm_head:
        slot = "the next-token" if backbone.config.is_decoder else "the masked-LM"
        return mode, f"{model_name} has {slot} head, so the verbalizer's label words are scored directly"
    what = {"zero-shot": "zero-shot cloze scoring", "icl": "in-context learning with label words",
            "sensitivity": "zero-shot scoring of each template"}[mode]
    ran = "a template + trained head per template" if mode == "sensitivity" else "template + trained head"
    return ("sensitivity-template-head" if mode == "sensitivity" else "template-head",
            f"{model_name} has no masked-LM head, so {what} is impossible: ran {ran}")


def write_results(out: Path, record: dict) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(record, indent=2, default=str))
    return record


def in_context(model: HardPrompt, tokenizer: Tokenizer, task: Task, config: HardPromptConfig, args,
               device: torch.device) -> dict:
    """Zero-shot, gold-label demonstrations and random-label demonstrations, with the same examples."""
    pool, labels = task.splits["train"][: args.limit_train], len(task.label_names)
    conditions = {"zero-shot": [], "gold labels": demonstrations(pool, config.shots, labels, args.seed),
                  "random labels": demonstrations(pool, config.shots, labels, args.seed, random_labels=True)}
    results = {}
    for name, demos in conditions.items():
        model.template = icl_template(config.templates[0], demos, config.verbalizer)
        results[name] = {"prompt": model.template, **evaluate_splits(model, tokenizer, task, device)}
        print(f"{name:>13}: dev {task.metric} {100 * results[name]['dev_metric']:.2f}")
    return {"conditions": results, "dev_metric": results["gold labels"]["dev_metric"],
            "test_metric": results["gold labels"].get("test_metric")}


def train_template_head(args, task: Task, template: str, config: HardPromptConfig, variant: str, reason: str,
                        tokenizer: Tokenizer) -> dict:
    """Train the linear head with the shared runner; add which variant ran and why to its results.json."""
    # Prompts are not cut (a cut would drop the [MASK]): the limit grows to the longest prompt.
    examples = [e for split in ("train", "dev", "test") if split in task.splits for e in task.splits[split]]
    args.max_length = min(max(args.max_length, longest_prompt(examples, tokenizer, template)),
                          tokenizer.model_max_length)  # never past the position table
    build = lambda backbone, tokenizer, task, _: HardPrompt(backbone, tokenizer, len(task.label_names), template,
                                                            read=config.read)
    options = {**asdict(config), "template": template, "variant": variant, "max_length_used": args.max_length}
    record = run(args, f"hard_prompt_{variant}", build, options)
    record.update(variant=variant, variant_reason=reason, template=template)
    return write_results(Path(args.out), record)


def template_sensitivity(templates: list[str], dev: list[float], metric: str, out: Path, title: str) -> dict:
    """Mean, min, max and spread of the dev metric over templates; printed, and drawn as one bar each."""
    mean = sum(dev) / len(dev)
    for template, value in zip(templates, dev):
        print(f"  {100 * value:6.2f}  {template!r}")
    print(f"dev {metric} over {len(dev)} templates: mean {100 * mean:.2f}, min {100 * min(dev):.2f}, "
          f"max {100 * max(dev):.2f}, spread {100 * (max(dev) - min(dev)):.2f} points")
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.45 * len(templates)))
    ax.barh(range(len(templates)), [100 * value for value in dev])
    one_line = [t.replace("\n", " ") for t in templates]
    ax.set_yticks(range(len(templates)), [t if len(t) <= 60 else t[:57] + "..." for t in one_line], fontsize=8)
    ax.invert_yaxis()  # the first template on top
    ax.axvline(100 * mean, color="gray", linestyle="--", label=f"mean {100 * mean:.1f}")
    for row, value in enumerate(dev):
        ax.text(100 * value, row, f" {100 * value:.1f}", va="center", fontsize=8)
    ax.set(xlabel=f"dev {metric} (%)", title=title, xlim=(0, 105))
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "template_sensitivity.png", dpi=120)
    plt.close(fig)
    return {"templates": [{"template": t, "dev_metric": d} for t, d in zip(templates, dev)], "dev_metric": mean,
            "dev_metric_is": "mean over templates", "mean": mean, "min": min(dev), "max": max(dev),
            "spread": max(dev) - min(dev)}


def main(argv: list[str] | None = None) -> dict:
    parser = common_parser(__doc__, lr=5e-3)
    parser.add_argument("--mode", choices=MODES, default="zero-shot", help="which variant to run (see above)")
    parser.add_argument("--template", action="append", default=None, help="a template with {text} ({text_pair} "
                        "for pairs) and one {mask}, e.g. '{text} It was {mask}.'; repeat it for sensitivity "
                        "(default: the task's templates)")
    parser.add_argument("--verbalizer", nargs="+", default=None, help="label words: label=word pairs, or one "
                        "word per label in order (default: the task's)")
    parser.add_argument("--shots", type=positive_int, default=4, help="icl: demonstrations per class")
    parser.add_argument("--read", choices=READS, default="mask", help="template-head: the linear head reads the "
                        "[MASK] position (last token for GPT-2), [CLS] through the pooler, or the mean of tokens")
    args = parser.parse_args(argv)
    if args.mode != "sensitivity" and len(args.template or []) > 1:
        parser.error(f"--mode {args.mode} uses one template; give several --template only with --mode sensitivity.")
    set_seed(args.seed)
    device = get_device(args.device)
    backbone, tokenizer = load_pretrained(args.model, device=device)
    task = load_task(args.task, args.data_dir)
    if task.kind not in ("classification", "pair"):
        raise ValueError(f"Hard prompts classify sentences or pairs; task {task.name} is {task.kind}.")
    templates = [check_template(t, pair=task.kind == "pair") for t in args.template or task.templates]
    verbalizer = parse_verbalizer(args.verbalizer, task.label_names) if args.verbalizer else task.verbalizer
    config = HardPromptConfig(args.mode, templates, verbalizer, args.shots, args.read)
    variant, reason = choose_variant(args.mode, backbone, args.model)
    print(f"variant: {variant} ({reason})")
    out = Path(args.out or f"runs/hard_prompt_{variant}-{task.name}")
    args.out = str(out)
    if variant == "template-head":
        return train_template_head(args, task, templates[0], config, variant, reason, tokenizer)

    record = {"method": f"hard_prompt_{variant}", "variant": variant, "variant_reason": reason,
              "model": args.model, "task": task.name, "task_is_builtin": task.is_builtin,
              "options": {**vars(args), **asdict(config)}, "metric": task.metric, "device": str(device),
              "date": datetime.datetime.now().isoformat(timespec="seconds")}
    title = f"template sensitivity: {Path(args.model).name} on {task.name}"
    if variant == "sensitivity-template-head":  # one trained head per template, each in its own folder
        runs = [train_template_head(argparse.Namespace(**{**vars(args), "out": str(out / f"template{i}")}),
                                    task, template, config, variant, reason, tokenizer)
                for i, template in enumerate(templates)]
        record.update(trainable_params=runs[0]["trainable_params"], total_params=runs[0]["total_params"],
                      **template_sensitivity(templates, [r["dev_metric"] for r in runs], task.metric, out, title))
        return write_results(out, record)

    model = HardPrompt(backbone, tokenizer, len(task.label_names), templates[0], verbalizer).to(device)
    record.update(zip(("trainable_params", "total_params"), count_parameters(model)))
    if variant == "zero-shot":
        record.update(template=templates[0], **evaluate_splits(model, tokenizer, task, device))
        print(f"zero-shot: dev {task.metric} {100 * record['dev_metric']:.2f} with {templates[0]!r}")
    elif variant == "icl":
        record.update(in_context(model, tokenizer, task, config, args, device))
    else:
        dev = []
        for template in templates:  # the same frozen model, one template after the other
            model.template = template
            dev.append(evaluate_splits(model, tokenizer, task, device, ("dev",))["dev_metric"])
        record.update(template_sensitivity(templates, dev, task.metric, out, title))
    write_results(out, record)
    print(f"wrote {out}/results.json")
    return record


if __name__ == "__main__":
    main()
