"""rere.sampler.hf (TrieLogitsProcessor for model.generate) and rere.sampler.trl (a TRL
GRPOTrainer rollout_func), on tiny Llama and Qwen2 models."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import LogitsProcessorList, PreTrainedTokenizerFast

from rere.index import CatalogIndex
from rere.sampler import beam_search
from rere.sampler.hf import TrieLogitsProcessor
from rere.sampler.trl import Group, make_rollout_func, plan_groups
from sampler_fixtures import EOS, PAD, VOCAB, PrefixDictProcessor, catalog, completion, prompts
from tiny_models import ARCHITECTURES, tiny_model



# ------------------------------------------------------------------------------ helpers
def generate_beams(model, processor, ids, mask, beams, max_new, length_penalty=0.0):
    out = model.generate(ids, attention_mask=mask, num_beams=beams, num_return_sequences=beams,
                         length_penalty=length_penalty, max_new_tokens=max_new, do_sample=False,
                         early_stopping=False, eos_token_id=EOS, pad_token_id=PAD,
                         logits_processor=LogitsProcessorList([processor]),
                         output_scores=True, return_dict_in_generate=True)
    return out.sequences[:, ids.shape[1]:], out.sequences_scores


def word_tokenizer():
    """A word-level tokenizer over the tiny vocabulary: "t5 t7" -> [5, 7]; <eos> = 119."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<pad>": PAD, **{f"t{i}": i for i in range(1, EOS)}, "<eos>": EOS}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>")
    tokenizer.chat_template = ("{% for m in messages %}{{ m['content'] }} {% endfor %}"
                               "{% if add_generation_prompt %}t117{% endif %}")
    return tokenizer


def text(ids):
    return " ".join(f"t{i}" for i in ids)


# ------------------------------------------------------------------- TrieLogitsProcessor
@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("beams, length_penalty", [(6, 0.0), (4, 1.0)])
def test_processor_beam_search_is_the_reference_and_rere(arch, beams, length_penalty):
    model = tiny_model(arch, VOCAB, seed=beams)
    seqs = catalog(150, seed=beams + 1)
    index = CatalogIndex.from_sequences(seqs, vocab_size=VOCAB)
    ids, mask = prompts(3, seed=beams + 2)
    max_new = index.max_depth
    want, want_scores = generate_beams(model, PrefixDictProcessor(seqs, ids.shape[1]), ids, mask, beams, max_new,
                                       length_penalty)
    got, got_scores = generate_beams(model, TrieLogitsProcessor(index), ids, mask, beams, max_new, length_penalty)
    assert torch.equal(got, want)
    assert torch.equal(got_scores, want_scores)
    with torch.no_grad():
        ours = beam_search(model, index, ids, mask, num_beams=beams, length_penalty=length_penalty, eos_token_id=EOS)
    got = got.reshape(ids.shape[0], beams, -1)
    for p in range(ids.shape[0]):
        assert [completion(t) for t in got[p].tolist()] == [
            tuple(ours.sequences[p, g, :ours.lengths[p, g]].tolist()) for g in range(beams)]
    assert torch.allclose(got_scores.reshape(ids.shape[0], beams), ours.scores, atol=1e-4)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_processor_sampling_gives_catalog_items(arch):
    model = tiny_model(arch, VOCAB, seed=11)
    seqs = catalog(80, seed=12)
    index = CatalogIndex.from_sequences(seqs, vocab_size=VOCAB)
    ids, mask = prompts(3, seed=13)
    torch.manual_seed(0)
    out = model.generate(ids, attention_mask=mask, do_sample=True, temperature=2.0, top_k=0,
                         num_return_sequences=12, max_new_tokens=index.max_depth, eos_token_id=EOS,
                         pad_token_id=PAD, logits_processor=LogitsProcessorList([TrieLogitsProcessor(index)]))
    items = {tuple(s) for s in seqs}
    drawn = [completion(t) for t in out[:, ids.shape[1]:].tolist()]
    assert all(d in items for d in drawn), [d for d in drawn if d not in items]
    assert len(set(drawn)) > 3  # it samples, not one greedy path


def test_processor_masks_each_row_from_its_own_tokens():
    index = CatalogIndex.from_sequences([[5, 6, EOS], [5, 7, EOS], [8, EOS]], vocab_size=VOCAB)
    processor = TrieLogitsProcessor(index, eos_token_id=EOS)
    scores = torch.randn(1, VOCAB)
    root = processor(torch.tensor([[3, 4]]), scores)  # first call: prompt width 2, nothing generated
    assert processor.prompt_length == 2
    assert torch.isfinite(root[0]).nonzero().flatten().tolist() == [5, 8]
    assert torch.equal(root[0, [5, 8]], scores[0, [5, 8]])

    rows = torch.tensor([[3, 4, 5, 6], [3, 4, 5, 7], [3, 4, 3, 5], [3, 4, 8, EOS], [3, 4, 5, 9]])
    scores = torch.randn(5, VOCAB)
    out = processor(rows, scores)
    finite = [torch.isfinite(r).nonzero().flatten().tolist() for r in out]
    assert finite[0] == finite[1] == [EOS]
    assert finite[2] == [] and finite[4] == []  # left the trie: nothing allowed
    assert torch.equal(out[3], scores[3])  # finished (EOS): left to generate's own handling
    assert torch.equal(out[0, EOS], scores[0, EOS])

    with pytest.raises(ValueError, match="serves one generate call"):
        processor(torch.tensor([[1]]), torch.randn(1, VOCAB))
    processor.reset()
    assert torch.isfinite(processor(torch.tensor([[1]]), torch.randn(1, VOCAB))).sum() == 2
    with pytest.raises(ValueError, match="vocab_size"):
        TrieLogitsProcessor(index)(torch.tensor([[1]]), torch.randn(1, VOCAB - 1))


def test_the_eos_defaults_to_the_token_ending_every_sequence():
    plain = CatalogIndex.from_sequences([[5, 6, EOS], [8, EOS]], vocab_size=VOCAB)
    assert plain.final_token == EOS and TrieLogitsProcessor(plain).eos_token_id == EOS
    with_metadata = CatalogIndex.from_sequences([[5, 6, 7]], vocab_size=VOCAB, metadata={"eos_token_id": 7})
    assert TrieLogitsProcessor(with_metadata).eos_token_id == 7
    assert CatalogIndex.from_sequences([[5, 6, EOS], [5, 7, 8]], vocab_size=VOCAB).final_token is None
    assert CatalogIndex.from_sequences([[5, 6], [5, 6, 7, 6]], vocab_size=VOCAB).final_token is None  # a prefix


@pytest.mark.gpu
def test_processor_on_cuda_matches_cpu():
    seqs = catalog(200, seed=21)
    index = CatalogIndex.from_sequences(seqs, vocab_size=VOCAB)
    rng = np.random.default_rng(22)
    rows = [[1, 2] + list(seqs[int(rng.integers(len(seqs)))][:3]) for _ in range(64)]
    width = max(map(len, rows))
    rows = torch.tensor([r[:width] + [7] * (width - len(r)) for r in rows])
    scores = torch.randn(len(rows), VOCAB)
    want = TrieLogitsProcessor(index, prompt_length=2)(rows, scores)
    got = TrieLogitsProcessor(index, prompt_length=2)(rows.cuda(), scores.cuda())
    assert torch.equal(got.cpu(), want)


# --------------------------------------------------------------------------- plan_groups
def test_plan_groups_layouts_and_errors():
    assert plan_groups(list("aaabbb"), 3) == [Group(0, 3, 0), Group(3, 6, 0)]
    assert plan_groups(list("aaaa"), 2) == [Group(0, 2, 0), Group(2, 4, 0)]  # one prompt drawn twice
    # a slice of a multi-process batch: starts inside a group, ends inside another
    assert plan_groups(list("abbbc"), 3, first_rank=2, partial_end=True) == [
        Group(0, 1, 2), Group(1, 4, 0), Group(4, 5, 0)]
    assert plan_groups([], 4) == []
    with pytest.raises(ValueError, match=r"prompts\[2\] differs from prompts\[0\]"):
        plan_groups(list("aabbbb"), 3)
    with pytest.raises(ValueError, match=r"the last group \(from position 3\) has 2 of the num_beams=3 copies"):
        plan_groups(list("aaabb"), 3)
    with pytest.raises(ValueError, match="first_rank"):
        plan_groups(list("aa"), 2, first_rank=2)


# ------------------------------------------------------------------------ rollout_func
ROLLOUT_KEYS = {"prompt_ids", "completion_ids", "logprobs", "env_mask", "beam_rank", "item_id", "all_item_ids"}


@pytest.fixture(scope="module")
def tokenizer():
    return word_tokenizer()


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_rollout_is_beam_search_in_the_incoming_order(arch, tokenizer):
    model = tiny_model(arch, VOCAB, seed=31)
    seqs = catalog(120, seed=32)
    index = CatalogIndex.from_sequences(seqs, vocab_size=VOCAB)
    beams = 4
    unique = [[11, 12, 13], [21, 22, 23, 24, 25, 26], [31, 32]]
    incoming = [text(p) for p in unique for _ in range(beams)]
    out = make_rollout_func(model, index, tokenizer, num_beams=beams, eos_token_id=EOS)(incoming)
    assert set(out) == ROLLOUT_KEYS and all(len(v) == len(incoming) for v in out.values())

    ids = torch.tensor([[PAD] * (6 - len(p)) + p for p in unique])
    mask = (torch.arange(6) >= 6 - torch.tensor([len(p) for p in unique])[:, None]).long()
    with torch.no_grad():
        want = beam_search(model, index, ids, mask, num_beams=beams, eos_token_id=EOS)
    for i in range(len(incoming)):
        p, g = divmod(i, beams)
        n = int(want.lengths[p, g])
        assert out["prompt_ids"][i] == unique[p]
        assert out["beam_rank"][i] == g
        assert out["completion_ids"][i] == want.sequences[p, g, :n].tolist()
        assert out["logprobs"][i] == pytest.approx(want.token_logprobs[p, g, :n].tolist(), abs=1e-5)
        assert math.isclose(sum(out["logprobs"][i]), float(want.scores[p, g]), abs_tol=1e-4)
        assert out["item_id"][i] == int(want.item_ids[p, g]) == seqs.index(out["completion_ids"][i])
        assert out["all_item_ids"][i] == [out["item_id"][i]]
        assert out["env_mask"][i] == [1] * n
    assert not model.training  # the tiny model was in eval mode and stays so


def test_rollout_truncates_prompts_from_the_left_and_chunks(tokenizer):
    model = tiny_model("qwen2", VOCAB, seed=41)
    seqs = catalog(60, seed=42)
    index = CatalogIndex.from_sequences(seqs, vocab_size=VOCAB)
    long_prompts = [[1, 2, 3, 4, 5, 6, 7], [8, 9, 10, 11, 12]]
    incoming = [text(p) for p in long_prompts for _ in range(3)]
    model.train()  # as under a trainer: searched in eval mode, restored afterwards
    out = make_rollout_func(model, index, tokenizer, num_beams=3, max_prompt_length=4, prompts_per_call=1,
                            eos_token_id=EOS)(incoming)
    assert model.training
    assert out["prompt_ids"] == [[4, 5, 6, 7]] * 3 + [[9, 10, 11, 12]] * 3
    short = make_rollout_func(model, index, tokenizer, num_beams=3, eos_token_id=EOS)(
        [text(p[-4:]) for p in long_prompts for _ in range(3)])
    assert out["completion_ids"] == short["completion_ids"]


def test_rollout_pads_empty_slots_and_names_duplicates(tokenizer):
    model = tiny_model("llama", VOCAB, seed=51)
    index = CatalogIndex.from_sequences([[5, 6, EOS], [5, 6, EOS], [9, EOS]], [10, 11, 12], vocab_size=VOCAB)
    out = make_rollout_func(model, index, tokenizer, num_beams=4, eos_token_id=EOS)(["t1 t2"] * 4)
    assert out["beam_rank"] == [0, 1, 2, 3]
    assert sorted(map(tuple, out["all_item_ids"][:2])) == [(10, 11), (12,)]
    assert out["item_id"][2:] == [-1, -1] and out["all_item_ids"][2:] == [[], []]
    assert out["completion_ids"][2:] == [[EOS], [EOS]]  # TRL needs one token: a masked-out EOS
    assert out["env_mask"][2:] == [[0], [0]] and out["logprobs"][2:] == [[0.0], [0.0]]


def test_rollout_excludes_items(tokenizer):
    model = tiny_model("llama", VOCAB, seed=61)
    seqs = catalog(50, seed=62)
    index = CatalogIndex.from_sequences(seqs, vocab_size=VOCAB)
    incoming = ["t1 t2 t3"] * 3 + ["t4 t5"] * 3
    plain = make_rollout_func(model, index, tokenizer, num_beams=3, eos_token_id=EOS)(incoming)
    top = {"t1 t2 t3": plain["item_id"][:2], "t4 t5": plain["item_id"][3:4]}
    ids = torch.tensor([[1, 2, 3], [PAD, 4, 5]])
    with torch.no_grad():
        want = beam_search(model, index, ids, (ids != PAD).long(), num_beams=3, eos_token_id=EOS,
                           exclude_items=[top["t1 t2 t3"], top["t4 t5"]])
    for rule in (top, lambda prompt: top[prompt]):
        out = make_rollout_func(model, index, tokenizer, num_beams=3, exclude_items=rule, eos_token_id=EOS)(incoming)
        assert not set(out["item_id"][:3]) & set(top["t1 t2 t3"])
        assert not set(out["item_id"][3:]) & set(top["t4 t5"])
        assert out["item_id"] == want.item_ids.flatten().tolist()
    everywhere = make_rollout_func(model, index, tokenizer, num_beams=3, exclude_items=[plain["item_id"][0]],
                                   eos_token_id=EOS)(incoming)
    assert plain["item_id"][0] not in everywhere["item_id"]
    with pytest.raises(ValueError, match=r"exclude_items has no entry for prompts\[3\] = 't4 t5'"):
        make_rollout_func(model, index, tokenizer, num_beams=3, exclude_items={"t1 t2 t3": []},
                          eos_token_id=EOS)(incoming)


def test_rollout_checks_groups_and_the_trainer(tokenizer):
    model = tiny_model("llama", VOCAB)
    index = CatalogIndex.from_sequences([[5, EOS], [6, EOS]], vocab_size=VOCAB)
    rollout = make_rollout_func(model, index, tokenizer, num_beams=2, eos_token_id=EOS)
    with pytest.raises(ValueError, match=r"prompts\[1\] differs from prompts\[0\]"):
        rollout(["t1", "t2", "t2", "t2"])
    with pytest.raises(ValueError, match="trainer's num_generations is 4 but the rollout has num_beams=2"):
        rollout(["t1", "t1"], SimpleNamespace(num_generations=4, model=model.train()))
    with pytest.raises(ValueError, match="trainer's num_generations_eval is 3"):
        rollout(["t1", "t1"], SimpleNamespace(num_generations=2, num_generations_eval=3, model=model.eval()))
    with pytest.raises(ValueError, match="no trainer was passed"):
        make_rollout_func(None, index, tokenizer, num_beams=2)(["t1", "t1"])
    follow = make_rollout_func(model, index, tokenizer, num_beams=None, eos_token_id=EOS)
    evaluating = SimpleNamespace(num_generations=2, num_generations_eval=3, model=model.eval())
    assert follow(["t1"] * 3, evaluating)["beam_rank"] == [0, 1, 2]
    with pytest.raises(ValueError, match="num_beams=None takes the group size from the trainer"):
        follow(["t1"] * 2)


def test_rollout_on_several_processes_keeps_each_slice_of_the_groups(tokenizer):
    """TRL cuts the repeated batch into equal per-process slices; a group may straddle two."""
    model = tiny_model("qwen2", VOCAB, seed=71)
    index = CatalogIndex.from_sequences(catalog(60, seed=72), vocab_size=VOCAB)
    batch = ["t1 t2"] * 4 + ["t3"] * 4 + ["t4 t5 t6"] * 4
    rollout = make_rollout_func(model, index, tokenizer, num_beams=4, eos_token_id=EOS)
    whole = rollout(batch)
    got = {key: [] for key in whole}
    for rank in range(2):  # two processes of six prompts: [A A A A B B] and [B B C C C C]
        trainer = SimpleNamespace(accelerator=SimpleNamespace(num_processes=2, process_index=rank),
                                  num_generations=4, model=model)
        part = rollout(batch[6 * rank:6 * rank + 6], trainer)
        for key in got:
            got[key] += part[key]
    logprobs = got.pop("logprobs")  # the batches differ (padding), so the floats may differ slightly
    assert [pytest.approx(lp, abs=1e-5) for lp in logprobs] == whole.pop("logprobs")
    assert got == whole
    assert whole["beam_rank"] == [0, 1, 2, 3] * 3


def test_rollout_applies_the_chat_template_to_conversations(tokenizer):
    model = tiny_model("llama", VOCAB, seed=81)
    index = CatalogIndex.from_sequences(catalog(40, seed=82), vocab_size=VOCAB)
    conversation = [{"role": "user", "content": "t1 t2"}, {"role": "user", "content": "t3"}]
    rollout = make_rollout_func(model, index, tokenizer, num_beams=2, eos_token_id=EOS)
    out = rollout([conversation, conversation])
    assert out["prompt_ids"] == [[1, 2, 3, 117]] * 2  # the template's generation prompt is t117
    assert out["completion_ids"] == rollout(["t1 t2 t3 t117"] * 2)["completion_ids"]


# ----------------------------------------------------------------------- TRL itself
def test_rollout_in_a_trl_grpo_training_step(tokenizer, tmp_path, monkeypatch):
    """One real GRPOTrainer step with the rollout: TRL accepts the dict, forwards the extra
    fields to the reward function in the incoming order, and the returned log-probs are
    the policy's own (what TRL recomputes from prompt_ids + completion_ids)."""
    pytest.importorskip("trl", reason="TRL is optional: pip install trl to check the rollout against GRPOTrainer")
    pytest.importorskip("datasets", reason="TRL's trainer needs datasets")
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    model = tiny_model("llama", VOCAB, seed=91)
    seqs = catalog(60, seed=92)
    index = CatalogIndex.from_sequences(seqs, vocab_size=VOCAB)
    beams = 4
    norm = sum(1 / math.log2(j + 2) for j in range(beams))
    calls = []

    def ranking_reward(completions, beam_rank, item_id, all_item_ids, target, **kwargs):
        calls.append(dict(beam_rank=list(beam_rank), item_id=list(item_id), target=list(target),
                          completions=list(completions)))
        return [-(1 / math.log2(r + 2)) / norm if i != t else 1.0 for r, i, t in zip(beam_rank, item_id, target)]

    dataset = Dataset.from_dict({"prompt": ["t1 t2 t3", "t4 t5"], "target": [0, 1]})
    args = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=2 * beams, num_generations=beams,
                      max_steps=1, max_completion_length=index.max_depth, beta=0.0, learning_rate=1e-3,
                      use_cpu=True, report_to=[], save_strategy="no", logging_steps=1, disable_tqdm=True)
    trainer = GRPOTrainer(model=model, reward_funcs=[ranking_reward], args=args, train_dataset=dataset,
                          processing_class=tokenizer, rollout_func=make_rollout_func(None, index, tokenizer, beams))
    batches = []
    generate = trainer._generate_and_score_completions
    monkeypatch.setattr(trainer, "_generate_and_score_completions", lambda inputs: batches.append(generate(inputs))
                        or batches[-1])
    before = [p.detach().clone() for p in model.parameters()]
    trainer.train()

    assert len(calls) == 1 and calls[0]["beam_rank"] == [0, 1, 2, 3] * 2
    ids = calls[0]["item_id"]
    assert all(i >= 0 for i in ids) and len(set(ids[:4])) == len(set(ids[4:])) == 4  # distinct items per group
    assert [tokenizer.decode(seqs[i], skip_special_tokens=True) for i in ids] == calls[0]["completions"]
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))  # a real update

    batch = batches[0]
    assert "sampling_per_token_logps" in batch  # TRL kept the rollout's log-probs
    with torch.no_grad():  # the policy before the update generated them: restore its weights
        for p, old in zip(model.parameters(), before):
            p.copy_(old)
        full = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
        attention = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        logits = model.eval()(input_ids=full, attention_mask=attention, position_ids=positions).logits.float()
    width = batch["completion_ids"].shape[1]
    logps = logits[:, -width - 1:-1].log_softmax(-1).gather(-1, batch["completion_ids"][..., None])[..., 0]
    m = batch["completion_mask"].bool()
    assert torch.allclose(logps[m], batch["sampling_per_token_logps"][m], atol=1e-4)
