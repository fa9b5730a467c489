"""Prompt methods on encoder-decoders (T5, BART) against peft's SEQ_2_SEQ_LM, and where peft differs.

peft represents two of our layouts: prompt tuning (the prompt before the encoder's input) and a
prefix in the decoder's self-attention (`--placement decoder`). For those, with the parameters
copied across, the LM logits and the gradients of the LM loss must agree to 1e-5. peft's seq2seq
prefix also reuses slots (decoder layer j reads the slot peft made for layer 2j mod L), which the
copy follows and prefix_tuning.py writes down. The cross-attention prefix, which peft has not, is
checked against transformers' own cross-attention reading prefilled keys and values.
"""
from __future__ import annotations

import warnings

import pytest
import torch

from tests.test_seq2seq import CONFIGS, VOCAB, padded_batch, random_prefixes, reference_model

peft = pytest.importorskip("peft")
warnings.filterwarnings("ignore")

LABEL_WORDS = ["terrible", "great"]


def save_tiny(kind: str, directory, seed: int = 0, layers: int | None = None):
    """A tiny checkpoint with a word-level tokenizer (the label words in its vocabulary)."""
    from tokenizers import Tokenizer as Backend, models, pre_tokenizers, processors
    specials = ["<pad>", "</s>", "<unk>"] if kind.startswith("t5") else ["<s>", "<pad>", "</s>", "<unk>"]
    words = specials + LABEL_WORDS + [f"w{i}" for i in range(VOCAB - len(specials) - 2)]
    backend = Backend(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    eos = words.index("</s>")
    backend.post_processor = processors.TemplateProcessing(
        single="$A </s>" if kind.startswith("t5") else "<s> $A </s>",
        special_tokens=[("</s>", eos)] + ([] if kind.startswith("t5") else [("<s>", 0)]))
    backend.save(str(directory / "tokenizer.json"))
    reference = reference_model(kind, seed)
    if layers is not None:  # another depth: T5 with L decoder layers too
        import transformers
        torch.manual_seed(seed)
        config = CONFIGS[kind]()
        config.num_layers, config.num_decoder_layers = layers, layers
        reference = transformers.T5ForConditionalGeneration(config).eval()
    reference.save_pretrained(directory)
    return reference


def lm_logits_of(backbone, encoded, mask, decoder_ids, decoder_mask, decoder_prefix=None, cross_prefix=None):
    memory = backbone.memory(encoded, mask, cross_prefix)
    return backbone.lm_logits(backbone.decode(decoder_ids, memory, decoder_mask, decoder_prefix))


def loss_of(logits, decoder_ids, decoder_mask):
    labels = decoder_ids.masked_fill(decoder_mask == 0, -100)
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)


@pytest.mark.parametrize("kind", ["t5", "bart"])
def test_prompt_tuning_matches_peft_seq2seq_logits_and_gradients(kind, tmp_path):
    from minitransformer import load_pretrained
    from methods.prompt_tuning import PromptTuning, PromptTuningConfig
    from methods.shared.prompting import encode_with_prompt
    reference = save_tiny(kind, tmp_path)
    backbone, tokenizer = load_pretrained(str(tmp_path))
    ours = PromptTuning(backbone, tokenizer, 2, PromptTuningConfig(num_virtual_tokens=4, init="random"),
                        verbalizer=LABEL_WORDS)
    theirs = peft.get_peft_model(reference, peft.PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=4))
    with torch.no_grad():
        theirs.prompt_encoder["default"].embedding.weight[:4] = ours.virtual_tokens
    ids, mask, decoder_ids, decoder_mask = padded_batch()
    batch = {"input_ids": ids, "attention_mask": mask}
    encoded, extended = encode_with_prompt(backbone, ours.virtual_tokens, batch)
    mine = lm_logits_of(backbone, encoded, extended, decoder_ids, decoder_mask)
    out = theirs(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids,
                 decoder_attention_mask=decoder_mask)
    real = decoder_mask.bool()
    torch.testing.assert_close(mine[real], out.logits[real], atol=1e-5, rtol=1e-5)
    loss_of(mine, decoder_ids, decoder_mask).backward()
    loss_of(out.logits, decoder_ids, decoder_mask).backward()
    torch.testing.assert_close(ours.virtual_tokens.grad, theirs.prompt_encoder["default"].embedding.weight.grad[:4],
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["t5", "bart"])
def test_frozen_weights_cast_once_on_an_encoder_decoder(kind, tmp_path):
    """cast_frozen_weights_once reaches the encoder-decoder's Linear layers too (T5's have no biases): a bf16 step
    casts no frozen weight and gives the same loss and gradient bit for bit."""
    from minitransformer import load_pretrained
    from minitransformer.model import Linear, cast_frozen_weights_once
    from methods.prompt_tuning import PromptTuning, PromptTuningConfig
    from methods.shared.prompting import encode_with_prompt
    from tests.test_precision_and_memory import Casts
    save_tiny(kind, tmp_path)

    def step(kept: bool):
        torch.manual_seed(0)
        backbone, tokenizer = load_pretrained(str(tmp_path))
        ours = PromptTuning(backbone, tokenizer, 2, PromptTuningConfig(num_virtual_tokens=4, init="random"),
                            verbalizer=LABEL_WORDS).train()
        frozen = {p.data_ptr() for m in backbone.modules() if isinstance(m, Linear) for p in m.parameters()}
        ids, mask, decoder_ids, decoder_mask = padded_batch()
        torch.manual_seed(1)
        with cast_frozen_weights_once(ours, torch.bfloat16 if kept else None), Casts() as casts:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                encoded, extended = encode_with_prompt(backbone, ours.virtual_tokens,
                                                       {"input_ids": ids, "attention_mask": mask})
                loss = loss_of(lm_logits_of(backbone, encoded, extended, decoder_ids, decoder_mask).float(),
                               decoder_ids, decoder_mask)
            loss.backward()
        return loss, ours.virtual_tokens.grad, sum(ptr in frozen for ptr in casts.cast)

    (loss, grad, cast), (loss_kept, grad_kept, cast_kept) = step(False), step(True)
    assert torch.equal(loss, loss_kept) and torch.equal(grad, grad_kept)
    assert cast > 0 and cast_kept == 0


def peft_slot(layer: int, num_layers: int) -> int:
    """The prefix slot peft's seq2seq prefix tuning gives decoder layer `layer` (see prefix_tuning.py)."""
    return 2 * layer % num_layers


@pytest.mark.parametrize("kind,layers,flat", [("t5", 2, True), ("t5", 3, True), ("t5", 2, False), ("bart", None, True),
                                              ("bart", None, False)])
def test_a_decoder_prefix_matches_peft_seq2seq_prefix_tuning(kind, layers, flat, tmp_path):
    from minitransformer import load_pretrained
    from methods.prefix_tuning import PrefixTuning, PrefixTuningConfig
    reference = save_tiny(kind, tmp_path, layers=layers)
    backbone, tokenizer = load_pretrained(str(tmp_path))
    L, P, H = backbone.config.num_decoder_layers, 3, backbone.config.hidden_size
    torch.manual_seed(1)
    ours = PrefixTuning(backbone, tokenizer, 2, PrefixTuningConfig(num_virtual_tokens=P, placement="decoder", flat=flat,
                                                                   mlp_hidden=16), verbalizer=LABEL_WORDS)
    theirs = peft.get_peft_model(reference, peft.PrefixTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=P,
                                                                     prefix_projection=not flat, encoder_hidden_size=16))
    encoder = theirs.prompt_encoder["default"]
    mine = ours.prefix["decoder"]
    slots = [peft_slot(j, L) for j in range(L)]
    rows = torch.cat([torch.arange(2 * s * H, 2 * (s + 1) * H) for s in slots])  # our layer j <- their slot 2j mod L
    with torch.no_grad():
        if flat:
            mine.flat_prefix.copy_(encoder.embedding.weight[:P][:, rows])
        else:
            mine.embedding.copy_(encoder.embedding.weight[:P])
            mine.mlp[0].weight.copy_(encoder.transform[0].weight), mine.mlp[0].bias.copy_(encoder.transform[0].bias)
            mine.mlp[2].weight.copy_(encoder.transform[2].weight[rows]), mine.mlp[2].bias.copy_(encoder.transform[2].bias[rows])
    theirs.eval(), ours.eval()
    ids, mask, decoder_ids, decoder_mask = padded_batch()
    encoded = backbone.encode(ids, mask)
    mine_logits = lm_logits_of(backbone, encoded, mask, decoder_ids, decoder_mask, decoder_prefix=ours.prefix()["decoder"])
    out = theirs(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids, decoder_attention_mask=decoder_mask)
    real = decoder_mask.bool()
    torch.testing.assert_close(mine_logits[real], out.logits[real], atol=1e-5, rtol=1e-5)
    loss_of(mine_logits, decoder_ids, decoder_mask).backward()
    loss_of(out.logits, decoder_ids, decoder_mask).backward()
    if flat:  # their slot s collects the gradient of every layer that reads it; unread slots get none
        expected = torch.zeros_like(encoder.embedding.weight.grad[:P])
        expected.index_add_(1, rows, mine.flat_prefix.grad)
        torch.testing.assert_close(encoder.embedding.weight.grad[:P], expected,
                                   atol=1e-5, rtol=1e-5)
        assert (L % 2 == 1) == bool((expected.view(P, L, -1).abs().sum((0, 2)) > 0).all())  # even L: slots unread
    else:
        torch.testing.assert_close(mine.embedding.grad, encoder.embedding.weight.grad[:P], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(mine.mlp[0].weight.grad, encoder.transform[0].weight.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["t5", "bart"])
def test_a_cross_prefix_is_what_transformers_computes_from_prefilled_cross_attention_keys(kind, tmp_path):
    """transformers' own cross-attention, handed [prefix ; K(encoder)] and [prefix ; V(encoder)] through its
    cache (and a mask with ones for the prefix), gives the logits of our cross prefix."""
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache
    from minitransformer import load_pretrained
    reference = save_tiny(kind, tmp_path)
    backbone, _ = load_pretrained(str(tmp_path))
    P = 3
    prefix = random_prefixes(backbone, torch.Generator().manual_seed(5), P, places=("cross",))["cross_prefix"]
    ids, mask, decoder_ids, decoder_mask = padded_batch()
    B = ids.shape[0]
    with torch.no_grad():
        encoded = backbone.encode(ids, mask)
        mine = lm_logits_of(backbone, encoded, mask, decoder_ids, decoder_mask, cross_prefix=prefix)
        memory = backbone.memory(encoded, mask, prefix)  # (k, v) per layer, prefix first
        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        for i, (k, v) in enumerate(memory.keys_values):
            cache.cross_attention_cache.update(k, v, i)
            cache.is_updated[i] = True
        their_encoder = reference.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
        out = reference(encoder_outputs=(their_encoder,), attention_mask=torch.cat([torch.ones(B, P, dtype=mask.dtype),
                                                                                    mask], 1),
                        decoder_input_ids=decoder_ids, decoder_attention_mask=decoder_mask, past_key_values=cache,
                        use_cache=True)
    real = decoder_mask.bool()
    torch.testing.assert_close(mine[real], out.logits[real], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind,method", [("t5", "prompt_tuning"), ("bart", "prompt_tuning"), ("t5", "prefix_tuning")])
def test_export_peft_writes_a_seq2seq_adapter_that_peft_loads_with_our_logits(kind, method, tmp_path):
    from minitransformer import load_pretrained
    from methods.export_peft import NotExportableError, export_peft
    from methods.prefix_tuning import PrefixTuning, PrefixTuningConfig
    from methods.prompt_tuning import PromptTuning, PromptTuningConfig
    from methods.shared.prompting import encode_with_prompt
    base = tmp_path / "base"
    base.mkdir()
    reference = save_tiny(kind, base, layers=3 if method == "prefix_tuning" else None)  # odd L: every slot is read
    backbone, tokenizer = load_pretrained(str(base))
    torch.manual_seed(2)
    ids, mask, decoder_ids, decoder_mask = padded_batch()
    if method == "prompt_tuning":
        ours = PromptTuning(backbone, tokenizer, 2, PromptTuningConfig(num_virtual_tokens=4, init="random"),
                            verbalizer=LABEL_WORDS)
        encoded, extended = encode_with_prompt(backbone, ours.virtual_tokens, {"input_ids": ids, "attention_mask": mask})
        mine = lm_logits_of(backbone, encoded, extended, decoder_ids, decoder_mask)
    else:
        with pytest.raises(NotExportableError, match="--placement decoder"):
            export_peft(PrefixTuning(backbone, tokenizer, 2, PrefixTuningConfig(num_virtual_tokens=3),
                                     verbalizer=LABEL_WORDS), tmp_path / "refused", str(base))
        ours = PrefixTuning(backbone, tokenizer, 2, PrefixTuningConfig(num_virtual_tokens=3, placement="decoder",
                                                                       mlp_hidden=16), verbalizer=LABEL_WORDS)
        mine = lm_logits_of(backbone, backbone.encode(ids, mask), mask, decoder_ids, decoder_mask,
                            decoder_prefix=ours.prefix()["decoder"])
    export_peft(ours.eval(), tmp_path / "export", str(base))
    loaded = peft.PeftModel.from_pretrained(reference, str(tmp_path / "export")).eval()
    with torch.no_grad():
        out = loaded(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids,
                     decoder_attention_mask=decoder_mask)
    real = decoder_mask.bool()
    torch.testing.assert_close(mine.detach()[real], out.logits[real], atol=1e-5, rtol=1e-5)


def word_level_t5(base, words):
    """A tiny random T5 saved in `base` with a lower-casing word-level tokenizer over `words`."""
    from tokenizers import Tokenizer as Backend, models, normalizers, pre_tokenizers, processors
    import transformers
    vocabulary = ["<pad>", "</s>", "<unk>"] + sorted(words)
    backend = Backend(models.WordLevel({w: i for i, w in enumerate(vocabulary)}, unk_token="<unk>"))
    backend.pre_tokenizer, backend.normalizer = pre_tokenizers.WhitespaceSplit(), normalizers.Lowercase()
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    base.mkdir()
    backend.save(str(base / "tokenizer.json"))
    torch.manual_seed(0)
    transformers.T5ForConditionalGeneration(transformers.T5Config(
        vocab_size=len(vocabulary), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        decoder_start_token_id=0, dropout_rate=0.0)).save_pretrained(base)
    return base


def tiny_t5_for_the_builtin_set(base):
    """A tiny random T5 whose vocabulary holds every word of the built-in sentiment set."""
    from data import load_task
    task = load_task("builtin_sentiment")
    return word_level_t5(base, {w for e in task.splits["train"] + task.splits["dev"] for w in e.text.lower().split()}
                         | set(task.verbalizer))


PIPELINE_METHODS = {"prompt_tuning": {"num_virtual_tokens": 4}, "prefix_tuning": {"num_virtual_tokens": 4},
                    "p_tuning_v2": {"num_virtual_tokens": 4, "placement": "encoder,cross"}, "lora": {},
                    "adapters": {}, "fine_tuning": {"mode": "full"}, "p_tuning": {},
                    "p_tuning_v2 (peft layout)": {"num_virtual_tokens": 4, "placement": "decoder"}}


@pytest.mark.parametrize("method", list(PIPELINE_METHODS))
def test_the_run_pipeline_trains_text_to_text_on_t5_and_saves_what_load_method_reads(method, tmp_path):
    """The methods' command-line path on a tiny T5 (a vocabulary of the built-in set's words): the loss
    falls, the record says so, and the saved method reloads with the same label scores."""
    from methods import registry
    from methods.shared.pipeline import RunOptions, load_method, run
    base = tiny_t5_for_the_builtin_set(tmp_path / "t5")
    config = registry.get(method.split(" ")[0]).config_class(**PIPELINE_METHODS[method])
    options = RunOptions(model=str(base), task="builtin_sentiment", max_steps=12, epochs=5, batch_size=16,
                         lr=3e-3 if method == "fine_tuning" else 3e-2, eval_every=6, max_length=32, out=str(tmp_path / "run"), progress=False,
                         skip_test=True)
    model, record = run(config, options)
    losses = [h["loss"] for h in record.history]
    assert record.outcome == "finished" and record.steps == 12 and losses[-1] < losses[0], losses
    reloaded, tokenizer = load_method(tmp_path / "run")
    batch = tokenizer.encode(["a great , moving film", "dull and tedious"])
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(batch), model.eval()(batch))


def test_methods_that_do_not_apply_to_an_encoder_decoder_say_why(tmp_path):
    from minitransformer import load_pretrained
    from methods.bitfit import BitFit, BitFitConfig
    from methods.fine_tuning import FineTuning, FineTuningConfig
    from methods.prefix_tuning import PrefixTuning, PrefixTuningConfig
    save_tiny("t5", tmp_path)
    backbone, tokenizer = load_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match="T5 has none"):
        BitFit(backbone, tokenizer, 2, BitFitConfig(), verbalizer=LABEL_WORDS)
    with pytest.raises(ValueError, match="no new head to train alone"):
        FineTuning(backbone, tokenizer, 2, FineTuningConfig(mode="head"), verbalizer=LABEL_WORDS)
    with pytest.raises(ValueError, match="--placement 'encoder,self'"):
        PrefixTuning(backbone, tokenizer, 2, PrefixTuningConfig(placement="encoder,self"), verbalizer=LABEL_WORDS)
    with pytest.raises(ValueError, match="one label word per label"):
        PrefixTuning(backbone, tokenizer, 2, PrefixTuningConfig(), verbalizer=None)


def test_zero_shot_hard_prompt_on_t5_scores_label_words_as_the_decoders_answer(tmp_path):
    """FLAN-T5's zero-shot mode: the template up to {mask} is the encoder's input (an instruction), and the
    label words are scored as answers; the scores equal transformers' log-likelihood of each answer."""
    from minitransformer import load_pretrained
    from methods.hard_prompt import HardPrompt, HardPromptConfig
    from data import Example, batches
    reference = save_tiny("t5", tmp_path)
    backbone, tokenizer = load_pretrained(str(tmp_path))
    template = "{text} w3 w4 {mask} w9"
    method = HardPrompt(backbone, tokenizer, 2, HardPromptConfig(templates=[template]), verbalizer=LABEL_WORDS)
    examples = [Example("w5 w6 w7", 0), Example("w8", 1)]
    batch = next(iter(batches(examples, tokenizer, 2, template=template)))
    assert batch["input_ids"][1, :4].tolist() == tokenizer.token_ids("w8 w3 w4") + [tokenizer.eos_id]  # cut at the slot
    with torch.no_grad():
        scores = method(batch)
        for c, word in enumerate(LABEL_WORDS):
            target = torch.tensor([[tokenizer.token_ids(word)[0], tokenizer.eos_id]] * 2)
            logits = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                               labels=target).logits
            expected = logits.log_softmax(-1).gather(-1, target[..., None]).squeeze(-1).sum(-1)
            torch.testing.assert_close(scores[:, c], expected, atol=1e-5, rtol=1e-5)


def test_compare_on_a_t5_runs_the_text_to_text_line_up(tmp_path):
    """methods.compare on encoder-decoders: the text-to-text line-up (a zero-shot hard prompt instead of a head,
    every PEFT method, full fine-tuning; no BitFit on T5, which has no biases), and end to end on a tiny T5 a
    zero-shot, a prompt and a LoRA run, each as its own command line with a record (every method's own
    command-line path on a T5 is the test above)."""
    import json
    import subprocess
    import sys
    from methods.lineup import SEQ2SEQ_METHODS, lineup_for
    names = ["zero_shot", "prompt_tuning", "p_tuning", "prefix_tuning", "p_tuning_v2", "bitfit", "adapters", "lora",
             "full_fine_tuning"]
    assert list(SEQ2SEQ_METHODS) == names
    assert list(lineup_for("facebook/bart-base")[0]) == names
    methods, left_out = lineup_for("t5-small")
    assert list(methods) == [n for n in names if n != "bitfit"] and "T5 has no biases" in left_out
    base = tiny_t5_for_the_builtin_set(tmp_path / "t5")
    assert list(lineup_for(str(base))[0]) == list(methods)  # a local folder: read from its config.json
    out = tmp_path / "compare"
    done = subprocess.run([sys.executable, "-m", "methods.compare", "--model", str(base), "--task",
                           "builtin_sentiment", "--methods", "zero_shot,prompt_tuning,lora", "--max-steps", "3",
                           "--eval-every", "3", "--max-length", "32", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    records = json.loads((out / "results.json").read_text())["records"]
    assert [r["method"] for r in records] == ["zero_shot", "prompt_tuning", "lora"]
    assert all("error" not in r for r in records), [r.get("error") for r in records]
    assert records[0]["steps"] == 0 and all(r["steps"] == 3 for r in records[1:])  # zero-shot trains nothing
    bitfit = subprocess.run([sys.executable, "-m", "methods.compare", "--model", str(base), "--methods", "bitfit"],
                            capture_output=True, text=True, timeout=120)
    assert bitfit.returncode == 2 and "T5 has no biases" in bitfit.stderr


def test_prefix_tuning_trains_table_to_text_on_t5_and_scores_bleu_on_generated_text(tmp_path, data_dir):
    """E2E on an encoder-decoder through the run pipeline: the table to the encoder, the reference to the decoder
    (teacher forcing, seq2seq_batches), prefixes in all three places; dev BLEU on greedy, cached generations.
    (The shared E2E folder has no training file: a data folder made here holds a slice of the dev file as both.)"""
    from data import load_task
    from methods.prefix_tuning import PrefixTuningConfig
    from methods.shared.pipeline import RunOptions, run
    lines = (data_dir / "e2e" / "devset.csv").read_text().splitlines()[:41]  # the header and 40 references
    (tmp_path / "data" / "e2e").mkdir(parents=True)
    for name in ("trainset.csv", "devset.csv", "testset_w_refs.csv"):
        (tmp_path / "data" / "e2e" / name).write_text("\n".join(lines) + "\n")
    tables = load_task("e2e", str(tmp_path / "data")).splits["train"]
    base = word_level_t5(tmp_path / "t5", {w for t in tables for text in [t.source, *t.references]
                                           for w in text.lower().split()})
    options = RunOptions(model=str(base), task="e2e", data_dir=str(tmp_path / "data"), epochs=12, batch_size=8,
                         lr=5e-2, limit_dev=4, max_length=48, max_new_tokens=10, out=str(tmp_path / "run"),
                         progress=False)
    model, record = run(PrefixTuningConfig(num_virtual_tokens=3, flat=True), options)
    assert list(model.prefix) == ["encoder", "decoder", "cross"]
    assert record.metric == "bleu" and record.steps == 12 * 5 and 0 <= record.dev_metric <= 1
    assert record.history[-1]["loss"] < record.history[0]["loss"]
    assert len(record.details["samples"]) == 4 and any(record.details["samples"])  # it writes words


def test_an_encoder_prefix_is_what_a_hand_written_t5_encoder_with_prepended_keys_computes(tmp_path):
    """peft has no encoder prefix and transformers' T5 encoder takes no past keys, so the reference is written
    out here from transformers' own modules (its norms, projections, relative-position bias with the prefix
    counted as P earlier positions, feed-forward); only the concatenation of the prefix is ours."""
    from minitransformer import load_pretrained
    reference = save_tiny("t5", tmp_path)
    backbone, _ = load_pretrained(str(tmp_path))
    c, P = backbone.config, 3
    prefix = random_prefixes(backbone, torch.Generator().manual_seed(6), P, places=("encoder",))["encoder_prefix"]
    ids, mask, _, _ = padded_batch()
    (B, T), H = ids.shape, c.num_heads
    with torch.no_grad():
        mine = backbone.encode(ids, mask, prefix=prefix)
        x = reference.shared(ids)
        allowed = torch.cat([torch.ones(B, P, dtype=torch.bool), mask.bool()], 1)[:, None, None, :]
        blocks = reference.encoder.block
        bias = blocks[0].layer[0].SelfAttention.compute_bias(T, P + T, past_seen_tokens=P)  # (1, H, T, P+T)
        bias = bias.masked_fill(~allowed, torch.finfo(x.dtype).min)
        for block, (prefix_keys, prefix_values) in zip(blocks, prefix):
            attention = block.layer[0].SelfAttention
            h = block.layer[0].layer_norm(x)
            split = lambda t: t.view(B, T, H, c.head_dim).transpose(1, 2)
            q = split(attention.q(h))
            k = torch.cat([prefix_keys.expand(B, -1, -1, -1), split(attention.k(h))], 2)
            v = torch.cat([prefix_values.expand(B, -1, -1, -1), split(attention.v(h))], 2)
            weights = (q @ k.transpose(-1, -2) + bias).softmax(-1)  # T5: no 1/sqrt(d)
            x = x + attention.o((weights @ v).transpose(1, 2).reshape(B, T, -1))
            x = block.layer[1](x)  # transformers' feed-forward sublayer (norm, DenseReluDense, residual)
        expected = reference.encoder.final_layer_norm(x)
    real = mask.bool()
    torch.testing.assert_close(mine[real], expected[real], atol=1e-5, rtol=1e-5)


def test_eject_folds_every_places_mlp_away_with_the_same_label_scores(tmp_path):
    from minitransformer import load_pretrained
    from methods.prefix_tuning import PrefixTuning, PrefixTuningConfig
    save_tiny("bart", tmp_path)
    backbone, tokenizer = load_pretrained(str(tmp_path))
    torch.manual_seed(3)
    method = PrefixTuning(backbone, tokenizer, 2, PrefixTuningConfig(num_virtual_tokens=3, mlp_hidden=16),
                          verbalizer=LABEL_WORDS).eval()
    batch = tokenizer.encode(["w4 w5 w6", "w7"])
    with torch.no_grad():
        before = method(batch)
        trainable_before = sum(p.numel() for p in method.parameters() if p.requires_grad)
        method.eject()
        after = method(batch)
    assert method.config.flat and all(not place.reparameterized for place in method.prefix.values())
    assert sum(p.numel() for p in method.parameters() if p.requires_grad) < trainable_before
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
