"""P-tuning: prompt vectors made by a small prompt encoder, placed by a template around the input.

Liu, Zheng, Du, Ding, Qian, Yang & Tang 2021, "GPT Understands, Too".
Prompt tuning trains the prompt vectors directly. P-tuning trains m pseudo-token
embeddings e_1..e_m and a prompt encoder g that turns them into the prompt vectors
the frozen model reads, so the vectors are tied together (the bi-LSTM makes each
depend on its neighbours), which the paper found trains faster and more stably:

    h_1..h_m = g(e_1..e_m),   g = MLP(biLSTM(e)) (paper) | MLP(e) (peft's default) | identity
    input    = template(h, x), e.g.  [CLS] h_1 h_2 h_3  x  h_4 h_5 h_6  [MASK]  h_7 h_8 h_9 [SEP]

Only the e_i, the encoder and the task head train; the backbone is frozen. Training
done, g can be run once and its m x H output kept instead (as prefix tuning's eject).

Template syntax (--template); anything outside a slot is anchor text, tokenized as is:
    {p:N}        N prompt vectors (numbered on across the template)
    {text}       the input's tokens (for a pair task without {text_pair}: the pair as the
                 tokenizer joins it, separator included)
    {text_pair}  the second sentence of a pair task (encoders): the template replaces the separator
    {mask}       the mask token, read by the verbalizer head. GPT-2 has none: the template is cut
                 before it and the label is the next word, so nothing may follow but prompts.
An encoder's [CLS] and final [SEP] stay around the whole.
Prompt vectors and anchors take the token type of the token before them.
--shape a,b,c is the paper's shorthand for "{p:a} {text} {p:b} {mask} {p:c}".
--layout prefix is peft's layout instead: all N prompt vectors before the tokenizer's
whole output, [CLS] included.

Where a classifier reads (--read): on an encoder, by default the first prompt vector's output,
which sees the whole input and which the encoder writes directly (with --layout prefix, position
0, the one peft's BertForSequenceClassification pools: the same logits, tested); "input" reads
[CLS] (GPT-2: its last token, always). Compared on MiniLM + SST-2 in results/p_tuning_read.

    python methods/p_tuning.py --task sst2 --template "{p:10} {text} {p:10}" --encoder mlp
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from minitransformer import Tokenizer, Transformer

from methods.shared.heads import TaskHead, freeze
from methods.shared.options import option, positive_int
from methods.shared.pipeline import command_line, parse_command_line, run
from methods.shared.prompting import (check_position_budget, choose_head, encode_with_prompt, for_task,  # noqa: F401
                                      parse_template, read_positions, run_with_prompt, shape_template)
from methods.shared.text_to_text import LabelTargets, is_encoder_decoder, label_scores, text_to_text_head

ENCODERS = ("lstm", "mlp", "none")
LAYOUTS = ("template", "prefix")
READS = ("auto", "prompt", "input")
DEFAULT_TEMPLATE = "{p:10} {text} {p:10}"
DEFAULT_LR = 3e-2  # above peft's constant 1e-2: our schedule decays to 0 (the sweep: results/p_tuning_read)
PREFERS_LABEL_WORDS = True  # the paper reads label words at the [MASK] of its templates


@dataclass
class PTuningConfig:
    template: str | None = option(None, f"where the prompt vectors go (syntax above; default {DEFAULT_TEMPLATE!r}); "
                                  "layout prefix: the text around the input, its {mask} for a verbalizer")
    shape: str | None = option(None, "the paper's shorthand a,b,c for '{p:a} {text} {p:b} {mask} {p:c}' "
                               "(sets the template)")
    encoder: str = option("mlp", "prompt encoder: bi-LSTM + MLP, MLP, or none", choices=ENCODERS)
    encoder_hidden: int = option(128, "width of the encoder's hidden layers (LSTM: per direction)", type=positive_int)
    layout: str = option("template", "template: the vectors go where the template says; prefix: peft's layout, "
                         "all --num-virtual-tokens vectors before [CLS]", choices=LAYOUTS)
    num_virtual_tokens: int = option(20, "layout prefix: how many prompt vectors", type=positive_int)
    head: str = option("auto", "auto: label words with an LM head and a {mask}, else a classifier (see --read)",
                       choices=("auto", "classifier", "verbalizer"))
    read: str = option("auto", "where a classifier reads: prompt: the first prompt vector (encoders); input: [CLS] "
                       "(GPT-2: the last token); auto: prompt on an encoder, input on GPT-2", choices=READS)

    def __post_init__(self):
        if self.shape is not None:
            self.template = shape_template(self.shape)
        elif self.template is None and self.layout == "template":
            self.template = DEFAULT_TEMPLATE

    @property
    def default_lr(self) -> float:
        return DEFAULT_LR


class PromptEncoder(nn.Module):
    """m trainable pseudo-token embeddings -> m prompt vectors (m, H), run once per step.

    lstm: a 2-layer bi-LSTM then Linear-ReLU-Linear (the paper's; peft's LSTM type);
    mlp:  Linear-ReLU-Linear-ReLU-Linear (peft's MLP type); none: the embeddings themselves.
    """

    def __init__(self, num_tokens: int, hidden_size: int, kind: str = "mlp", encoder_hidden: int = 128,
                 embedding_std: float = 1.0):
        super().__init__()
        if kind not in ENCODERS:
            raise ValueError(f"Unknown prompt encoder {kind!r}; choose one of {', '.join(ENCODERS)}.")
        H, h = hidden_size, encoder_hidden
        # N(0, 1) inputs, as nn.Embedding (the paper's code and peft) give the encoder; without an
        # encoder they are the prompt itself and start at the word vectors' scale instead.
        std = 1.0 if kind != "none" else embedding_std
        self.pseudo_tokens = nn.Parameter(torch.randn(num_tokens, H) * std)  # (m, H)
        self.lstm = nn.LSTM(H, h, num_layers=2, bidirectional=True, batch_first=True) if kind == "lstm" else None
        if kind == "lstm":
            self.mlp = nn.Sequential(nn.Linear(2 * h, 2 * h), nn.ReLU(), nn.Linear(2 * h, H))
        elif kind == "mlp":
            self.mlp = nn.Sequential(nn.Linear(H, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, H))
        else:
            self.mlp = nn.Identity()

    def forward(self) -> torch.Tensor:
        x = self.pseudo_tokens                                  # (m, H)
        if self.lstm is not None:
            x = self.lstm(x.unsqueeze(0))[0].squeeze(0)         # (m, 2h): each vector sees both neighbours
        return self.mlp(x)                                      # (m, H)


class PTuning(nn.Module):
    """A frozen backbone reading prompt-encoder vectors placed by a template, and a task head.

    Input: a batch dict (input_ids, attention_mask, token_type_ids [B, T]) of the plain input.
    Output: logits [B, C].
    """

    def __init__(self, backbone: Transformer, tokenizer: Tokenizer, num_labels: int, config: PTuningConfig,
                 task_kind: str = "classification", verbalizer: list[str] | None = None):
        super().__init__()
        for name, value, allowed in ("layout", config.layout, LAYOUTS), ("read position", config.read, READS):
            if value not in allowed:
                raise ValueError(f"Unknown {name} {value!r}; choose one of {', '.join(allowed)}.")
        if task_kind not in ("classification", "pair"):
            raise ValueError(f"P-tuning here classifies sentences or pairs, not {task_kind!r} tasks; for tagging "
                             "use prompt_tuning.py or p_tuning_v2.py.")
        self.backbone, self.tokenizer, self.config = freeze(backbone), tokenizer, config
        self.is_decoder = backbone.config.is_decoder
        self.seq2seq = is_encoder_decoder(backbone)  # T5 / BART: the vectors go into the encoder's input
        if config.layout == "template":
            self.pieces = parse_template(config.template, tokenizer, self.is_decoder, task_kind == "pair")
            if self.seq2seq:  # the decoder writes the label word: a {mask} has nothing to mark
                self.pieces = [piece for piece in self.pieces if piece[0] != "mask"]
            num_prompts = sum(piece[2] for piece in self.pieces if piece[0] == "prompt")
        else:
            if config.num_virtual_tokens < 1:
                raise ValueError(f"--num-virtual-tokens must be at least 1, got {config.num_virtual_tokens}.")
            if "{p:" in (config.template or ""):
                raise ValueError(f"In the prefix layout all prompt vectors go first: --template is the text around "
                                 f"the input (with {{mask}}), without {{p:N}} slots; got {config.template!r}.")
            num_prompts = config.num_virtual_tokens
        embedding_std = float(backbone.word_embeddings.weight.std())
        self.prompt_encoder = PromptEncoder(num_prompts, backbone.config.hidden_size, config.encoder,
                                            config.encoder_hidden, embedding_std)
        self.prompt_length = num_prompts  # positions the prompt vectors take beside the input's own
        self.saved_contents = "the pseudo-token embeddings, the prompt encoder and the task head"
        if self.seq2seq:
            text_to_text_head(config.head, task_kind)
            self.head, self.template, self.read_prompt = None, None, False
            self.targets = LabelTargets(tokenizer, verbalizer, num_labels)
            return
        kind = choose_head(config.head, task_kind, backbone, verbalizer, PREFERS_LABEL_WORDS)
        no_mask = config.layout == "template" and not self.is_decoder and ("mask",) not in self.pieces
        if kind == "verbalizer" and no_mask and config.head == "auto":
            kind = "classifier"  # the template leaves nowhere to read label words: a classifier it is
        if kind == "verbalizer" and no_mask:
            raise ValueError(f"The verbalizer reads the [MASK], but template {config.template!r} has no {{mask}}: "
                             "add one (e.g. --shape 3,3,3) or use --head classifier.")
        if config.read == "prompt" and kind != "classifier":
            raise ValueError(f"--read prompt places the classifier on the first prompt vector, but the head is "
                             f"a {kind}: use --head classifier (or --read input).")
        if config.read == "prompt" and self.is_decoder:
            raise ValueError("--read prompt: in GPT-2 the first prompt vector cannot see the input (causal "
                             "attention); use --read input (the last token).")
        # An encoder's first prompt vector sees the whole input and is written by the encoder directly.
        self.read_prompt = config.read == "prompt" or (config.read == "auto" and kind == "classifier"
                                                       and not self.is_decoder)
        self.head = TaskHead(backbone, tokenizer, num_labels, kind, verbalizer)
        # The batches are the plain input, except in the prefix layout with a verbalizer: the text template's [MASK].
        self.template = config.template if config.layout == "prefix" and kind == "verbalizer" else None

    @classmethod
    def for_task(cls, backbone: Transformer, tokenizer: Tokenizer, task, config: PTuningConfig) -> "PTuning":
        """Built for a task (a data.Task or TaskSpec); in the prefix layout a verbalizer gets the task's template."""
        if config.layout == "prefix":
            config = for_task(config, task, backbone, PREFERS_LABEL_WORDS)
        return cls(backbone, tokenizer, len(task.label_names), config, task.kind, task.verbalizer)

    def forward(self, batch: dict) -> torch.Tensor:
        prompts = self.prompt_encoder()  # (m, H), once per step for the whole batch
        if self.seq2seq:
            return self.text_to_text(prompts, batch)
        if self.config.layout == "prefix":  # peft's: position 0 (what its classifier pools) is the first prompt
            hidden = run_with_prompt(self.backbone, prompts, batch)  # (B, m+T, H)
            ids, mask, offset = batch["input_ids"], batch["attention_mask"], 0 if self.read_prompt else len(prompts)
        else:
            placed = self.place(batch)
            ids, mask, offset = placed["ids"], placed["attention_mask"], 0
            is_prompt = ids < 0  # (B, L): prompt slot i is stored as id -(i+1)
            words = self.backbone.word_embeddings(ids.clamp(min=0))  # (B, L, H)
            # slot i gets prompt i by a one-hot product: its backward, unlike a gather's, is deterministic on CPU
            chosen = F.one_hot((-ids - 1).clamp(min=0), len(prompts)).to(prompts.dtype) @ prompts  # (B, L, H)
            inputs_embeds = torch.where(is_prompt.unsqueeze(-1), chosen, words)
            hidden = self.backbone(inputs_embeds=inputs_embeds, attention_mask=mask,
                                   token_type_ids=placed["token_type_ids"])            # (B, L, H)
            if self.read_prompt:  # the first prompt vector of each row
                return self.head(hidden, is_prompt.float().argmax(1))
        # [CLS], the [MASK] by its id, or the last real token, where the layout put them
        return self.head(hidden, read_positions(self.head.kind, ids, mask, self.is_decoder, self.tokenizer.mask_id,
                                                offset))

    def text_to_text(self, prompts: torch.Tensor, batch: dict) -> torch.Tensor:
        """T5 / BART: the encoder reads the prompt vectors (before the input, or where the template puts
        them); [B, C] label-word log-likelihoods of the decoder (methods/shared/text_to_text.py)."""
        if self.config.layout == "prefix":
            encoded, mask = encode_with_prompt(self.backbone, prompts, batch)
        else:
            placed = self.place(batch)
            ids, mask = placed["ids"], placed["attention_mask"]
            chosen = F.one_hot((-ids - 1).clamp(min=0), len(prompts)).to(prompts.dtype) @ prompts  # (B, L, H)
            inputs_embeds = torch.where((ids < 0).unsqueeze(-1), chosen, self.backbone.embed(ids.clamp(min=0)))
            encoded = self.backbone.encode(inputs_embeds=inputs_embeds, attention_mask=mask)
        return label_scores(self.backbone, self.targets, encoded, mask)

    def place(self, batch: dict) -> dict[str, torch.Tensor]:
        """Lay each row out as the template says: ids (B, L) with prompt slots as negative ids, its mask and types."""
        input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
        token_types = batch.get("token_type_ids", torch.zeros_like(input_ids))
        rows = [self.place_row(ids[:length], types[:length]) for ids, types, length in
                zip(input_ids.tolist(), token_types.tolist(), attention_mask.sum(1).tolist())]
        longest = max(len(ids) for ids, _ in rows)
        check_position_budget(self.backbone, self.prompt_length, longest - self.prompt_length)
        pad = lambda lists, value: pad_sequence([torch.tensor(x) for x in lists], batch_first=True, padding_value=value)
        placed = {"ids": pad([ids for ids, _ in rows], self.tokenizer.pad_id),  # right padding, as the input had
                  "token_type_ids": pad([types for _, types in rows], 0),
                  "attention_mask": pad([[1] * len(ids) for ids, _ in rows], 0)}
        return {name: tensor.to(input_ids.device) for name, tensor in placed.items()}

    def place_row(self, ids: list[int], types: list[int]) -> tuple[list[int], list[int]]:
        """One row: [CLS] + the template filled with this input's tokens + [SEP] (encoders)."""
        if self.is_decoder:
            body, body_types, out_ids, out_types, end = ids, types, [], [], ([], [])
        elif self.seq2seq and ids[:1] != [self.tokenizer.bos_id]:  # T5: "input </s>", no start token
            body, body_types, out_ids, out_types, end = ids[:-1], types[:-1], [], [], (ids[-1:], types[-1:])
        else:  # keep the tokenizer's [CLS] first and its final [SEP] last
            body, body_types, out_ids, out_types, end = ids[1:-1], types[1:-1], ids[:1], types[:1], (ids[-1:], types[-1:])
        parts = {"text": (body, body_types)}
        if any(piece[0] == "text_pair" for piece in self.pieces):
            sep = self.tokenizer.sep_id
            first = body.index(sep) if sep in body else len(body)
            after = first
            while after < len(body) and body[after] == sep:  # RoBERTa separates a pair with two </s>
                after += 1
            parts = {"text": (body[:first], body_types[:first]), "text_pair": (body[after:], body_types[after:])}
        for piece in self.pieces:
            previous_type = out_types[-1] if out_types else 0
            if piece[0] == "prompt":
                _, first, count = piece
                out_ids += [-(i + 1) for i in range(first, first + count)]
                out_types += [previous_type] * count
            elif piece[0] in ("anchor", "mask"):
                anchor = piece[1] if piece[0] == "anchor" else [self.tokenizer.mask_id]
                out_ids += anchor
                out_types += [previous_type] * len(anchor)
            else:
                out_ids += parts[piece[0]][0]
                out_types += parts[piece[0]][1]
        return out_ids + end[0], out_types + end[1]


def main(argv: list[str] | None = None):
    config, options = parse_command_line(PTuningConfig, __doc__, argv)
    return run(config, options)[1]


if __name__ == "__main__":
    command_line(main)
