"""Prompt tuning: a few trainable "virtual tokens" in front of the input, nothing else changes.

Lester, Al-Rfou & Constant 2021, "The Power of Scale for Parameter-Efficient Prompt Tuning".
The pretrained model stays frozen. A soft prompt P = [p_1 .. p_n], n vectors in the
model's embedding space (n x H numbers), goes in front of the input's token embeddings,
and only P (plus the small task head) is trained:

    h  = f_frozen([p_1, ..., p_n ; e(x_1), ..., e(x_T)])        (B, n + T, H)
    P* = argmin_P  L(head(h), y)

The prompt is an ordinary part of the input: it takes positions 0..n-1, the attention
mask gets ones for it, and every real token moves n places to the right, so the head
reads [CLS], the [MASK] or the last token at its usual position + n (read_positions' offset).
Initialisation matters for small models (Lester, section 3.2): random vectors, the
embeddings of sampled vocabulary words, of a text, or of the label words.
`nearest_tokens()` lists the vocabulary words closest (cosine) to each learned vector,
Lester's look at what a soft prompt "says".

    python methods/prompt_tuning.py --task sst2 --num-virtual-tokens 20 --init vocab
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from data.prompts import label_word
from minitransformer import Tokenizer, Transformer

from methods.shared.distributed import say
from methods.shared.heads import TaskHead, freeze
from methods.shared.options import option, positive_int
from methods.shared.pipeline import command_line, parse_command_line, run
from methods.shared.prompting import choose_head, encode_with_prompt, for_task, read_positions, run_with_prompt
from methods.shared.text_to_text import LabelTargets, is_encoder_decoder, label_scores, text_to_text_head

INITS = ("random", "vocab", "text", "labels")
# Prompt vectors are input embeddings: they need steps about 100x those of fine-tuning.
# With our warm-up + linear decay the mean step is half the peak, hence above peft's constant 3e-2.
DEFAULT_LR = 3e-2
PREFERS_LABEL_WORDS = True  # Lester et al. score label words (T5 text-to-text); with an LM head, so do we


@dataclass
class PromptTuningConfig:
    num_virtual_tokens: int = option(20, "length n of the soft prompt", type=positive_int)
    init: str = option("vocab", "how the prompt starts (see initial_prompt)", choices=INITS, training_only=True)
    init_text: str | None = option(None, "for --init text: the text whose embeddings start the prompt",
                                   training_only=True)
    head: str = option("auto", "task head (auto: the label words when the model has an LM head, a token head "
                       "for tagging, else a classifier on [CLS] / the last token)",
                       choices=("auto", "classifier", "verbalizer", "token"))
    template: str | None = option(None, "text template around the input, with the {mask} where a verbalizer "
                                  "reads the label word (default: the task's first, when the head is a verbalizer)")

    @property
    def default_lr(self) -> float:
        return DEFAULT_LR


def word_token_ids(tokenizer: Tokenizer) -> list[int]:
    """Ids of whole English-alphabet words: no special tokens, [unused] slots, ##pieces, punctuation or CJK."""
    ids = []
    for token, index in tokenizer.backend.get_vocab().items():
        if tokenizer.is_byte_level:  # byte-level BPE marks a word start with "Ġ" (its leading space)
            token = token[1:] if token.startswith("Ġ") else ""
        elif tokenizer.is_sentencepiece:  # SentencePiece (T5) marks it with "▁"
            token = token[1:] if token.startswith("▁") else ""
        if token.isascii() and token.isalpha():
            ids.append(index)
    if not ids:
        raise ValueError("The tokenizer's vocabulary has no whole-word tokens to sample from; use --init random.")
    return sorted(ids)


def text_token_ids(text: str, tokenizer: Tokenizer) -> list[int]:
    """Token ids of `text`; a word the vocabulary cannot spell ([UNK]) is an error, not a silent vector."""
    encoding = tokenizer.backend.encode(text, add_special_tokens=False)
    unknown = [text[start:end] for index, (start, end) in zip(encoding.ids, encoding.offsets)
               if index == tokenizer.unk_id]
    if unknown:
        raise ValueError(f"The init text has words the tokenizer only knows as {tokenizer.unk_token}: {unknown}. "
                         "Their vectors would all be the same [UNK] embedding; reword the text.")
    if not encoding.ids:
        raise ValueError("The init text is empty: give --init-text some words (e.g. 'Classify the sentiment').")
    return encoding.ids


def initial_prompt(backbone: Transformer, tokenizer: Tokenizer, config: PromptTuningConfig,
                   verbalizer: list[str] | None = None) -> torch.Tensor:
    """The starting prompt (n, H). Lester found vocabulary and label-word starts far better than random ones.

    random: Gaussian with the spread of the real word vectors; vocab: embeddings of random
    whole words; text: a text's token embeddings, repeated or cut to n (as peft does);
    labels: the label words (a multi-token word averaged), the rest sampled words.
    """
    embeddings = backbone.word_embeddings.weight.detach()   # (V, H)
    n = config.num_virtual_tokens
    if config.init == "random":
        # The word vectors' own scale: a prompt much larger would drown the input, much smaller would vanish.
        return torch.randn(n, embeddings.shape[1], device=embeddings.device) * embeddings.std()
    words = torch.tensor(word_token_ids(tokenizer), device=embeddings.device)
    sampled = embeddings[words[torch.randint(len(words), (n,), device=embeddings.device)]]  # (n, H)
    if config.init == "vocab":
        return sampled.clone()
    if config.init == "text":
        if config.init_text is None:
            raise ValueError("--init text needs --init-text, e.g. --init-text 'Is this review positive?'")
        ids = text_token_ids(config.init_text, tokenizer)
        ids = (ids * (n // len(ids) + 1))[:n]
        return embeddings[torch.tensor(ids, device=embeddings.device)].clone()
    if config.init == "labels":
        if not verbalizer:
            raise ValueError("--init labels needs label words, and this task has no verbalizer; use --init vocab.")
        labels = [embeddings[text_token_ids(label_word(word, tokenizer), tokenizer)].mean(0) for word in verbalizer]
        return torch.cat([torch.stack(labels), sampled], dim=0)[:n].clone()
    raise ValueError(f"Unknown init {config.init!r}; choose one of {', '.join(INITS)}.")


class PromptTuning(nn.Module):
    """A frozen backbone reading n trainable virtual tokens before its input, and a task head.

    Input: a batch dict (input_ids, attention_mask, token_type_ids [B, T]).
    Output: logits [B, C] (classifier, verbalizer) or [B, T, C] (token head).
    """

    def __init__(self, backbone: Transformer, tokenizer: Tokenizer, num_labels: int, config: PromptTuningConfig,
                 task_kind: str = "classification", verbalizer: list[str] | None = None):
        super().__init__()
        if config.num_virtual_tokens < 1:
            raise ValueError(f"num_virtual_tokens must be at least 1, got {config.num_virtual_tokens}.")
        self.backbone, self.tokenizer, self.config = freeze(backbone), tokenizer, config
        self.virtual_tokens = nn.Parameter(initial_prompt(backbone, tokenizer, config, verbalizer))  # (n, H)
        self.prompt_length = config.num_virtual_tokens  # positions taken in front of the input
        self.saved_contents = ("the soft prompt (virtual_tokens) and the task head: everything needed to "
                               "resume training and to deploy")
        if is_encoder_decoder(backbone):  # T5 as Lester et al.: the prompt before the encoder's input,
            text_to_text_head(config.head, task_kind)  # the label word written by the decoder
            self.head, self.template = None, None
            self.targets = LabelTargets(tokenizer, verbalizer, num_labels)
            return
        kind = choose_head(config.head, task_kind, backbone, verbalizer, PREFERS_LABEL_WORDS)
        self.head = TaskHead(backbone, tokenizer, num_labels, kind, verbalizer)
        # The text the batches are built from: a verbalizer reads the template's [MASK] (for_task gives it the
        # task's); without one the input itself must hold the [MASK] (or, on GPT-2, end where the label goes).
        self.template = config.template if kind == "verbalizer" else None

    @classmethod
    def for_task(cls, backbone: Transformer, tokenizer: Tokenizer, task, config: PromptTuningConfig) -> "PromptTuning":
        """Built for a task (a data.Task or TaskSpec): its labels and label words, its template for a verbalizer."""
        config = for_task(config, task, backbone, PREFERS_LABEL_WORDS)
        return cls(backbone, tokenizer, len(task.label_names), config, task.kind, task.verbalizer)

    def forward(self, batch: dict) -> torch.Tensor:
        if self.head is None:  # encoder-decoder: [B, C] log-likelihoods of the label words (rank classification)
            encoded, mask = encode_with_prompt(self.backbone, self.virtual_tokens, batch)
            return label_scores(self.backbone, self.targets, encoded, mask)
        hidden = run_with_prompt(self.backbone, self.virtual_tokens, batch)  # (B, n+T, H): the input moved n places
        n = self.config.num_virtual_tokens
        if self.head.kind == "token":
            return self.head(hidden[:, n:])  # (B, T, C): the real tokens only
        return self.head(hidden, read_positions(self.head.kind, batch["input_ids"], batch["attention_mask"],
                                                self.backbone.config.is_decoder, self.tokenizer.mask_id, offset=n))

    @torch.no_grad()
    def nearest_tokens(self, k: int = 5) -> list[list[str]]:
        """For each virtual token, the k whole words whose embeddings are closest in cosine similarity."""
        candidates = torch.tensor(word_token_ids(self.tokenizer), device=self.virtual_tokens.device)
        words = F.normalize(self.backbone.word_embeddings.weight[candidates], dim=-1)  # (V', H)
        prompt = F.normalize(self.virtual_tokens, dim=-1)                              # (n, H)
        best = (prompt @ words.T).topk(min(k, len(candidates)), dim=-1).indices        # (n, k)
        return [[self.tokenizer.decode([int(candidates[i])]).strip() for i in row] for row in best]


def main(argv: list[str] | None = None):
    config, options = parse_command_line(PromptTuningConfig, __doc__, argv)
    model, record = run(config, options)
    for i, words in enumerate(model.nearest_tokens()):
        say(f"virtual token {i:2d} is nearest to: {', '.join(words)}")
    return record


if __name__ == "__main__":
    command_line(main)
