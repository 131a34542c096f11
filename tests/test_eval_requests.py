"""The eval scoring engine against lm-evaluation-harness's HF backend on the same random GPT-2-BPE weights."""
from __future__ import annotations

import random

import numpy as np
import pytest

from gptjax.eval import requests as eval_requests

WORDS = ("the of and to in is was for on that with as by at from his her it an are were which be this had not "
         "Paris river mountain Zürich naïve 1984 3.14 hello world café — “quoted” text, end. Question: Answer:").split()


def _text(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


def _requests(seed: int = 0) -> list[tuple[str, str]]:
    """≥100 varied (context, continuation) pairs: empty contexts, trailing spaces, multi-token and one-token
    continuations, shared contexts (multiple choice), and contexts far beyond the 256-token block."""
    rng = random.Random(seed)
    out = []
    for _ in range(12):  # multiple choice: one context, four endings
        context = _text(rng, rng.randint(3, 40))
        out += [(context, " " + _text(rng, rng.randint(1, 8))) for _ in range(4)]
    for _ in range(8):  # MMLU-like one-token answers after one context
        context = _text(rng, rng.randint(10, 60)) + "\nAnswer:"
        out += [(context, f" {letter}") for letter in "ABCD"]
    for _ in range(10):
        out.append(("", _text(rng, rng.randint(1, 10))))
        out.append(("", " " + _text(rng, rng.randint(1, 5))))
    for _ in range(10):
        out.append((_text(rng, rng.randint(1, 20)) + " ", _text(rng, rng.randint(1, 6))))
        out.append((_text(rng, rng.randint(1, 20)) + "  \n", "x" + _text(rng, 2)))
    for _ in range(6):  # longer than block_size: left-truncated
        out.append((_text(rng, rng.randint(260, 400)), " " + _text(rng, rng.randint(1, 30))))
    out.append(out[0])  # an exact duplicate
    return out


@pytest.fixture(scope="module")
def lm(gpt2_bpe_model):
    import gptjax

    return gptjax.load(gpt2_bpe_model["gptjax"])


@pytest.fixture(scope="module")
def hflm(gpt2_bpe_model):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=str(gpt2_bpe_model["hf"]), batch_size=16, device="cpu", dtype="float32")


def _instances(kind: str, args_list) -> list:
    from lm_eval.api.instance import Instance

    return [Instance(request_type=kind, doc={}, arguments=args, idx=i) for i, args in enumerate(args_list)]


def test_loglikelihood_equals_lm_eval_hf(lm, hflm):
    reqs = _requests()
    assert len(reqs) >= 100
    ours = lm.loglikelihood(reqs, batch_size=16)
    theirs = hflm.loglikelihood(_instances("loglikelihood", reqs), disable_tqdm=True)
    np.testing.assert_allclose([s for s, _ in ours], [s for s, _ in theirs], atol=1e-4, rtol=0)
    assert [g for _, g in ours] == [g for _, g in theirs]
    assert ours.n_truncated == 6
    assert ours.n_rows < len(reqs) - 24  # the one-token answers and the duplicate share rows


def test_greedy_flag_is_exercised(lm):
    """Random weights rarely make a continuation greedy: build ones that are, and check both flags appear."""
    context = lm.tokenizer.encode("the river and the")
    greedy_next = int(np.argmax(lm.logits([context])[0, -1]))
    pairs = [(context, [greedy_next]), (context, [(greedy_next + 1) % lm.config.vocab_size])]
    assert [g for _, g in lm.loglikelihood_tokens(pairs)] == [True, False]


def test_results_follow_input_order_whatever_the_batching(lm):
    reqs = _requests(seed=1)[:30]
    reference = lm.loglikelihood(reqs, batch_size=32)
    rng = random.Random(0)
    order = list(range(len(reqs)))
    rng.shuffle(order)
    shuffled = lm.loglikelihood([reqs[i] for i in order], batch_size=3)
    # other batch shapes (a shared context's endings split over batches) round float32 sums of ~-100 differently
    np.testing.assert_allclose([shuffled[order.index(i)][0] for i in range(len(reqs))], [s for s, _ in reference],
                               atol=1e-5, rtol=1e-6)
    one_by_one = [lm.loglikelihood([r], batch_size=1)[0][0] for r in reqs[:5]]
    np.testing.assert_allclose(one_by_one, [s for s, _ in reference[:5]], atol=1e-5, rtol=1e-6)


def test_prefix_eot_puts_endoftext_before_every_context(lm):
    eot = lm.tokenizer.eot_id
    plain, prefixed = lm.loglikelihood([("The river", " flows")], prefix_eot=True), lm.loglikelihood_tokens(
        [([eot] + lm.tokenizer.encode("The river"), lm.tokenizer.encode(" flows"))])
    assert plain[0][0] == pytest.approx(prefixed[0][0], abs=1e-6)
    empty = lm.loglikelihood([("", "The river")], prefix_eot=True)
    assert empty[0][0] == pytest.approx(lm.loglikelihood([("", "The river")])[0][0], abs=1e-6)


def test_loglikelihood_rolling_equals_lm_eval_hf(lm, hflm):
    rng = random.Random(3)
    docs = [_text(rng, 500), _text(rng, 150), "one", _text(rng, 270)]
    assert len(lm.tokenizer.encode(docs[0])) > 2 * lm.config.block_size
    ours = lm.loglikelihood_rolling(docs, batch_size=8)
    theirs = hflm.loglikelihood_rolling(_instances("loglikelihood_rolling", [(d,) for d in docs]), disable_tqdm=True)
    # sums of ~1000 float32 log-probs: equal to float32 rounding of the sum, per-token equality is checked above
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=1e-6)


def test_rolling_windows_score_every_token_once():
    for n in (1, 5, 16, 17, 33, 48):
        tokens = list(range(100, 100 + n))
        windows = eval_requests.rolling_windows(tokens, 7, max_len=16)
        assert [t for _, predicted in windows for t in predicted] == tokens
        assert windows[0][0] == [7]
        for context, predicted in windows:
            assert 1 <= len(context) and len(context) + len(predicted) <= 17


def test_generate_until_equals_lm_eval_hf_greedy(lm, hflm):
    rng = random.Random(5)
    reqs = [(_text(rng, 12), {"until": ["e", " a"], "max_gen_toks": 24}),
            (_text(rng, 30), {"until": "e", "max_gen_toks": 24}),
            (_text(rng, 5), {"until": ["e", " a"], "max_gen_toks": 24}),
            (_text(rng, 8), {"max_gen_toks": 6, "do_sample": False})]
    ours = lm.generate_until(reqs, batch_size=2)
    theirs = hflm.generate_until(_instances("generate_until", reqs), disable_tqdm=True)
    assert ours == theirs
    assert all("e" not in text for text in ours[:3])


def test_few_shapes_compile_over_many_lengths():
    rng = random.Random(0)
    widths = {eval_requests.bucket_width(rng.randint(1, 256), 256) for _ in range(200)}
    assert widths <= {32, 48, 64, 96, 128, 192, 256}
    assert len({eval_requests.bucket_width(n, 2048) for n in range(1, 2049)}) == 13
    assert all(eval_requests.bucket_width(n, 4096) <= max(32, 1.5 * n) for n in range(1, 4097))
    rows = {eval_requests.bucket_rows(n, 32) for n in range(1, 33)}
    assert rows == {1, 2, 4, 8, 16, 32}


def test_jit_cache_stays_small(lm):
    rng = random.Random(0)
    pairs = [([rng.randrange(50257) for _ in range(rng.randint(1, 100))], [rng.randrange(50257)])
             for _ in range(200)]
    before = eval_requests.query_logprobs._cache_size()
    result = lm.loglikelihood_tokens(pairs, batch_size=8)
    assert len(result) == 200 and result.n_rows == 200
    # full batches at widths 128, 96, 64, 48, 32 and one power-of-two remainder
    assert eval_requests.query_logprobs._cache_size() - before <= len(result.shapes) <= 6


def test_encode_pair_matches_lm_eval_rules(lm):
    encode = lm.tokenizer.encode
    context, continuation = eval_requests.encode_pair(encode, "Question: what?  ", "yes", 50256)
    assert context == encode("Question: what?") and continuation == encode("Question: what?  yes")[len(context):]
    assert eval_requests.encode_pair(encode, "", " yes", 50256) == ([50256], encode(" yes"))


def test_no_requests_no_work(lm):
    assert lm.loglikelihood([]) == [] and lm.loglikelihood_rolling([]) == [] and lm.generate_until([]) == []
    assert lm.loglikelihood_rolling([""]) == [0.0]


def test_many_requests_on_one_row(lm):
    """More queries than a row has positions (duplicates, one-token answers) still score each request."""
    pairs = [([11, 12], [13 + i % 5]) for i in range(70)]
    results = lm.loglikelihood_tokens(pairs, batch_size=1)
    assert results.n_rows == 1
    expected = lm.token_logprobs([[11, 12, 13 + k] for k in range(5)])
    np.testing.assert_allclose([s for s, _ in results], [expected[i % 5][-1] for i in range(70)], atol=1e-5)


def test_bad_requests_are_one_line_errors(lm):
    from gptjax.errors import GptjaxError

    with pytest.raises(GptjaxError, match="empty continuation"):
        lm.loglikelihood_tokens([([1, 2], [])])
    with pytest.raises(GptjaxError, match="exceeds the model's 256-token window"):
        lm.loglikelihood_tokens([([1], [3] * 300)])
    with pytest.raises(GptjaxError, match="leaves no room"):
        lm.generate_until([("hi", {"max_gen_toks": 256})])


def test_shared_contexts_score_as_whole_rows(lm):
    """Endings after a shared context run on its KV cache: the same scores as running every row whole, also when
    a context's endings fall in different batches, contexts are left-truncated, or endings differ in length."""
    rng = random.Random(7)
    pairs = []
    for n_context in (3, 40, 300, 300):  # 300 > block_size: truncated rows keep a shared stem only if equal
        context = [rng.randrange(50257) for _ in range(n_context)]
        pairs += [(context, [rng.randrange(50257) for _ in range(rng.randint(1, 20))]) for _ in range(5)]
    for batch_size in (3, 16):
        shared = eval_requests.score_pairs(lm.model, lm.params, pairs, lm.config.block_size, batch_size)
        whole = eval_requests.score_pairs(lm.model, lm.params, pairs, lm.config.block_size, batch_size,
                                          share_stems=False)
        assert any(len(shape) == 5 for shape in shared.shapes) and all(len(s) == 3 for s in whole.shapes)
        np.testing.assert_allclose([s for s, _ in shared], [s for s, _ in whole], atol=1e-5, rtol=1e-6)
        assert [g for _, g in shared] == [g for _, g in whole]


def test_hidden_states_and_head_give_the_logits(lm):
    from gptjax.model.transformer import head_logits, head_matrix

    tokens = np.array([[5, 6, 7, 8], [9, 10, 11, 12]], np.int32)
    logits = lm.model.apply({"params": lm.params}, tokens)
    hidden = lm.model.apply({"params": lm.params}, tokens, return_hidden=True)
    assert hidden.shape == (2, 4, lm.config.d_model)
    np.testing.assert_allclose(head_logits(hidden, head_matrix(lm.params, lm.config), lm.config),
                               logits, atol=1e-5, rtol=1e-5)


def _mmlu_like_subject(rng: random.Random, subject: str, n_questions: int, shots: int) -> list[tuple[str, str]]:
    """lm-eval MMLU's requests for one subject: its header and `shots` dev examples before every question."""
    from gptjax.eval.tasks import mmlu

    def row() -> list[str]:
        return [_text(rng, rng.randint(5, 25))] + [_text(rng, rng.randint(1, 4)) for _ in range(4)] + ["B"]

    prefix = mmlu.fewshot_prefix(subject, [row() for _ in range(shots)], shots)
    questions = [mmlu.question_block(row()) for _ in range(n_questions)]
    return [(prefix + question, f" {letter}") for question in questions for letter in "ABCD"]


def _alone(lm, pairs) -> list[tuple[float, bool]]:
    return [eval_requests.score_pairs(lm.model, lm.params, [pair], lm.config.block_size, batch_size=1)[0]
            for pair in pairs]


def test_shared_prefix_scores_as_each_request_alone(lm):
    """Questions sharing a few-shot prefix run it once into a KV cache, each question on top of it: the same
    log-likelihoods and greedy flags as scoring every request alone — for groups sharing a long prefix, contexts
    sharing none, and a context left-truncated past block_size (it keeps only the tokens it really shares)."""
    rng = random.Random(11)
    encode = lm.tokenizer.encode
    texts = _mmlu_like_subject(rng, "college_physics", 3, shots=2) + _mmlu_like_subject(rng, "anatomy", 2, shots=1)
    pairs = [eval_requests.encode_pair(encode, context, continuation, lm.tokenizer.eot_id)
             for context, continuation in texts]
    unrelated = [([rng.randrange(50257) for _ in range(rng.randint(5, 30))], [rng.randrange(50257)])
                 for _ in range(4)]
    truncated = (pairs[0][0] + [rng.randrange(50257) for _ in range(300)], pairs[0][1])
    groups = {"few-shot": pairs, "no shared prefix": unrelated, "with a truncated context": pairs[:8] + [truncated]}
    plan_of = {}
    for name, group in groups.items():
        rows, _ = eval_requests.plan_rows(group, lm.config.block_size)
        plan_of[name] = eval_requests.group_rows(rows)
        for batch_size in (3, 16):
            shared = eval_requests.score_pairs(lm.model, lm.params, group, lm.config.block_size, batch_size)
            alone = _alone(lm, group)
            np.testing.assert_allclose([s for s, _ in shared], [s for s, _ in alone], atol=1e-5, rtol=0,
                                       err_msg=f"{name}, batch {batch_size}")
            assert [g for _, g in shared] == [g for _, g in alone], name
    plain, few_shot = plan_of["few-shot"]
    header = len(encode("The following are multiple choice questions (with answers) about"))
    assert not plain and len(few_shot) == 2 and all(len(g.stem) > 3 * header for g in few_shot)
    assert [len(g.rows) for g in few_shot] == [3, 2]  # one row per question: its 4 answers share it
    assert plan_of["no shared prefix"][1] == []
    plain, with_truncated = plan_of["with a truncated context"]
    assert len(plain) == 1 and plain[0].tokens[0] != pairs[0][0][0]  # the truncated row starts mid-context


def test_best_groups_weighs_a_shared_stem_against_running_rows_whole():
    # rows 0-2 share 40 tokens, rows 3-4 share 2 (not worth a stem run), row 5 shares nothing
    assert eval_requests.best_groups([50, 60, 45, 30, 30, 20], [40, 40, 0, 2, 0], overhead=16) == [(0, 2, 40)]
    # a short stem shared by many rows beats a long one shared by two
    lengths, shared = [100] * 6, [30, 10, 10, 10, 10]
    assert eval_requests.best_groups(lengths, shared, overhead=16) == [(0, 5, 10)]
    assert eval_requests.best_groups([10], []) == [] and eval_requests.best_groups([], []) == []


def test_token_logprobs_score_through_the_engine_as_the_full_logits_say(lm):
    """LM.token_logprobs (and LM.score on it) runs the eval engine: its per-token log-probs equal log_softmax of
    the model's full logits, also for a sequence that is a prefix of another (its row is folded into the longer)."""
    import jax

    sequences = [[5, 6, 7, 8, 9, 10], [5, 6, 7], [300, 200, 100, 50]]
    for ids, logprob_N in zip(sequences, lm.token_logprobs(sequences, batch_size=2)):
        expected = jax.nn.log_softmax(lm.logits([ids])[0, :-1], axis=-1)[np.arange(len(ids) - 1), ids[1:]]
        np.testing.assert_allclose(logprob_N, expected, atol=1e-5, rtol=0)
    text = lm.tokenizer.encode("The river")
    assert lm.score(["The river"])[0] == pytest.approx(
        float(lm.token_logprobs([[lm.tokenizer.eot_id] + text])[0].sum()), abs=1e-5)
