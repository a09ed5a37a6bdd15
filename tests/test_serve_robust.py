"""Inputs that once broke the server answer cleanly: a 400 naming the field, or a normal answer; never a 500, and
never another request's failure."""

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from test_serve import http_call, serving

from minimind import MiniMindConfig, MiniMindForCausalLM
from minimind.infer.sampling import token_chooser
from minimind.serve.app import create_app
from minimind.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def url():
    torch.manual_seed(0)
    model = MiniMindForCausalLM(MiniMindConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                               num_key_value_heads=2, vocab_size=6400,
                                               max_position_embeddings=256)).eval()
    with serving(create_app(model, load_tokenizer(), model_name="tiny", max_batch=4)) as url:
        yield url


def test_a_tiny_temperature_samples_and_fails_no_other_request(url):
    """temperature 1e-300 passes validation ([0, 2]); it used to make inf / NaN probabilities, a 500 for it and for
    the requests decoded beside it."""
    tiny = {"model": "tiny", "prompt": "Hello", "max_tokens": 8, "temperature": 1e-300}
    good = {"model": "tiny", "prompt": "The sun", "max_tokens": 8, "temperature": 0.8, "seed": 1}
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda body: http_call(url + "/v1/completions", body), [tiny, good, good, tiny]))
    assert [status for status, _, _ in answers] == [200] * 4, [body[:200] for _, _, body in answers]
    greedy = http_call(url + "/v1/completions", {**tiny, "temperature": 0})
    assert json.loads(answers[0][2])["choices"][0]["text"] == json.loads(greedy[2])["choices"][0]["text"]


def test_a_request_whose_token_choice_fails_fails_alone(url, monkeypatch):
    """A request whose sampling raises mid-answer (here a broken chooser, as a bad setting or grammar would) gets a
    500; the requests decoded beside it answer as they would alone, and the server goes on."""
    from minimind.serve.worker import Worker

    make = Worker._group

    def group(self, job):
        g = make(self, job)
        if job.seed == 13:
            calls = iter(range(1000))

            def broken(logits, choose=g.next_tokens):
                if next(calls) == 3:
                    raise RuntimeError("the sampler broke")
                return choose(logits)
            g.next_tokens = broken
        return g

    monkeypatch.setattr(Worker, "_group", group)
    good = {"model": "tiny", "prompt": "The sun", "max_tokens": 48, "temperature": 0}
    bad = {"model": "tiny", "prompt": "Hello", "max_tokens": 48, "temperature": 0.7, "seed": 13}
    alone = http_call(url + "/v1/completions", good)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda body: http_call(url + "/v1/completions", body), [good, bad, good, bad]))
    assert [status for status, _, _ in answers] == [200, 500, 200, 500], [body[:200] for _, _, body in answers]
    assert "the sampler broke" in json.loads(answers[1][2])["error"]["message"]
    assert json.loads(answers[0][2])["choices"] == json.loads(answers[2][2])["choices"] == \
        json.loads(alone[2])["choices"]
    assert http_call(url + "/v1/completions", {**bad, "seed": 1})[0] == 200


@pytest.mark.parametrize("penalty", [1e-300, 1e-30, 10.0])
def test_any_accepted_repetition_penalty_decodes(url, penalty):
    """repetition_penalty 1e-300 passes validation ((0, 10]); dividing a seen token's logit by it made inf, and the
    sampler's max-subtraction inf - inf = NaN: a 500 (found by tests/test_serve_fuzz.py)."""
    for body in ({"temperature": 0.7, "seed": 3}, {"temperature": 0}):
        status, _, raw = http_call(url + "/v1/completions", {"model": "tiny", "prompt": "Hello Hello", "max_tokens": 6,
                                                             "repetition_penalty": penalty, **body})
        assert status == 200 and json.loads(raw)["usage"]["completion_tokens"] == 6, raw[:300]


def test_sampling_at_any_accepted_temperature_gives_tokens():
    logits = torch.randn(3, 50) * 30
    for t in (1e-300, 1e-40, 1e-8, 0.5, 2.0):
        tokens = token_chooser(do_sample=True, temperature=t)(logits)
        assert tokens.shape == (3,) and ((0 <= tokens) & (tokens < 50)).all()
    assert torch.equal(token_chooser(do_sample=True, temperature=1e-300)(logits), logits.argmax(-1))


@pytest.mark.parametrize("path, body, param", [
    ("/v1/completions", {"prompt": "a\udfffb"}, "prompt[0]"),
    ("/v1/completions", {"prompt": ["fine", "\ud800"]}, "prompt[1]"),
    ("/v1/completions", {"prompt": "fine", "stop": ["\udfff"]}, "stop[0]"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "stop": "\udfff"}, "stop[0]"),
])
def test_a_lone_surrogate_is_a_400_naming_the_field(url, path, body, param):
    status, _, raw = http_call(url + path, json.dumps({"model": "tiny", "max_tokens": 2, **body}).encode())
    error = json.loads(raw)["error"]
    assert status == 400 and error["param"] == param and "not valid Unicode" in error["message"]
