"""Checks for lesson 3 (prompt tuning): the forward pass by hand, the nearest-word read-out, a prediction.

Each check takes the student's answer, raises AssertionError with a hint when it is wrong
(NotImplementedError passes through), and compares against methods/prompt_tuning.py, a hand
computation, or the lesson's committed records.
"""
from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F

from methods.prompt_tuning import PromptTuning, PromptTuningConfig
from methods.shared.prompting import run_with_prompt
from minitransformer import Transformer, TransformerConfig

TOL = dict(rtol=1e-5, atol=1e-5)  # float32 rounding of the same sums in another order
NO_TOKENIZER = SimpleNamespace(mask_id=None)  # a classifier head on [CLS] never reads the tokenizer


def tiny_bert(hidden: int = 16) -> Transformer:
    """A 2-layer random BERT-like encoder with a pooler and token types: instant, same code as MiniLM."""
    torch.manual_seed(0)
    config = TransformerConfig(vocab_size=50, hidden_size=hidden, num_layers=2, num_heads=4,
                               intermediate_size=2 * hidden, max_positions=32)
    return Transformer(config, pooler=True).eval()


def check_cls_after_prompt(cls_after_prompt) -> None:
    backbone = tiny_bert()
    # A sentence pair (token types 0 then 1) and a padded row: both matter once the prompt shifts everything.
    batch = {"input_ids": torch.tensor([[2, 5, 7, 3, 9, 11, 3], [2, 8, 3, 6, 3, 0, 0]]),
             "attention_mask": torch.tensor([[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0]]),
             "token_type_ids": torch.tensor([[0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 0, 0]])}
    prompt = torch.randn(4, 16)  # n = 4 virtual tokens
    with torch.no_grad():
        got = cls_after_prompt(backbone, prompt, batch)
        hidden = run_with_prompt(backbone, prompt, batch)  # (B, n+T, H), the project's prompt tuning
    assert got is not None and tuple(got.shape) == (2, 16), \
        f"return one [CLS] vector per row, [B, H] = [2, 16]; got {getattr(got, 'shape', got)}"
    n = prompt.shape[0]
    words = backbone.word_embeddings(batch["input_ids"])  # (B, T, H)
    embeds = torch.cat([prompt.expand(2, -1, -1), words], 1)  # (B, n+T, H)
    mask = torch.cat([torch.ones(2, n, dtype=torch.long), batch["attention_mask"]], 1)  # (B, n+T)
    with torch.no_grad():
        no_types = backbone(inputs_embeds=embeds, attention_mask=mask)  # the usual slip: token types left out
    if any(torch.allclose(got, h[:, 0], **TOL) for h in (hidden, no_types)):
        raise AssertionError(f"you read position 0, which is now the first prompt vector: [CLS] moved n = {n} places")
    if torch.allclose(got, no_types[:, n], **TOL):
        raise AssertionError("the second sentence lost its token type 1: give the prompt type 0 and keep the "
                             "batch's token_type_ids after it ([B, n+T])")
    if not torch.allclose(got, hidden[:, n], **TOL):
        raise AssertionError("your [CLS] state differs from methods.shared.prompting.run_with_prompt's at position n: "
                             "check the order [prompt ; words], the mask (ones for the prompt) and the token types")
    model = PromptTuning(backbone, NO_TOKENIZER, 2, PromptTuningConfig(4, "random", head="classifier")).eval()
    with torch.no_grad():
        model.virtual_tokens.copy_(prompt)
        by_hand = model.head.linear(model.head.pool(cls_after_prompt(backbone, model.virtual_tokens, batch)))
        torch.testing.assert_close(by_hand, model(batch), **TOL, msg=lambda m: "pooler + linear on your [CLS] "
                                   f"state should give PromptTuning's logits: {m}")


def check_nearest_ids(nearest_ids) -> None:
    torch.manual_seed(0)
    directions = F.normalize(torch.randn(6, 8), dim=-1)
    # Rows of very different lengths: the longest rows win a dot product, the shortest win a distance,
    # only cosine similarity (the angle) ignores the length.
    embeddings = directions * torch.tensor([0.1, 5.0, 1.0, 0.3, 3.0, 1.0])[:, None]  # (V=6, H=8)
    prompt = torch.stack([directions[0] * 2 + 0.3 * directions[1], directions[3] + 0.2 * directions[4]])  # (n=2, 8)
    got = nearest_ids(prompt, embeddings, 3)
    expected = (F.normalize(prompt, dim=-1) @ F.normalize(embeddings, dim=-1).T).topk(3, dim=-1).indices
    assert got is not None and tuple(torch.as_tensor(got).shape) == (2, 3), \
        f"return [n, k] = [2, 3] indices; got {getattr(got, 'shape', got)}"
    got = torch.as_tensor(got)
    if torch.equal(got, (prompt @ embeddings.T).topk(3, dim=-1).indices):
        raise AssertionError("that is the dot product, which favours long embedding rows: normalise both sides "
                             "first (cosine similarity)")
    if torch.equal(got, torch.cdist(prompt, embeddings).topk(3, dim=-1, largest=False).indices):
        raise AssertionError("that is Euclidean distance, which favours short rows: use cosine similarity")
    assert torch.equal(got, expected), (f"expected the indices {expected.tolist()} (highest cosine similarity "
                                        f"first), got {got.tolist()}")


def check_longer_prompt_helps(longer_prompt_helps) -> None:
    from lessons.experiments import recorded, verdict

    assert isinstance(longer_prompt_helps, bool), f"set longer_prompt_helps to True or False, got {longer_prompt_helps!r}"
    results = recorded("prompt_length")  # the committed records (3 seeds, one epoch, full dev)
    claim = next(c for c in results.experiment.claims if c.b == ("length 1, vocab",) and c.a == ("length 20, vocab",))
    judged = verdict(claim, results)
    helped = judged["verdict"] == "reproduced"  # beyond the noise: the gap exceeds twice its standard error
    assert longer_prompt_helps == helped, (
        f"in the lesson's records, 20 prompt vectors against 1 scored {judged['measured']}: {judged['why']}, so a "
        f"longer prompt {'did' if helped else 'did not clearly'} help beyond the seeds' noise")


EXERCISES = {
    "cls_after_prompt": check_cls_after_prompt,
    "nearest_ids": check_nearest_ids,
    "longer_prompt_helps": check_longer_prompt_helps,
}
