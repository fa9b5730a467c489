"""minitransformer is numerically the reference model: parity with transformers on the same weights."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from minitransformer import Transformer, TransformerConfig, generate, load_pretrained
from minitransformer.model import FEW_ROWS, decoding_layout, linear
from tests.conftest import build_checkpoint

transformers = pytest.importorskip("transformers")
from transformers import DynamicCache  # noqa: E402

TOL = dict(rtol=1e-5, atol=1e-5)
SENTENCES = ["the movie was great", "a boring plot , but the actors were wonderful and the food was fine", "awful"]


def reference_forward(kind, hf_model, **kwargs):
    """Last hidden state and vocabulary logits of the transformers model."""
    out = hf_model(**kwargs, output_hidden_states=True)
    return out.hidden_states[-1], out.logits


def ours_forward(model, **kwargs):
    hidden = model(**kwargs)
    return hidden, model.lm_logits(hidden)


def masked(x, mask):
    return x * mask[..., None]


@pytest.mark.parametrize("kind", ["bert", "roberta", "gpt2"])
@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
def test_hidden_states_and_logits_match_transformers(kind, safe, tmp_path):
    hf_model = build_checkpoint(kind, tmp_path / kind, safe=safe)
    assert (tmp_path / kind / ("model.safetensors" if safe else "pytorch_model.bin")).exists()
    model, tokenizer = load_pretrained(str(tmp_path / kind))
    pairs = ["it was good", "not bad", "the end"] if kind == "bert" else None
    batch = tokenizer.encode(SENTENCES, pairs)
    if kind == "gpt2":
        del batch["token_type_ids"]
    if kind == "bert":
        assert batch["token_type_ids"].any(), "the test should exercise token types"
    assert not batch["attention_mask"].all(), "the test should exercise padding"
    with torch.no_grad():
        theirs = reference_forward(kind, hf_model, **batch)
        ours = ours_forward(model, **batch)
    m = batch["attention_mask"]
    torch.testing.assert_close(masked(ours[0], m), masked(theirs[0], m), **TOL, msg="hidden states differ")
    torch.testing.assert_close(masked(ours[1], m), masked(theirs[1], m), **TOL, msg="vocabulary logits differ")


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_padding_is_skipped_and_each_row_equals_its_own_run(kind, tiny_checkpoints):
    """The blocks run on the real tokens only (Padding): a padded row gives what the row alone gives,
    and the padding positions hold zeros, not the numbers of a computation that never happened."""
    model, tokenizer = load_pretrained(str(tiny_checkpoints[kind][0]))
    model.eval()
    batch = tokenizer.encode(SENTENCES)  # right padding: a row's real tokens keep positions 0, 1, ...
    batch.pop("token_type_ids")
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        together = model(**batch)
        for row, sentence in enumerate(SENTENCES):
            alone = model(input_ids=tokenizer.encode([sentence])["input_ids"])
            torch.testing.assert_close(together[row, real[row]], alone[0], **TOL,
                                       msg=f"row {row}: padding changed a real token's hidden state")
    assert together[~real].abs().sum() == 0, "padding positions must hold zeros"


def test_dropout_keeps_each_number_with_probability_1_minus_p_and_rescales():
    from minitransformer.model import Dropout
    dropout, x = Dropout(0.25), torch.ones(200, 500)
    assert torch.equal(dropout.eval()(x), x), "eval mode: identity"
    torch.manual_seed(0)
    dropped = dropout.train()(x)
    assert abs(float((dropped == 0).float().mean()) - 0.25) < 0.01, "a quarter of the numbers are zeroed"
    assert torch.allclose(dropped[dropped != 0], torch.tensor(1 / 0.75)), "the kept ones are scaled by 1 / (1 - p)"


def test_on_a_gpu_attention_avoids_cudnn_and_dropout_is_the_fused_kernel(monkeypatch):
    """cuDNN's attention plans every new input shape (163 ms a step on an H200 instead of 17); CPU keeps its flags."""
    from minitransformer.model import Dropout, attention_kernels
    before = torch.backends.cuda.cudnn_sdp_enabled()
    with attention_kernels(torch.device("cpu")):
        assert torch.backends.cuda.cudnn_sdp_enabled() == before
    with attention_kernels(torch.device("cuda")):
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()
    assert torch.backends.cuda.cudnn_sdp_enabled() == before
    calls = []
    monkeypatch.setattr(torch.nn.functional, "dropout", lambda x, *a, **k: calls.append(x.device.type) or x)
    dropout = Dropout(0.1).train()
    dropout(torch.ones(4, device="meta"))  # any device but the CPU takes F.dropout
    dropout(torch.ones(4))                 # the CPU draws its own mask
    assert calls == ["meta"]


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_training_attention_by_hand_equals_sdpa(kind, tiny_checkpoints):
    """On CPU, training with attention dropout computes attention by hand (faster dropout): with a dropout
    probability too small to drop anything it must give what SDPA gives, padding and causal mask included."""
    model, tokenizer = load_pretrained(str(tiny_checkpoints[kind][0]))
    batch = tokenizer.encode(SENTENCES)
    batch.pop("token_type_ids")
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 1e-12 if module in [layer.attention.dropout for layer in model.layers] else 0.0
    with torch.no_grad():
        by_hand = model.train()(**batch)
        sdpa = model.eval()(**batch)
    torch.testing.assert_close(by_hand, sdpa, **TOL, msg="attention by hand differs from SDPA")


@pytest.mark.parametrize("kind", ["bert", "roberta", "gpt2"])
def test_fast_paths_give_the_plain_path_outputs_and_gradients(kind, tiny_checkpoints):
    """config.fast switches the speed devices (padding skipped in the blocks, the rand dropout draw, attention by
    hand on CPU) for the plain padded path: the same hidden states at the real tokens, the same gradients for the
    inputs a prompt method trains (inputs_embeds and a per-layer prefix), in eval and in training without dropout."""
    runs = {}
    for fast in (True, False):
        model, tokenizer = load_pretrained(str(tiny_checkpoints[kind][0]), fast=fast)
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0  # same draws are not promised, only the same distribution (see Dropout)
        batch = tokenizer.encode(SENTENCES)
        types = batch.pop("token_type_ids") if kind != "gpt2" else None
        embeds = model.word_embeddings(batch["input_ids"]).detach().requires_grad_(True)
        prefix = [tuple(t.requires_grad_(True) for t in kv) for kv in random_prefix(model, len(SENTENCES), 3)]
        model.train()
        hidden = model(inputs_embeds=embeds, attention_mask=batch["attention_mask"], token_type_ids=types,
                       prefix=prefix)
        (hidden * batch["attention_mask"][..., None]).pow(2).sum().backward()
        with torch.no_grad():
            evaluated = model.eval()(**batch, token_type_ids=types) if types is not None else model.eval()(**batch)
        runs[fast] = (hidden.detach(), evaluated, embeds.grad, [kv[0].grad for kv in prefix])
    (fast_hidden, fast_eval, fast_embeds, fast_prefix), (plain_hidden, plain_eval, plain_embeds, plain_prefix) = \
        runs[True], runs[False]
    torch.testing.assert_close(fast_hidden, plain_hidden, **TOL, msg="training outputs differ between the paths")
    torch.testing.assert_close(fast_eval, plain_eval, **TOL, msg="eval outputs differ between the paths")
    torch.testing.assert_close(fast_embeds, plain_embeds, **TOL, msg="input gradients differ between the paths")
    for fast_grad, plain_grad in zip(fast_prefix, plain_prefix):
        torch.testing.assert_close(fast_grad, plain_grad, **TOL, msg="prefix gradients differ between the paths")
    assert not any(m.fast for m in load_pretrained(str(tiny_checkpoints[kind][0]), fast=False)[0].modules()
                   if hasattr(m, "fast")), "fast=False must reach every module"


def test_gpt2_greedy_generation_matches_transformers(tiny_checkpoints):
    directory, hf_model = tiny_checkpoints["gpt2"]
    model, tokenizer = load_pretrained(str(directory))
    batch = tokenizer.encode(["the movie was", "a terrible film with a"], padding_side="left")
    assert not batch["attention_mask"].all(), "left padding must be exercised"
    theirs = hf_model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                               max_new_tokens=20, do_sample=False, pad_token_id=0, eos_token_id=None)
    ours = generate(model, batch["input_ids"], batch["attention_mask"], max_new_tokens=20, eos_id=-1)
    assert torch.equal(ours, theirs), f"greedy ids differ:\n{ours}\n{theirs}"


class MatrixProducts(TorchDispatchMode):
    """Records, for every matrix product that runs inside it, the op's name and its output's shape."""

    OPS = {torch.ops.aten.mm: "mm", torch.ops.aten.addmm: "addmm",
           getattr(torch.ops.mkldnn, "_linear_pointwise", None): "oneDNN"}  # None in a build without oneDNN

    def __init__(self):
        super().__init__()
        self.products: list[tuple[str, tuple[int, ...]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket in self.OPS:
            self.products.append((self.OPS[func.overloadpacket], tuple(out.shape)))
        return out


@pytest.fixture(params=["oneDNN", "addmm"])
def decoding_form(request, monkeypatch):
    """Each form `decoding_layout` may give: oneDNN's blocked copy, or (W @ x.T).T where PyTorch has no oneDNN."""
    if request.param == "oneDNN" and not torch.backends.mkldnn.is_available():
        pytest.skip("this PyTorch has no oneDNN")
    if request.param == "addmm":
        monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    return request.param


def test_linear_is_f_linear_outside_generation_and_a_faster_form_inside(decoding_form):
    g = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(512, 384, generator=g) / 384 ** 0.5, torch.randn(512, generator=g)  # outputs ~ 1
    few, many = torch.randn(8, 1, 384, generator=g), torch.randn(FEW_ROWS + 1, 384, generator=g)
    with torch.no_grad():
        assert torch.equal(linear(few, weight, bias), F.linear(few, weight, bias)), "outside: F.linear, bit for bit"
        with decoding_layout([weight, weight]), MatrixProducts() as recorded:  # as in generate(); listed twice
            out = linear(few, weight, bias)
            unbiased = linear(few, weight)
        shape = (8, 512) if decoding_form == "oneDNN" else (512, 8)  # (W @ x.T) comes out transposed
        unbiased_op = "mm" if decoding_form == "addmm" else decoding_form
        assert recorded.products == [(decoding_form, shape), (unbiased_op, shape)], f"got {recorded.products}"
        assert out.shape == (8, 1, 512) and out.is_contiguous() and not hasattr(weight, "decoding_layout")
        torch.testing.assert_close(out, F.linear(few, weight, bias), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(unbiased, F.linear(few, weight), rtol=1e-5, atol=1e-5)
        with decoding_layout([weight]):
            # Many rows, or a small weight: F.linear. A weight changed inside: its copy is stale, F.linear.
            assert torch.equal(linear(many, weight, bias), F.linear(many, weight, bias))
            small = weight[:64, :64].contiguous()
            with decoding_layout([small]):
                assert not hasattr(small, "decoding_layout"), "a weight that sits in the caches gets no form"
            weight.mul_(2)
            assert torch.equal(linear(few, weight, bias), F.linear(few, weight, bias)), "a stale copy was used"
            with decoding_layout([weight]):  # nested: the inner one drops the copy, the outer one leaves cleanly
                pass
        with decoding_layout([weight], blocked_copies=False), MatrixProducts() as recorded:  # a short generation
            out = linear(few, weight, bias)
        torch.testing.assert_close(out, F.linear(few, weight, bias), rtol=1e-5, atol=1e-5)
        assert recorded.products == [("addmm", (512, 8))], f"no copies: (W @ x.T).T, got {recorded.products}"
        with torch.autocast("cpu", dtype=torch.bfloat16), decoding_layout([weight]):
            assert not hasattr(weight, "decoding_layout"), "under autocast the rows are not fp32: no form"
    with decoding_layout([weight]):  # gradients on: F.linear (oneDNN's op has no backward)
        rows = few.clone().requires_grad_()
        assert torch.equal(linear(rows, weight, bias), F.linear(few, weight, bias))
        linear(rows, weight, bias).sum().backward()
    torch.testing.assert_close(rows.grad, weight.sum(0).expand_as(few), rtol=1e-5, atol=1e-5)


def test_gpt2_generation_through_the_faster_forms_matches_transformers(decoding_form, tmp_path):
    """A GPT-2 wide enough (384) for every projection and the LM head to take a form of `linear`'s own while
    decoding: the greedy ids are still those of transformers."""
    from tests.conftest import build_tokenizer
    build_tokenizer("gpt2", tmp_path)
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=400, n_embd=384, n_layer=2, n_head=4, n_positions=64,
                                     bos_token_id=0, eos_token_id=0)
    hf_model = transformers.GPT2LMHeadModel(config).eval()
    hf_model.save_pretrained(tmp_path)
    model, tokenizer = load_pretrained(str(tmp_path))
    batch = tokenizer.encode(["the movie was", "a terrible film with a"], padding_side="left")
    theirs = hf_model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                               max_new_tokens=16, do_sample=False, pad_token_id=0, eos_token_id=None)
    with MatrixProducts() as recorded:  # 16 new tokens: the blocked copies are made (BLOCKED_COPIES_FROM)
        ours = generate(model, batch["input_ids"], batch["attention_mask"], max_new_tokens=16, eos_id=-1)
    assert torch.equal(ours, theirs), f"greedy ids differ:\n{ours}\n{theirs}"
    ops = {"oneDNN"} if decoding_form == "oneDNN" else {"addmm", "mm"}  # the LM head has no bias: mm
    shapes = {shape if decoding_form == "oneDNN" else shape[::-1] for op, shape in recorded.products if op in ops}
    assert {(2, 400), (2, 4 * 384), (2, 384)} <= shapes, \
        f"decoding steps must multiply the LM head and the layers' weights by the rows, got {shapes}"
    assert not any(hasattr(p, "decoding_layout") for p in model.parameters())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert generate(model, batch["input_ids"], batch["attention_mask"], max_new_tokens=3).shape[1] == \
            batch["input_ids"].shape[1] + 3


def random_prefix(model, batch_size, length, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = model.config
    shape = (batch_size, c.num_heads, length, c.head_dim)
    return [(torch.randn(shape, generator=g), torch.randn(shape, generator=g)) for _ in range(c.num_layers)]


@pytest.mark.parametrize("kind", ["bert", "roberta", "gpt2"])
def test_prefix_matches_past_key_values(kind, tiny_checkpoints):
    directory, hf_model = tiny_checkpoints[kind]
    model, tokenizer = load_pretrained(str(directory))
    batch = tokenizer.encode(SENTENCES)
    batch.pop("token_type_ids")
    P = 5
    prefix = random_prefix(model, len(SENTENCES), P)
    cache = DynamicCache()
    for i, (k, v) in enumerate(prefix):
        cache.update(k.clone(), v.clone(), i)
    mask_with_prefix = torch.cat([torch.ones(len(SENTENCES), P, dtype=torch.long), batch["attention_mask"]], 1)
    with torch.no_grad():
        theirs = hf_model(input_ids=batch["input_ids"], attention_mask=mask_with_prefix, past_key_values=cache,
                          output_hidden_states=True)
        ours = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], prefix=prefix)
    m = batch["attention_mask"]
    assert ours.shape[1] == batch["input_ids"].shape[1], "a prefix must not add output positions"
    torch.testing.assert_close(masked(ours, m), masked(theirs.hidden_states[-1], m), **TOL)
    torch.testing.assert_close(masked(model.lm_logits(ours), m), masked(theirs.logits, m), **TOL)


@pytest.mark.parametrize("kind", ["bert", "roberta", "gpt2"])
def test_inputs_embeds_match_transformers(kind, tiny_checkpoints):
    directory, hf_model = tiny_checkpoints[kind]
    model, tokenizer = load_pretrained(str(directory))
    batch = tokenizer.encode(SENTENCES[:1])  # one row: RoBERTa's inputs_embeds positions ignore padding
    g = torch.Generator().manual_seed(1)
    prompt = torch.randn(1, 4, model.config.hidden_size, generator=g)  # a soft prompt of 4 vectors
    embeds = torch.cat([prompt, model.word_embeddings(batch["input_ids"])], 1)
    with torch.no_grad():
        theirs = hf_model(inputs_embeds=embeds, output_hidden_states=True).hidden_states[-1]
        ours = model(inputs_embeds=embeds)
    torch.testing.assert_close(ours, theirs, **TOL)


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_padded_inputs_embeds_with_token_types_match_transformers(kind, tiny_checkpoints):
    """A soft prompt in front of a padded batch (mask and token types cover the prompt), as prompt tuning runs it."""
    directory, hf_model = tiny_checkpoints[kind]
    model, tokenizer = load_pretrained(str(directory))
    batch = tokenizer.encode(SENTENCES, ["it was good", "not bad", "the end"] if kind == "bert" else None)
    B, n = len(SENTENCES), 4
    prompt = torch.randn(1, n, model.config.hidden_size, generator=torch.Generator().manual_seed(1)).expand(B, -1, -1)
    inputs = {"inputs_embeds": torch.cat([prompt, model.word_embeddings(batch["input_ids"])], 1),
              "attention_mask": torch.cat([torch.ones(B, n, dtype=torch.long), batch["attention_mask"]], 1)}
    if kind == "bert":
        assert batch["token_type_ids"].any(), "the test should exercise token types"
        inputs["token_type_ids"] = torch.cat([torch.zeros(B, n, dtype=torch.long), batch["token_type_ids"]], 1)
    with torch.no_grad():
        theirs = hf_model(**inputs, output_hidden_states=True).hidden_states[-1]
        ours = model(**inputs)
    m = inputs["attention_mask"]
    torch.testing.assert_close(masked(ours, m), masked(theirs, m), **TOL, msg="real-token states differ (1e-5)")


def test_minilm_matches_transformers_bert(minilm_dir):
    from transformers import BertModel
    sentences = ["a gripping , beautifully acted drama .", "dull .",
                 "the plot is predictable , yet the film is never less than charming and the cast is superb ."]
    model, tokenizer = load_pretrained("all-MiniLM-L6-v2")
    hf_model = BertModel.from_pretrained(minilm_dir).eval()
    batch = tokenizer.encode(sentences)
    with torch.no_grad():
        theirs = hf_model(**batch)
        ours = model(**batch)
    m = batch["attention_mask"]
    assert (masked(ours, m) - masked(theirs.last_hidden_state, m)).abs().max() < 1e-4
    torch.testing.assert_close(model.pool(ours[:, 0]), theirs.pooler_output, rtol=1e-4, atol=1e-4)


def test_generation_with_prefix_equals_decoding_without_cache(tiny_checkpoints):
    model, tokenizer = load_pretrained(str(tiny_checkpoints["gpt2"][0]))
    batch = tokenizer.encode(["the movie was", "what a lovely day to"], padding_side="left")
    prefix = random_prefix(model, 1, 3)  # one prefix shared by the batch
    generated = generate(model, batch["input_ids"], batch["attention_mask"], max_new_tokens=6, eos_id=-1,
                         prefix=prefix)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    for _ in range(6):  # recompute the whole sequence each step, no cache
        positions = (3 + mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        hidden = model(ids, attention_mask=mask, position_ids=positions, prefix=prefix)
        next_token = model.lm_logits(hidden[:, -1]).argmax(-1, keepdim=True)
        ids, mask = torch.cat([ids, next_token], 1), torch.cat([mask, torch.ones_like(next_token)], 1)
    assert torch.equal(generated, ids)


def test_sampling_is_seeded_and_respects_top_k(tiny_checkpoints):
    model, tokenizer = load_pretrained(str(tiny_checkpoints["gpt2"][0]))
    ids = tokenizer.encode(["the movie was"])["input_ids"]
    run = lambda seed, k: generate(model, ids, max_new_tokens=8, temperature=1.0, top_k=k, eos_id=-1,
                                   generator=torch.Generator().manual_seed(seed))
    assert torch.equal(run(0, 5), run(0, 5)), "same seed, same sample"
    greedy = generate(model, ids, max_new_tokens=8, eos_id=-1)
    assert torch.equal(run(0, 1), greedy), "top_k=1 sampling is greedy decoding"


def test_generation_stops_at_eos(tiny_checkpoints):
    model, tokenizer = load_pretrained(str(tiny_checkpoints["gpt2"][0]))
    ids = tokenizer.encode(["the movie was"])["input_ids"]
    first = generate(model, ids, max_new_tokens=1, eos_id=-1)[0, -1].item()
    out = generate(model, ids, max_new_tokens=10, eos_id=first)
    assert out.shape[1] == ids.shape[1] + 1 and out[0, -1] == first


def test_batched_generation_pads_a_finished_row_until_all_stop(tiny_checkpoints):
    model, tokenizer = load_pretrained(str(tiny_checkpoints["gpt2"][0]))
    batch = tokenizer.encode(["the movie was", "a terrible film with a"], padding_side="left")
    T = batch["input_ids"].shape[1]
    # Sampling (seeded) so the two rows differ: a finished row still draws, so the other row's draws stay the same.
    run = lambda seed, **kw: generate(model, batch["input_ids"], batch["attention_mask"], max_new_tokens=6,
                                      temperature=1.0, generator=torch.Generator().manual_seed(seed), **kw)
    for seed in range(20):  # find a run whose row 0 makes, as its second new token, one that row 1 never makes
        free = run(seed, eos_id=-1)
        eos = free[0, T + 1].item()
        if eos not in free[1, T:].tolist() and eos != free[0, T].item():
            break
    else:
        pytest.fail("no seed gave row 0 a token of its own")
    out = run(seed, eos_id=eos, pad_id=0)
    assert torch.equal(out[0, :T + 2], free[0, :T + 2]), "row 0 is the same up to and including its eos"
    assert out[0, T + 2:].tolist() == [0] * (out.shape[1] - T - 2), "after its eos a row is filled with pad_id"
    assert torch.equal(out[1], free[1]), "the other row goes on, unaffected"


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_generation_on_either_side_gives_each_rows_own_ids(side, tiny_checkpoints):
    """A right-padded batch would read its first new token at the padding (peft only warns): it is moved to left
    padding, so either side gives, row by row, the ids that row gets alone (greedy, real tokens' positions)."""
    model, tokenizer = load_pretrained(str(tiny_checkpoints["gpt2"][0]))
    batch = tokenizer.encode(SENTENCES, padding_side=side)
    out = generate(model, batch["input_ids"], batch["attention_mask"], max_new_tokens=5, eos_id=-1)
    T = batch["input_ids"].shape[1]
    for row, sentence in enumerate(SENTENCES):
        alone = tokenizer.encode([sentence])["input_ids"]
        expected = generate(model, alone, max_new_tokens=5, eos_id=-1)[0, alone.shape[1]:]
        assert out[row, T:].tolist() == expected.tolist(), f"{side} padding: row {row} continued differently"


def test_gpt2_reads_the_last_real_token_whatever_the_padding_side(tiny_checkpoints):
    """A GPT-2 head reads each row's last real token: left- and right-padded batches give the same logits there,
    and they are transformers' (given the same positions, which count real tokens only)."""
    from methods.shared.prompting import last_real_token
    directory, reference = tiny_checkpoints["gpt2"]
    model, tokenizer = load_pretrained(str(directory))
    picked = {}
    for side in ("left", "right"):
        batch = tokenizer.encode(SENTENCES, padding_side=side)
        batch.pop("token_type_ids")
        last = last_real_token(batch["attention_mask"])
        with torch.no_grad():
            ours = model.lm_logits(model(**batch))[torch.arange(len(SENTENCES)), last]
            positions = (batch["attention_mask"].cumsum(1) - 1).clamp(min=0)
            theirs = reference(**batch, position_ids=positions).logits[torch.arange(len(SENTENCES)), last]
        torch.testing.assert_close(ours, theirs, **TOL, msg=f"{side} padding: the logits at the last real token differ")
        picked[side] = ours
    torch.testing.assert_close(picked["left"], picked["right"], **TOL, msg="the padding side changed what is read")


# ---- tokenizers -------------------------------------------------------------------------------

def test_minilm_tokenizer_matches_transformers(minilm_dir):
    from transformers import AutoTokenizer
    _, ours = load_pretrained("all-MiniLM-L6-v2")
    theirs = AutoTokenizer.from_pretrained(minilm_dir)
    texts = ["Hello, World! It's a gripping drama.", "naïve café über-long tokenization", "x"]
    pairs = ["Is it good?", "a much longer second sentence that goes on and on and on", "y"]
    for kwargs in (dict(), dict(max_length=6), dict(pairs=pairs), dict(pairs=pairs, max_length=12)):
        mine = ours.encode(texts, kwargs.get("pairs"), max_length=kwargs.get("max_length"))
        ref = theirs(texts, kwargs.get("pairs"), padding=True, truncation="max_length" in kwargs,
                     max_length=kwargs.get("max_length"), return_tensors="pt")
        for key in ("input_ids", "attention_mask", "token_type_ids"):
            assert torch.equal(mine[key], ref[key]), f"{key} differ for {kwargs}"
    for role in ("mask", "cls", "sep", "pad", "unk"):
        assert getattr(ours, f"{role}_id") == getattr(theirs, f"{role}_token_id"), f"{role} id differs"


@pytest.mark.parametrize("kind", ["gpt2", "roberta"])
def test_byte_level_bpe_tokenizer_matches_transformers(kind, tiny_checkpoints):
    from transformers import GPT2TokenizerFast, RobertaTokenizerFast
    directory = tiny_checkpoints[kind][0]
    _, ours = load_pretrained(str(directory))
    cls = GPT2TokenizerFast if kind == "gpt2" else RobertaTokenizerFast
    theirs = cls.from_pretrained(directory)
    texts = ["the movie was great!", " a  terrible film", "naïve"]
    pairs = ["it was good", "not bad at all , the food was awful", "x"] if kind == "roberta" else None
    for max_length, pairs in [(m, p) for m in (None, 6) for p in ([None, pairs] if pairs else [None])]:
        mine = ours.encode(texts, pairs, max_length=max_length)
        for row, text in enumerate(texts):
            ref = theirs(text, pairs[row] if pairs else None, truncation=max_length is not None,
                         max_length=max_length)["input_ids"]
            assert mine["input_ids"][row, :len(ref)].tolist() == ref
            assert mine["attention_mask"][row].sum() == len(ref)
    assert ours.is_byte_level and ours.token_ids(" great") != ours.token_ids("great")
    assert ours.decode(ours.token_ids("the movie was great")) == "the movie was great"


# ---- bad input --------------------------------------------------------------------------------

def test_unknown_model_name_offline_says_what_it_tried(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="not a local directory.*Hugging Face hub"):
        load_pretrained("no-such-model-xyz")


def test_unsupported_model_type_lists_supported():
    with pytest.raises(ValueError, match="supported: bert, roberta, gpt2"):
        TransformerConfig.from_hf({"model_type": "t5"})


def test_missing_tensor_is_named(tiny_checkpoints, tmp_path):
    from safetensors.torch import load_file, save_file
    source = tiny_checkpoints["bert"][0]
    for f in source.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    weights = load_file(str(source / "model.safetensors"))
    missing = next(k for k in weights if "layer.1.attention.self.value.weight" in k)
    del weights[missing]
    save_file(weights, str(tmp_path / "model.safetensors"))
    with pytest.raises(KeyError, match="encoder.layer.1.attention.self.value.weight"):
        load_pretrained(str(tmp_path))


def test_unexpected_tensor_is_named(tiny_checkpoints, tmp_path):
    from safetensors.torch import load_file, save_file
    source = tiny_checkpoints["gpt2"][0]
    for f in source.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    weights = load_file(str(source / "model.safetensors"))
    weights["transformer.h.0.attn.rotary.weight"] = torch.zeros(2)
    save_file(weights, str(tmp_path / "model.safetensors"))
    with pytest.raises(KeyError, match="rotary"):
        load_pretrained(str(tmp_path))


def test_input_longer_than_position_table(tiny_checkpoints):
    model, _ = load_pretrained(str(tiny_checkpoints["bert"][0]))
    with pytest.raises(ValueError, match="position table has 64 entries"):
        model(torch.ones(1, 65, dtype=torch.long))
    prefix = random_prefix(model, 1, 10)
    with pytest.raises(ValueError, match="after a prefix of 10"):
        model(torch.ones(1, 60, dtype=torch.long), prefix=prefix)


def test_inputs_embeds_of_wrong_width(tiny_checkpoints):
    model, _ = load_pretrained(str(tiny_checkpoints["bert"][0]))
    with pytest.raises(ValueError, match="width 16.*hidden size is 32"):
        model(inputs_embeds=torch.zeros(1, 3, 16))


def test_encoder_without_mlm_head_says_so(minilm_dir):
    model, _ = load_pretrained("all-MiniLM-L6-v2")
    with pytest.raises(ValueError, match="no masked-LM head"):
        model.lm_logits(torch.zeros(1, 384))


def test_config_reads_gpt2_defaults():
    config = TransformerConfig.from_hf(json.loads(json.dumps({
        "model_type": "gpt2", "vocab_size": 50257, "n_embd": 768, "n_layer": 12, "n_head": 12,
        "n_positions": 1024, "n_inner": None, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5})))
    assert config.intermediate_size == 3072 and config.is_decoder and config.type_vocab_size == 0
    gpt2_small = sum(p.numel() for p in Transformer(config).parameters())
    assert gpt2_small == 124_439_808, f"GPT-2 small has 124,439,808 parameters (LM head tied), got {gpt2_small:,}"


def test_the_growing_cache_writes_in_place_and_refuses_to_overflow():
    from minitransformer.model import GrowingKeyValue
    keys, values = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    cache = GrowingKeyValue(keys, values, capacity=6)
    assert torch.equal(cache[0], keys) and torch.equal(cache[1], values)
    new_keys, new_values = torch.randn(2, 3, 1, 5), torch.randn(2, 3, 1, 5)
    all_keys, all_values = cache.append(new_keys, new_values)
    torch.testing.assert_close(all_keys, torch.cat([keys, new_keys], 2), rtol=0, atol=0)
    torch.testing.assert_close(all_values, torch.cat([values, new_values], 2), rtol=0, atol=0)
    assert all_keys.data_ptr() == cache.buffer[0].data_ptr(), "the cache must grow in its buffer, not by copies"
    with pytest.raises(ValueError, match="holds 6 positions; 7 are needed"):
        cache.append(torch.randn(2, 3, 2, 5), torch.randn(2, 3, 2, 5))
