"""Hard (discrete) prompts: a human-written template turns a task into the model's own game.

PET (Schick & Schütze 2021) wraps the input x in a cloze template, T(x) = "x It was [MASK].",
and scores each label y by the masked-LM logit of its label word v(y) (the verbalizer) at [MASK]:

    p(y | x) = softmax_y  s( v(y) | T(x) ),   s = the LM's logit of a word at the slot

GPT-2 has no [MASK]: the prompt stops before the slot and v(y) is scored as the *next* token.
An encoder-decoder (T5, FLAN-T5, BART) reads the prompt up to the slot (an instruction, for
FLAN-T5) and its decoder scores each label word as the whole answer (methods/shared/text_to_text.py).
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

import random
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from data import Example, Task, batches, check_template, k_shot, load_task
from data.prompts import check_fits, longest_prompt, parse_verbalizer  # noqa: F401 (parse_verbalizer: re-exported)
from minitransformer import Tokenizer, Transformer

from methods.shared.distributed import is_main, say
from methods.shared.heads import TaskHead, freeze
from methods.shared.options import option, positive_int
from methods.shared.pipeline import (Loaded, RunOptions, RunRecord, command_line, load_backbone, output_dir,
                                     parse_command_line, run, summary_record, usage_error, write_record)
from methods.shared.plots import plot_template_scores
from methods.shared.prompting import read_positions
from methods.shared.text_to_text import LabelTargets, is_encoder_decoder, label_scores
from methods.shared.training import evaluate

MODES = ("zero-shot", "icl", "sensitivity", "template-head")
READS = ("mask", "cls", "mean")  # template-head: the [MASK]/slot position, [CLS] through the pooler, mean of tokens
SEPARATOR = "\n\n"               # between in-context demonstrations
DEFAULT_LR = 5e-3                # template-head: only a linear head on a frozen model trains


@dataclass
class HardPromptConfig:
    mode: str = option("zero-shot", "which variant to run (see above)", choices=MODES)
    templates: list[str] | None = option(None, "a template with {text} ({text_pair} for pairs) and one {mask}, e.g. "
                                         "'{text} It was {mask}.'; repeat it for sensitivity (default: the task's "
                                         "templates; the other modes use the first)", flag="--template", repeat=True)
    verbalizer: list[str] | None = option(None, "label words: label=word pairs, or one word per label in order "
                                          "(default: the task's)")
    shots: int = option(4, "icl: demonstrations per class", type=positive_int)
    read: str = option("mask", "template-head: the linear head reads the [MASK] position (last token for GPT-2), "
                       "[CLS] through the pooler, or the mean of tokens", choices=READS)

    @property
    def default_lr(self) -> float:
        return DEFAULT_LR


class HardPrompt(nn.Module):
    """A frozen model behind a text template; logits from the verbalizer, or from a trained linear head.

    Input: a batch built with `self.template` (the pipeline does that). Output: logits [B, C].
    zero-shot, icl and sensitivity score the label words with the LM head; template-head trains
    only a linear head on the frozen model, reading where `config.read` says.
    """

    def __init__(self, backbone: Transformer, tokenizer: Tokenizer, num_labels: int, config: HardPromptConfig,
                 task_kind: str = "classification", verbalizer: list[str] | None = None):
        super().__init__()
        if config.mode not in MODES:
            raise ValueError(f"Unknown mode {config.mode!r}; choose one of {', '.join(MODES)}.")
        if config.read not in READS:
            raise ValueError(f"Unknown read {config.read!r}; choose one of {', '.join(READS)}.")
        if task_kind not in ("classification", "pair"):
            raise ValueError(f"Hard prompts classify sentences or pairs, not {task_kind!r} tasks.")
        if not config.templates:
            raise ValueError("A hard prompt needs a template (config.templates, e.g. the task's); "
                             "HardPrompt.for_task fills in the task's own.")
        self.backbone, self.config, self.template = freeze(backbone), config, config.templates[0]
        self.is_decoder, self.mask_id, self.prompt_length = backbone.config.is_decoder, tokenizer.mask_id, 0
        self.read = config.read if config.mode == "template-head" else None
        self.seq2seq = is_encoder_decoder(backbone)
        self.saved_contents = f"the linear head (read={self.read}), if any; the template is in method.json"
        if self.seq2seq:  # the encoder reads the prompt up to the slot, the decoder scores each label word
            if self.read is not None:
                raise ValueError("--mode template-head trains a head on an encoder's hidden state; an encoder-decoder "
                                 "has an LM head that scores the label words directly: use zero-shot, icl or "
                                 "sensitivity.")
            self.head, self.targets = None, LabelTargets(tokenizer, config.verbalizer or verbalizer, num_labels)
            return
        if self.read is None:
            self.head = TaskHead(backbone, tokenizer, num_labels, "verbalizer", config.verbalizer or verbalizer)
        elif self.read == "cls":  # the same head as fine_tuning's head-only probe: only the template differs
            self.head = TaskHead(backbone, tokenizer, num_labels, "classifier")
        else:
            self.dropout, self.linear = nn.Dropout(0.1), nn.Linear(backbone.config.hidden_size, num_labels)
            nn.init.normal_(self.linear.weight, std=0.02)
            nn.init.zeros_(self.linear.bias)

    @classmethod
    def for_task(cls, backbone: Transformer, tokenizer: Tokenizer, task, config: HardPromptConfig) -> "HardPrompt":
        """Built for a task: its templates and label words unless the config names its own (checked)."""
        config = with_task_prompts(config, task)
        return cls(backbone, tokenizer, len(task.label_names), config, task.kind, task.verbalizer)

    def forward(self, batch: dict) -> torch.Tensor:
        if self.seq2seq:  # [B, C]: each label word's log-likelihood as the decoder's answer
            encoded = self.backbone.encode(batch["input_ids"], batch["attention_mask"])
            return label_scores(self.backbone, self.targets, encoded, batch["attention_mask"])
        hidden = self.backbone(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))  # (B, T, H)
        if self.read in (None, "cls"):  # the label words at the slot, or [CLS] / the last token
            kind = "verbalizer" if self.read is None else "classifier"
            return self.head(hidden, read_positions(kind, batch["input_ids"], batch["attention_mask"],
                                                    self.is_decoder, self.mask_id))
        if self.read == "mask":  # where the label word goes: the [MASK] (encoder) or the last real token (decoder)
            slot = read_positions("verbalizer", batch["input_ids"], batch["attention_mask"], self.is_decoder,
                                  self.mask_id)
            picked = hidden[torch.arange(hidden.shape[0], device=hidden.device), slot]  # (B, H)
        else:  # mean over real tokens, the pooling all-MiniLM-L6-v2 was trained with
            weights = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            picked = (hidden * weights).sum(1) / weights.sum(1)  # (B, H)
        return self.linear(self.dropout(picked))  # (B, C)


def with_task_prompts(config: HardPromptConfig, task) -> HardPromptConfig:
    """The config with the task's templates and label words where it names none; its own are checked."""
    if task.kind not in ("classification", "pair"):
        raise ValueError(f"Hard prompts classify sentences or pairs, not {task.kind!r} tasks.")
    templates = [check_template(t, pair=task.kind == "pair") for t in config.templates or task.templates]
    verbalizer = parse_verbalizer(config.verbalizer, task.label_names) if config.verbalizer else list(task.verbalizer)
    return replace(config, templates=templates, verbalizer=verbalizer)


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


def evaluate_splits(model: HardPrompt, tokenizer: Tokenizer, task: Task, device: torch.device,
                    splits: tuple[str, ...] = ("dev", "test")) -> dict[str, float]:
    """{"dev_metric": ..., "test_metric": ...} for the splits the task has, prompts never cut (see scoring_options)."""
    scores = {}
    for split in [split for split in splits if split in task.splits]:
        check_fits(longest_prompt(task.splits[split], tokenizer, model.template), tokenizer)
        examples = batches(task.splits[split], tokenizer, 32, template=model.template)
        scores[f"{split}_metric"] = evaluate(model, examples, task.metric, device)
    return scores


def scoring_options(options: RunOptions, task: Task, tokenizer: Tokenizer, template: str) -> RunOptions:
    """Options under which no scored prompt is cut; one longer than the model reads is an error instead."""
    scored = [e for split in ("dev", "test") if split in task.splits for e in task.splits[split]]
    longest = longest_prompt(scored, tokenizer, template)
    check_fits(longest, tokenizer)
    return replace(options, max_length=max(options.max_length, longest))


def training_options(options: RunOptions, task: Task, tokenizer: Tokenizer, template: str) -> RunOptions:
    """Options for training a head behind a template: the length limit grows to the longest prompt (never past the
    position table); a longer one is shortened by fit_template, which keeps its [MASK]."""
    examples = [e for split in ("train", "dev", "test") if split in task.splits for e in task.splits[split]]
    longest = longest_prompt(examples, tokenizer, template)
    return replace(options, max_length=min(max(options.max_length, longest), tokenizer.model_max_length))


def choose_variant(mode: str, backbone: Transformer, model_name: str) -> tuple[str, str]:
    """The variant that can run on this model, and why (printed and stored in results.json)."""
    if mode == "template-head":
        return mode, "asked for with --mode template-head"
    if backbone.has_lm_head:
        slot = "the next-token" if backbone.config.is_decoder else "a decoder's" if is_encoder_decoder(backbone) \
            else "the masked-LM"
        return mode, f"{model_name} has {slot} head, so the verbalizer's label words are scored directly"
    what = {"zero-shot": "zero-shot cloze scoring", "icl": "in-context learning with label words",
            "sensitivity": "zero-shot scoring of each template"}[mode]
    ran = "a template + trained head per template" if mode == "sensitivity" else "template + trained head"
    return ("sensitivity-template-head" if mode == "sensitivity" else "template-head",
            f"{model_name} has no masked-LM head, so {what} is impossible: ran {ran}")


def template_sensitivity(templates: list[str], dev: list[float], metric: str, out: Path, title: str) -> dict:
    """Mean, min, max and spread of the dev metric over templates; printed, and drawn as one bar each."""
    mean = sum(dev) / len(dev)
    for template, value in zip(templates, dev):
        say(f"  {100 * value:6.2f}  {template!r}")
    say(f"dev {metric} over {len(dev)} templates: mean {100 * mean:.2f}, min {100 * min(dev):.2f}, "
          f"max {100 * max(dev):.2f}, spread {100 * (max(dev) - min(dev)):.2f} points")
    if is_main():
        plot_template_scores(templates, dev, metric, out / "template_sensitivity.png", title)
    return {"templates": [{"template": t, "dev_metric": d} for t, d in zip(templates, dev)], "dev_metric": mean,
            "dev_metric_is": "mean over templates", "mean": mean, "min": min(dev), "max": max(dev),
            "spread": max(dev) - min(dev)}


def in_context(config: HardPromptConfig, options: RunOptions, loaded: Loaded, task: Task, out: Path,
               details: dict) -> RunRecord:
    """Zero-shot, gold-label demonstrations and random-label demonstrations, with the same examples."""
    pool, labels = task.splits["train"][: options.limit_train], len(task.label_names)
    conditions = {"zero-shot": [], "gold labels": demonstrations(pool, config.shots, labels, options.seed),
                  "random labels": demonstrations(pool, config.shots, labels, options.seed, random_labels=True)}
    records, results = [], {}
    for name, demos in conditions.items():
        prompt = icl_template(config.templates[0], demos, config.verbalizer)
        scored = scoring_options(replace(options, out=str(out / name.replace(" ", "_"))), task, loaded.tokenizer, prompt)
        records.append(run(replace(config, templates=[prompt]), scored, loaded)[1])
        scores = {"dev_metric": records[-1].dev_metric, "test_metric": records[-1].test_metric}
        results[name] = {"prompt": prompt, **{k: v for k, v in scores.items() if v is not None}}
        say(f"{name:>13}: dev {task.metric} {100 * results[name]['dev_metric']:.2f}")
    gold = results["gold labels"]
    return summary_record(records, config, gold["dev_metric"], gold.get("test_metric"), {**details, "conditions": results})


def sensitivity(config: HardPromptConfig, options: RunOptions, loaded: Loaded, task: Task, out: Path,
                details: dict, train_heads: bool) -> RunRecord:
    """Every template on the same loaded model: scored zero-shot, or (no LM head) with a head trained for each."""
    records = []
    for i, template in enumerate(config.templates):
        one = replace(config, templates=[template], mode="template-head" if train_heads else "zero-shot")
        choose = training_options if train_heads else scoring_options
        scored = choose(replace(options, out=str(out / f"template{i}"), skip_test=True), task, loaded.tokenizer,
                        template)
        records.append(run(one, scored, loaded)[1])
        if records[-1].outcome != "finished":  # interrupted or diverged: the experiment stops with it
            return records[-1]
    title = f"template sensitivity: {Path(options.model).name} on {task.name}"
    summary = template_sensitivity(config.templates, [r.dev_metric for r in records], task.metric, out, title)
    return summary_record(records, config, summary.pop("dev_metric"), None, {**details, **summary})


def run_hard_prompt(config: HardPromptConfig, options: RunOptions) -> RunRecord:
    """The variant of `config.mode` that this model can run, on one loaded backbone; results in OUT/results.json."""
    loaded = load_backbone(options)
    variant, reason = choose_variant(config.mode, loaded.backbone, options.model)
    say(f"variant: {variant} ({reason})")
    task = load_task(options.task, options.data_dir)
    config = with_task_prompts(config, task)
    out = output_dir(options, config, task.name)
    details = {"variant": variant, "variant_reason": reason}
    if variant in ("sensitivity", "sensitivity-template-head"):
        record = sensitivity(config, options, loaded, task, out, details, variant != "sensitivity")
    elif variant == "icl":
        record = in_context(config, options, loaded, task, out, details)
    else:  # zero-shot, template-head: one run
        choose = training_options if variant == "template-head" else scoring_options
        run_options = replace(choose(options, task, loaded.tokenizer, config.templates[0]), out=str(out))
        return run(replace(config, mode=variant), run_options, loaded, {**details, "template": config.templates[0]})[1]
    say(f"wrote {write_record(out, record)}")
    return record


def main(argv: list[str] | None = None):
    config, options = parse_command_line(HardPromptConfig, __doc__, argv)
    if config.mode != "sensitivity" and len(config.templates or []) > 1:
        usage_error(f"--mode {config.mode} uses one template; give several --template only with --mode sensitivity.")
    return run_hard_prompt(config, options)


if __name__ == "__main__":
    command_line(main)
