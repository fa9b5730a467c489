"""Encoder-decoders (T5 v1.0, T5 v1.1 / flan-t5 style, BART) against Hugging Face transformers.

Tiny random checkpoints are built and saved by the tests in Hugging Face layout, then loaded by
our loader: encoder states and decoder logits must agree to 1e-5 on padded batches, greedy
generation must give the same ids, and each prefix placement must change only what it should.
"""
from __future__ import annotations

import warnings

import pytest
import torch

from minitransformer import EncoderDecoder, generate_seq2seq, load_pretrained
from minitransformer.loading import convert_seq2seq_checkpoint
from minitransformer.config import Seq2SeqConfig

transformers = pytest.importorskip("transformers")
warnings.filterwarnings("ignore", module="transformers")

VOCAB = 120
T5_SHAPES = dict(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                 relative_attention_num_buckets=8, relative_attention_max_distance=20, decoder_start_token_id=0)
CONFIGS = {
    "t5": lambda: transformers.T5Config(**T5_SHAPES),
    "t5-v1_1": lambda: transformers.T5Config(**T5_SHAPES, feed_forward_proj="gated-gelu", tie_word_embeddings=False),
    "bart": lambda: transformers.BartConfig(vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2,
                                            encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                                            decoder_ffn_dim=64, max_position_embeddings=64, forced_eos_token_id=None),
}
MODEL_CLASSES = {"t5": "T5ForConditionalGeneration", "t5-v1_1": "T5ForConditionalGeneration",
                 "bart": "BartForConditionalGeneration"}


def reference_model(kind: str, seed: int = 0, layers_in_decoder: int | None = None):
    """A random transformers model whose outputs depend on the input (weights well away from 0)."""
    torch.manual_seed(seed)
    config = CONFIGS[kind]()
    if layers_in_decoder is not None:
        config.num_decoder_layers = layers_in_decoder
    model = getattr(transformers, MODEL_CLASSES[kind])(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
            else:  # biases small, norm scales around 1: large biases would make the output ignore the input
                p.normal_(0, 0.1) if name.endswith("bias") else p.uniform_(0.5, 1.5)
        if kind == "bart":
            model.final_logits_bias.normal_(0, 0.1)
    return model


def ours_from(reference, directory) -> EncoderDecoder:
    if not (directory / "model.safetensors").exists():
        reference.save_pretrained(directory)
    model, _ = load_pretrained(str(directory)) if (directory / "tokenizer.json").exists() else (None, None)
    if model is None:  # no tokenizer files: load the weights alone
        from minitransformer.loading import read_weights
        import json
        config = Seq2SeqConfig.from_hf(json.loads((directory / "config.json").read_text()))
        state, tied = convert_seq2seq_checkpoint(config, read_weights(directory))
        model = EncoderDecoder(config, tied_lm_head=tied)
        model.load_state_dict(state, strict=True)
    return model.eval()


def padded_batch(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (3, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:], mask[2, 4:] = 0, 0
    decoder_ids = torch.randint(3, VOCAB, (3, 6), generator=g)
    decoder_mask = torch.ones_like(decoder_ids)
    decoder_mask[2, 3:] = 0
    return ids, mask, decoder_ids, decoder_mask


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_encoder_states_and_decoder_logits_match_transformers_on_padded_batches(kind, tmp_path):
    reference = reference_model(kind, layers_in_decoder=3 if kind == "t5" else None)  # T5 may be lopsided
    ours = ours_from(reference, tmp_path)
    ids, mask, decoder_ids, decoder_mask = padded_batch()
    with torch.no_grad():
        theirs = reference(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids,
                           decoder_attention_mask=decoder_mask)
        encoder = ours.encode(ids, mask)
        logits = ours.lm_logits(ours(ids, mask, decoder_ids, decoder_mask))
    real, real_targets = mask.bool(), decoder_mask.bool()
    torch.testing.assert_close(encoder[real], theirs.encoder_last_hidden_state[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits[real_targets], theirs.logits[real_targets], atol=1e-5, rtol=1e-5)
    # the loss a text-to-text task trains on: labels shifted right are the decoder inputs
    labels = decoder_ids.masked_fill(decoder_mask == 0, -100)
    with torch.no_grad():
        their_loss = reference(input_ids=ids, attention_mask=mask, labels=labels).loss
        our_logits = ours.lm_logits(ours(ids, mask, ours.shift_right(labels)))
    our_loss = torch.nn.functional.cross_entropy(our_logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
    torch.testing.assert_close(our_loss, their_loss, atol=1e-5, rtol=1e-5)


def test_a_t5_v1_1_checkpoint_with_its_own_lm_head_keeps_it_unscaled(tmp_path):
    """Hub v1.1 / flan-t5 checkpoints store lm_head.weight apart from the embeddings (transformers 5 ties
    them when it saves, so the test writes one): logits are the decoder's last states times that head."""
    from safetensors.torch import load_file, save_file
    reference = reference_model("t5-v1_1")
    reference.save_pretrained(tmp_path)
    weights = load_file(str(tmp_path / "model.safetensors"))
    head = 0.05 * torch.randn(VOCAB, 32, generator=torch.Generator().manual_seed(2))
    save_file({**weights, "lm_head.weight": head}, str(tmp_path / "model.safetensors"))
    ours = ours_from(reference, tmp_path)
    assert ours.lm_head is not None and not ours.config.scale_decoder_outputs
    ids, mask, decoder_ids, decoder_mask = padded_batch()
    with torch.no_grad():
        states = reference(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids,
                           decoder_attention_mask=decoder_mask, output_hidden_states=True).decoder_hidden_states[-1]
        logits = ours.lm_logits(ours(ids, mask, decoder_ids, decoder_mask))
    real = decoder_mask.bool()
    torch.testing.assert_close(logits[real], (states @ head.T)[real], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_greedy_generation_gives_the_ids_of_transformers_generate(kind, tmp_path):
    reference = reference_model(kind, seed=3)
    ours = ours_from(reference, tmp_path)
    ids, mask, _, _ = padded_batch(seed=4)
    with torch.no_grad():
        theirs = reference.generate(input_ids=ids, attention_mask=mask, max_new_tokens=10, do_sample=False,
                                    num_beams=1, min_length=0)
    mine = generate_seq2seq(ours, ids, mask, max_new_tokens=10)
    assert len(set(mine[:, 1:].flatten().tolist())) > 3, "degenerate outputs would make this test weak"
    assert torch.equal(mine, theirs)


@pytest.mark.parametrize("kind", ["t5", "bart"])
def test_the_cache_gives_what_decoding_everything_again_gives(kind, tmp_path):
    """Each cached step (prefixes in all three places, sampling) equals a full decode of the sequence so far."""
    ours = ours_from(reference_model(kind, seed=5), tmp_path)
    ids, mask, _, _ = padded_batch(seed=6)
    prefixes = random_prefixes(ours, torch.Generator().manual_seed(7))
    sampled = generate_seq2seq(ours, ids, mask, max_new_tokens=6, temperature=1.0, top_k=20,
                               generator=torch.Generator().manual_seed(8), **prefixes)
    again = generate_seq2seq(ours, ids, mask, max_new_tokens=6, temperature=1.0, top_k=20,
                             generator=torch.Generator().manual_seed(8), **prefixes)
    assert torch.equal(sampled, again)
    with torch.no_grad():  # teacher-force the sampled sequence: its logits at each step, without a cache
        full = ours.lm_logits(ours(ids, mask, sampled[:, :-1], **prefixes))
        memory = ours.memory(ours.encode(ids, mask, prefix=prefixes["encoder_prefix"]), mask, prefixes["cross_prefix"])
        hidden, cache = ours.decode(sampled[:, :1], memory, prefix=prefixes["decoder_prefix"], return_cache=True)
        from minitransformer.model import GrowingKeyValue
        cache = [GrowingKeyValue(k, v, k.shape[2] + 8) for k, v in cache]
        steps = [ours.lm_logits(hidden[:, -1])]
        for t in range(1, sampled.shape[1] - 1):
            steps.append(ours.lm_logits(ours.decode(sampled[:, t:t + 1], memory, prefix=cache)[:, -1]))
    torch.testing.assert_close(torch.stack(steps, 1), full, atol=1e-5, rtol=1e-5)


def random_prefixes(model: EncoderDecoder, generator: torch.Generator, P: int = 3, places=("encoder", "decoder", "cross")):
    c = model.config
    make = lambda count: [(torch.randn(1, c.num_heads, P, c.head_dim, generator=generator),
                           torch.randn(1, c.num_heads, P, c.head_dim, generator=generator)) for _ in range(count)]
    return {"encoder_prefix": make(c.num_layers) if "encoder" in places else None,
            "decoder_prefix": make(c.num_decoder_layers) if "decoder" in places else None,
            "cross_prefix": make(c.num_decoder_layers) if "cross" in places else None}


def inputs_of_every_attention(model: EncoderDecoder, ids, mask, decoder_ids, prefixes) -> dict[str, list]:
    """What each attention module reads (its x), by module name, for one forward pass."""
    seen, hooks = {}, []

    def keep(name):
        def hook(module, args):
            seen.setdefault(name, args[0])  # the first call: the forward pass below (encode comes after)
        return hook

    for name, module in model.named_modules():
        if name.endswith("attention"):
            hooks.append(module.register_forward_pre_hook(keep(name)))
    with torch.no_grad():
        out = model(ids, mask, decoder_ids, **prefixes)
        encoder = model.encode(ids, mask, prefix=prefixes["encoder_prefix"])
    for h in hooks:
        h.remove()
    return {"attention inputs": seen, "encoder": encoder, "decoder": out}


@pytest.mark.parametrize("kind", ["t5", "bart"])
@pytest.mark.parametrize("place", ["encoder", "decoder", "cross"])
def test_a_prefix_in_one_place_changes_only_what_it_should(kind, place, tmp_path):
    ours = ours_from(reference_model(kind, seed=9), tmp_path)
    ids, mask, decoder_ids, _ = padded_batch(seed=10)
    plain = inputs_of_every_attention(ours, ids, mask, decoder_ids, random_prefixes(ours, None, places=()))
    prefixed = inputs_of_every_attention(ours, ids, mask, decoder_ids,
                                         random_prefixes(ours, torch.Generator().manual_seed(11), places=(place,)))
    real = mask.bool()
    same = lambda a, b: torch.allclose(a, b, atol=1e-6)
    encoder_same = same(plain["encoder"][real], prefixed["encoder"][real])
    first_decoder_self = "decoder.layers.0.attention"
    first_cross = "decoder.layers.0.cross_attention"
    assert encoder_same == (place != "encoder")  # only an encoder prefix changes what the decoder reads
    # the decoder's first self-attention reads its embeddings: untouched by any prefix, except that BART's
    # learned positions count a decoder prefix as earlier tokens (as transformers counts past key/values)
    assert same(plain["attention inputs"][first_decoder_self], prefixed["attention inputs"][first_decoder_self]) \
        == (kind != "bart" or place != "decoder")
    # what the first cross-attention reads (after the decoder's self-attention) changes only with a decoder prefix
    assert same(plain["attention inputs"][first_cross], prefixed["attention inputs"][first_cross]) == (place != "decoder")
    assert not same(plain["decoder"], prefixed["decoder"])  # and every placement reaches the output


def test_the_loader_reads_tokenizers_and_names_a_missing_or_unknown_tensor(tmp_path):
    from safetensors.torch import load_file, save_file
    from tokenizers import Tokenizer as Backend, models, pre_tokenizers, processors
    words = ["<pad>", "</s>", "<unk>"] + [f"w{i}" for i in range(VOCAB - 3)]
    backend = Backend(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    backend.save(str(tmp_path / "tokenizer.json"))
    reference = reference_model("t5")
    model, tokenizer = load_pretrained(str(tmp_path)) if reference.save_pretrained(tmp_path) is None else (None, None)
    batch = tokenizer.encode(["w5 w7 w9", "w4"])
    assert batch["input_ids"][0].tolist() == [8, 10, 12, 1] and tokenizer.eos_id == 1 and tokenizer.pad_id == 0
    with torch.no_grad():
        torch.testing.assert_close(model.encode(batch["input_ids"], batch["attention_mask"])[0],
                                   reference.encoder(input_ids=batch["input_ids"][:1]).last_hidden_state[0],
                                   atol=1e-5, rtol=1e-5)
    weights = load_file(str(tmp_path / "model.safetensors"))
    missing = {k: v for k, v in weights.items() if k != "encoder.block.1.layer.1.DenseReluDense.wo.weight"}
    save_file(missing, str(tmp_path / "model.safetensors"))
    with pytest.raises(KeyError, match="encoder.layers.1.mlp.down.weight"):
        load_pretrained(str(tmp_path))
    save_file({**weights, "encoder.block.0.layer.0.SelfAttention.extra.weight": torch.zeros(2)},
              str(tmp_path / "model.safetensors"))
    with pytest.raises(KeyError, match="SelfAttention.extra.weight"):
        load_pretrained(str(tmp_path))


def test_the_plain_path_equals_the_fast_one_in_outputs_and_gradients():
    """fast=False (padded blocks, nn.Dropout-free eval) gives the fast path's outputs and gradients at the
    real tokens, with prefixes in all three places."""
    torch.manual_seed(0)
    config = Seq2SeqConfig(vocab_size=VOCAB, hidden_size=32, num_layers=2, num_decoder_layers=2, num_heads=4,
                           head_dim=8, intermediate_size=64, gated=True, activation="gelu_new")
    fast = EncoderDecoder(config).eval()
    plain = EncoderDecoder(Seq2SeqConfig(**{**config.__dict__, "fast": False})).eval()
    plain.load_state_dict(fast.state_dict())
    ids, mask, decoder_ids, decoder_mask = padded_batch()
    prefixes = random_prefixes(fast, torch.Generator().manual_seed(3))
    outputs = []
    for model in (fast, plain):
        out = model(ids, mask, decoder_ids, decoder_mask, **prefixes)
        loss = (model.lm_logits(out)[decoder_mask.bool()] ** 2).mean()
        loss.backward()
        outputs.append((out[decoder_mask.bool()].detach(), model.word_embeddings.weight.grad.clone()))
    torch.testing.assert_close(outputs[0][0], outputs[1][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outputs[0][1], outputs[1][1], atol=1e-5, rtol=1e-5)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients_with_prefixes_everywhere():
    torch.manual_seed(0)
    config = Seq2SeqConfig(vocab_size=VOCAB, hidden_size=32, num_layers=2, num_decoder_layers=2, num_heads=4,
                           head_dim=8, intermediate_size=64, hidden_dropout=0.0, attention_dropout=0.0)
    model = EncoderDecoder(config).train()
    ids, mask, decoder_ids, decoder_mask = padded_batch()
    prefixes = {k: [(a.requires_grad_(), b.requires_grad_()) for a, b in v]
                for k, v in random_prefixes(model, torch.Generator().manual_seed(4)).items()}
    results = []
    for on in (False, True):
        model.gradient_checkpointing = on
        loss = model.lm_logits(model(ids, mask, decoder_ids, decoder_mask, **prefixes)).logsumexp(-1).mean()
        grads = torch.autograd.grad(loss, [t for v in prefixes.values() for kv in v for t in kv])
        results.append((loss.detach(), grads))
    assert model.encoder.gradient_checkpointing and model.decoder.gradient_checkpointing
    torch.testing.assert_close(results[0][0], results[1][0])
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
