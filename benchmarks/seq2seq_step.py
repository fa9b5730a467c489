"""Training-step speed on an encoder-decoder: ours against transformers + peft, at t5-small shapes.

Both sides get the same random T5 weights (t5-small's config: 6 + 6 layers, d_model 512, 8 heads,
vocab 32,128; random because the checkpoint cannot be downloaded here), the same batches and the
same work: the LM loss of the label word's target (word + </s>, teacher-forced) given a sentence,
for prompt tuning (20 virtual tokens before the encoder's input) and prefix tuning in peft's layout
(20 prefix tokens in the decoder's self-attention, MLP of width 512). The inputs are SST-2 training
sentences, batch 32, at the lengths a subword tokenizer gives them (MiniLM's WordPiece, whose
lengths are close to T5's SentencePiece; the ids are mapped into T5's vocabulary). Steps alternate
ours / theirs after a warm-up (benchmarks/train_step.py's timing); the ratio is ours / theirs.

    python benchmarks/seq2seq_step.py --out benchmarks/results_seq2seq_cpu.json
"""
from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time

import torch
import transformers

from methods.prefix_tuning import PlacedPrefixes
from methods.shared.prompting import encode_with_prompt
from methods.shared.text_to_text import lm_loss
from minitransformer import load_pretrained

from train_step import alternate, make_step, sst2_batches, write_report

T5_SMALL = dict(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8,
                decoder_start_token_id=0, dropout_rate=0.1)
VIRTUAL_TOKENS, LABEL_TOKENS = 20, (1465, 248)  # two label-word ids ("great", "terrible" in t5's vocabulary)


def t5_batches(count: int) -> list[dict]:
    """SST-2 batches of 32 with WordPiece lengths, ids folded into T5's vocabulary; targets: a label word + </s>."""
    _, tokenizer = load_pretrained("all-MiniLM-L6-v2")
    out = []
    for batch in sst2_batches(tokenizer, count, torch.device("cpu")):
        ids = batch["input_ids"] % (T5_SMALL["vocab_size"] - 100) + 100
        ids = ids.masked_fill(batch["attention_mask"] == 0, 0)
        word = torch.tensor(LABEL_TOKENS)[batch["labels"]]
        labels = torch.stack([word, torch.ones_like(word)], 1)  # (B, 2): word, </s>
        out.append({"input_ids": ids, "attention_mask": batch["attention_mask"], "labels": labels})
    return out


def sides(method: str, directory: str):
    """(ours, its loss function), (theirs, its loss function) on the same weights and trainable start."""
    import peft
    reference = transformers.T5ForConditionalGeneration.from_pretrained(directory)
    backbone, _ = load_pretrained(directory)
    for p in backbone.parameters():
        p.requires_grad_(False)
    ours = torch.nn.Module()  # the trainable part of each method, on the frozen backbone
    ours.backbone = backbone
    if method == "prompt_tuning":
        ours.virtual_tokens = torch.nn.Parameter(torch.randn(VIRTUAL_TOKENS, 512) * 0.5)
        theirs = peft.get_peft_model(reference, peft.PromptTuningConfig(task_type="SEQ_2_SEQ_LM",
                                                                       num_virtual_tokens=VIRTUAL_TOKENS))
        with torch.no_grad():
            theirs.prompt_encoder["default"].embedding.weight[:VIRTUAL_TOKENS] = ours.virtual_tokens

        def our_loss(batch):
            encoded, mask = encode_with_prompt(backbone, ours.virtual_tokens, batch)
            memory = backbone.memory(encoded, mask)
            return lm_loss(backbone.lm_logits(backbone.decode(backbone.shift_right(batch["labels"]), memory)),
                           batch["labels"])
    else:
        ours.prefix = PlacedPrefixes(backbone.config, ["decoder"], VIRTUAL_TOKENS, "all", False, 512, 0.0)
        theirs = peft.get_peft_model(reference, peft.PrefixTuningConfig(
            task_type="SEQ_2_SEQ_LM", num_virtual_tokens=VIRTUAL_TOKENS, prefix_projection=True,
            encoder_hidden_size=512))

        def our_loss(batch):
            memory = backbone.memory(backbone.encode(batch["input_ids"], batch["attention_mask"]),
                                     batch["attention_mask"])
            decoder_prefix = ours.prefix()["decoder"]
            hidden = backbone.decode(backbone.shift_right(batch["labels"]), memory, prefix=decoder_prefix)
            return lm_loss(backbone.lm_logits(hidden), batch["labels"])

    def their_loss(batch):
        return theirs(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                      labels=batch["labels"]).loss
    return (ours.train(), our_loss), (theirs.train(), their_loss)


def time_method(method: str, directory: str, steps: int, warmup: int) -> dict:
    torch.manual_seed(0)
    (ours, our_loss), (theirs, their_loss) = sides(method, directory)
    data = t5_batches(steps + warmup)
    cpu = torch.device("cpu")
    ours_step, theirs_step = make_step(ours, our_loss, cpu, False), make_step(theirs, their_loss, cpu, False)
    ours_times, theirs_times = alternate(ours_step, theirs_step, data, warmup)
    ours_s, theirs_s = statistics.median(ours_times), statistics.median(theirs_times)
    tokens = statistics.mean(int(b["attention_mask"].sum()) for b in data[warmup:])
    return {"method": method, "ours_step_s": ours_s, "theirs_step_s": theirs_s, "step_time_ratio": ours_s / theirs_s,
            "ours_tokens_per_s": tokens / ours_s, "theirs_tokens_per_s": tokens / theirs_s, "steps_timed": steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="prompt_tuning,prefix_tuning")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per side")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    directory = tempfile.mkdtemp(prefix="t5-small-random-")
    torch.manual_seed(0)
    transformers.T5ForConditionalGeneration(transformers.T5Config(**T5_SMALL)).save_pretrained(directory)
    from tokenizers import Tokenizer, models  # the loader wants tokenizer files; the batches bring their own ids
    Tokenizer(models.WordLevel({"<pad>": 0, "</s>": 1, "<unk>": 2}, unk_token="<unk>")).save(f"{directory}/tokenizer.json")
    results = []
    for method in args.methods.split(","):
        row = time_method(method, directory, args.steps, args.warmup)
        results.append(row)
        print(f"{method:>14}: ours {1e3 * row['ours_step_s']:.0f} ms, theirs {1e3 * row['theirs_step_s']:.0f} ms "
              f"-> ratio {row['step_time_ratio']:.2f}", flush=True)
    report = {"device": "cpu", "threads": torch.get_num_threads(), "torch": torch.__version__,
              "transformers": transformers.__version__, "machine": f"{platform.machine()} {platform.processor()}".strip(),
              "date": time.strftime("%Y-%m-%d"), "model": "t5-small shapes, random weights", "batch_size": 32,
              "max_length": 64, "virtual_tokens": VIRTUAL_TOKENS, "results": results}
    write_report(report, args.out)


if __name__ == "__main__":
    main()
