"""Reference solutions for lesson 3 (try the exercises first!)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def cls_after_prompt(backbone, prompt, batch):
    """The [CLS] hidden state of each row when the n prompt vectors go in front of the input, [B, H]."""
    input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
    (B, T), n = input_ids.shape, prompt.shape[0]
    words = backbone.word_embeddings(input_ids)                                         # (B, T, H)
    inputs_embeds = torch.cat([prompt.unsqueeze(0).expand(B, -1, -1), words], dim=1)  # (B, n+T, H)
    mask = torch.cat([attention_mask.new_ones(B, n), attention_mask], dim=1)           # (B, n+T)
    types = torch.cat([batch["token_type_ids"].new_zeros(B, n), batch["token_type_ids"]], dim=1)  # prompt: type 0
    hidden = backbone(inputs_embeds=inputs_embeds, attention_mask=mask, token_type_ids=types)  # (B, n+T, H)
    return hidden[:, n]  # [CLS] was position 0; n vectors now stand before it


def nearest_ids(prompt, embeddings, k):
    """For each prompt vector, the rows of `embeddings` with the highest cosine similarity, best first, [n, k]."""
    similarity = F.normalize(prompt, dim=-1) @ F.normalize(embeddings, dim=-1).T  # (n, V)
    return similarity.topk(k, dim=-1).indices


# Set from the full run's printout (section 3): was 20 vectors better than 1 by more than the noise?
longer_prompt_helps = False
