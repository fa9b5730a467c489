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

Where a classifier head reads (--read): on an encoder, by default the output at the first
prompt vector ("prompt"), which sees the whole input and which the prompt encoder writes
directly; with --layout prefix that is position 0, the one peft's BertForSequenceClassification
pools, so the two give the same logits (tested). "input" reads the input's own [CLS] instead
(GPT-2: its last token, always, as its first prompt vector cannot see the input). On MiniLM +
SST-2 (3 epochs, seeds 0-2) the first prompt vector ended at 81.2 / 80.6 / 81.1%, [CLS] at 79.7 / 80.0%
(seeds 0, 1; results/p_tuning_read).

    python methods/p_tuning.py --task sst2 --template "{p:10} {text} {p:10}" --encoder mlp
"""
from __future__ import annotations

import string
from dataclasses import asdict, dataclass

import torch
from torch import nn

from data.prompts import label_word
from minitransformer import Tokenizer, Transformer

from methods.heads import TaskHead, freeze
from methods.prompt_tuning import check_position_budget, choose_head, run_with_prompt
from methods.runner import common_parser, run

ENCODERS = ("lstm", "mlp", "none")
LAYOUTS = ("template", "prefix")
READS = ("auto", "prompt", "input")
# Measured on MiniLM + SST-2 (3 epochs, batch 32, our loop's linear decay to 0): with the classifier on
# the first prompt vector 3e-2 ended at 81.2 / 80.6 / 81.1% (seeds 0-2; results/p_tuning_read). Reading
# [CLS], 1e-2 reached 78.9% and 3e-2 80.3%; 3e-3 stayed far behind. peft's anchor used a constant 1e-2,
# which our decaying schedule only matches on average with a higher peak.
DEFAULT_LR = 3e-2


@dataclass
class PTuningConfig:
    template: str = "{p:10} {text} {p:10}"  # layout="template": where the prompt vectors go (syntax above)
    encoder: str = "mlp"                    # lstm | mlp | none
    encoder_hidden: int = 128               # width of the encoder's hidden layers (LSTM: per direction)
    layout: str = "template"                # template | prefix (peft's: all vectors before [CLS])
    num_virtual_tokens: int = 20            # layout="prefix": how many prompt vectors
    head: str = "auto"                      # auto | classifier | verbalizer
    read: str = "auto"                      # where a classifier reads: auto | prompt | input (see --read)


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


def shape_template(shape: str) -> str:
    """The paper's shape notation "a,b,c" -> "{p:a} {text} {p:b} {mask} {p:c}"."""
    try:
        a, b, c = (int(part) for part in shape.split(","))
    except ValueError:
        raise ValueError(f"--shape takes three counts like 3,3,3 (prompts, input, prompts, [MASK], prompts); "
                         f"got {shape!r}.") from None
    return f"{{p:{a}}} {{text}} {{p:{b}}} {{mask}} {{p:{c}}}"


def parse_template(template: str, tokenizer: Tokenizer, is_decoder: bool, pair: bool) -> list[tuple]:
    """The template as pieces: ("prompt", first, count), ("anchor", ids), ("mask",), ("text",), ("text_pair",)."""
    pieces, used, next_prompt, after_mask = [], [], 0, False
    for literal, field, spec, _ in string.Formatter().parse(template):
        used += [field] if field is not None else []
        if after_mask and is_decoder:  # GPT-2 predicts the label as the next token: the sequence ends at {mask}
            if field in ("text", "text_pair"):
                raise ValueError(f"In {template!r} the input comes after {{mask}}; GPT-2 predicts the next "
                                 "token, so the input must come before it.")
            continue
        if literal.strip():
            pieces.append(("anchor", text_ids(literal.strip(), tokenizer)))
        if field == "p":
            if not spec.isdigit():
                raise ValueError(f"A prompt slot is written {{p:N}} with a count N, got {{p:{spec}}} in {template!r}.")
            if int(spec):
                pieces.append(("prompt", next_prompt, int(spec)))
                next_prompt += int(spec)
        elif field == "mask":
            after_mask = True
            pieces += [] if is_decoder else [("mask",)]
        elif field in ("text", "text_pair"):
            pieces.append((field,))
        elif field is not None:
            raise ValueError(f"Unknown slot {{{field}}} in template {template!r}; use {{p:N}}, {{text}}, "
                             "{text_pair} and {mask}.")
    if used.count("text") != 1 or used.count("mask") > 1 or used.count("text_pair") > 1:
        raise ValueError(f"Template {template!r} needs {{text}} exactly once and {{mask}}, {{text_pair}} at most once.")
    if "text_pair" in used and (not pair or is_decoder):
        raise ValueError("{text_pair} needs a pair task and an encoder (its separator marks where the pair "
                         "starts); use {text} alone for the whole input.")
    if next_prompt == 0:
        raise ValueError(f"Template {template!r} has no prompt vectors: add {{p:N}} slots.")
    return pieces


def text_ids(text: str, tokenizer: Tokenizer) -> list[int]:
    """Anchor ids; byte-level BPE gets the leading space a word has mid-sentence (" ?" is not "?")."""
    return tokenizer.token_ids(label_word(text, tokenizer))


class PTuning(nn.Module):
    """A frozen backbone reading prompt-encoder vectors placed by a template, and a task head.

    Input: a batch dict (input_ids, attention_mask, token_type_ids [B, T]) of the plain input.
    Output: logits [B, C].
    """

    def __init__(self, backbone: Transformer, tokenizer: Tokenizer, num_labels: int, config: PTuningConfig,
                 verbalizer: list[str] | None = None, task_kind: str = "classification"):
        super().__init__()
        if config.layout not in LAYOUTS:
            raise ValueError(f"Unknown layout {config.layout!r}; choose one of {', '.join(LAYOUTS)}.")
        if config.read not in READS:
            raise ValueError(f"Unknown read position {config.read!r}; choose one of {', '.join(READS)}.")
        if task_kind not in ("classification", "pair"):
            raise ValueError(f"P-tuning here classifies sentences or pairs, not {task_kind!r} tasks; for tagging "
                             "use prompt_tuning.py or p_tuning_v2.py.")
        self.backbone, self.tokenizer, self.config = freeze(backbone), tokenizer, config
        self.is_decoder = backbone.config.is_decoder
        if config.layout == "template":
            self.pieces = parse_template(config.template, tokenizer, self.is_decoder, task_kind == "pair")
            num_prompts = sum(piece[2] for piece in self.pieces if piece[0] == "prompt")
        else:
            num_prompts = config.num_virtual_tokens
        embedding_std = float(backbone.word_embeddings.weight.std())
        self.prompt_encoder = PromptEncoder(num_prompts, backbone.config.hidden_size, config.encoder,
                                            config.encoder_hidden, embedding_std)
        kind = choose_head(backbone, task_kind, verbalizer, config.head)
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
        self.saved_contents = ("the pseudo-token embeddings, the prompt encoder and the task head (enough to "
                               "resume training; running the encoder once would give the deployable prompt)")

    def forward(self, batch: dict) -> torch.Tensor:
        prompts = self.prompt_encoder()  # (m, H), once per step for the whole batch
        if self.config.layout == "prefix":
            hidden = run_with_prompt(self.backbone, prompts, batch)  # (B, m+T, H)
            # peft's BertForSequenceClassification pools position 0: here the first prompt vector.
            return self.head(hidden, batch, offset=0 if self.read_prompt else prompts.shape[0])
        placed = self.place(batch)
        is_prompt = placed["ids"] < 0  # (B, L): prompt slot i is stored as id -(i+1)
        words = self.backbone.word_embeddings(placed["ids"].clamp(min=0))         # (B, L, H)
        from_prompt = prompts[(-placed["ids"] - 1).clamp(min=0)]                   # (B, L, H)
        inputs_embeds = torch.where(is_prompt.unsqueeze(-1), from_prompt, words)   # (B, L, H)
        hidden = self.backbone(inputs_embeds=inputs_embeds, attention_mask=placed["attention_mask"],
                               token_type_ids=placed["token_type_ids"])           # (B, L, H)
        # The head finds [CLS] at 0, the [MASK] by its id, or the last real token by the mask.
        head_batch = {"input_ids": placed["ids"].clamp(min=0), "attention_mask": placed["attention_mask"]}
        first_prompt = is_prompt.float().argmax(1) if self.read_prompt else None  # (B,)
        return self.head(hidden, head_batch, offset=0, positions=first_prompt)

    def place(self, batch: dict) -> dict[str, torch.Tensor]:
        """Lay each row out as the template says: ids (B, L) with prompt slots as negative ids, its mask and types."""
        input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
        token_types = batch.get("token_type_ids", torch.zeros_like(input_ids))
        rows = []
        for ids, types, length in zip(input_ids.tolist(), token_types.tolist(), attention_mask.sum(1).tolist()):
            rows.append(self.place_row(ids[:length], types[:length]))
        longest = max(len(ids) for ids, _ in rows)
        num_prompts = self.prompt_encoder.pseudo_tokens.shape[0]
        check_position_budget(self.backbone, num_prompts, longest - num_prompts)
        placed = {"ids": torch.full((len(rows), longest), self.tokenizer.pad_id, dtype=torch.long),
                  "attention_mask": torch.zeros(len(rows), longest, dtype=torch.long),
                  "token_type_ids": torch.zeros(len(rows), longest, dtype=torch.long)}
        for row, (ids, types) in enumerate(rows):  # right padding, as the input had
            placed["ids"][row, :len(ids)] = torch.tensor(ids)
            placed["token_type_ids"][row, :len(ids)] = torch.tensor(types)
            placed["attention_mask"][row, :len(ids)] = 1
        return {name: tensor.to(input_ids.device) for name, tensor in placed.items()}

    def place_row(self, ids: list[int], types: list[int]) -> tuple[list[int], list[int]]:
        """One row: [CLS] + the template filled with this input's tokens + [SEP] (encoders)."""
        if self.is_decoder:
            body, body_types, out_ids, out_types, end = ids, types, [], [], ([], [])
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


def main(argv: list[str] | None = None) -> dict:
    parser = common_parser(__doc__, lr=DEFAULT_LR)
    parser.add_argument("--template", default=PTuningConfig.template, help="where the prompt vectors go "
                        "(syntax above)")
    parser.add_argument("--shape", default=None, help="the paper's shorthand a,b,c for "
                        "'{p:a} {text} {p:b} {mask} {p:c}' (overrides --template)")
    parser.add_argument("--encoder", choices=ENCODERS, default="mlp", help="prompt encoder: bi-LSTM + MLP, "
                        "MLP, or none")
    parser.add_argument("--encoder-hidden", type=int, default=128, help="width of the encoder's hidden layers")
    parser.add_argument("--layout", choices=LAYOUTS, default="template", help="prefix: peft's layout, all "
                        "--num-virtual-tokens vectors before [CLS]")
    parser.add_argument("--num-virtual-tokens", type=int, default=20, help="for --layout prefix")
    parser.add_argument("--head", choices=("auto", "classifier", "verbalizer"), default="auto", help="auto: "
                        "label words when the model has an LM head, else a classifier (reading where --read says)")
    parser.add_argument("--read", choices=READS, default=PTuningConfig.read, help="where a classifier reads: "
                        "prompt: the first prompt vector's output (encoders; peft pools it in its prefix layout); "
                        "input: [CLS] (GPT-2: the last token); auto: prompt on an encoder, input on GPT-2")
    args = parser.parse_args(argv)
    template = shape_template(args.shape) if args.shape else args.template
    config = PTuningConfig(template, args.encoder, args.encoder_hidden, args.layout, args.num_virtual_tokens,
                           args.head, args.read)

    def build(backbone: Transformer, tokenizer: Tokenizer, task, _) -> PTuning:
        model = PTuning(backbone, tokenizer, len(task.label_names), config, task.verbalizer, task.kind)
        prompt_length = model.prompt_encoder.pseudo_tokens.shape[0]
        check_position_budget(backbone, prompt_length, args.max_length)  # fail before training, not mid-way
        if config.layout == "prefix" and model.head.kind == "verbalizer":
            model.template = task.templates[0]  # the [MASK] slot comes from the task's text template
        return model

    return run(args, "p_tuning", build, asdict(config))


if __name__ == "__main__":
    main()
