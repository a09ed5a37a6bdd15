"""The server fuzzed from its own OpenAPI document (schemathesis): requests generated from every operation's
schema, valid ones and ones made to break it (wrong types, missing fields, values out of range: schemathesis'
positive and negative modes), get an answer or a 4xx with an OpenAI-style JSON error, never a 5xx, and the server
answers normally afterwards."""

import json

import pytest
import torch
from hypothesis import HealthCheck, settings
from test_serve import http_call, serving

from minimind import MiniMindConfig, MiniMindForCausalLM
from minimind.serve.app import create_app
from minimind.tokenizer import load_tokenizer

schemathesis = pytest.importorskip("schemathesis")


@pytest.fixture(scope="module")
def url():
    torch.manual_seed(0)
    model = MiniMindForCausalLM(MiniMindConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                               num_key_value_heads=1, vocab_size=6400,
                                               max_position_embeddings=256)).eval()
    # max_tokens_limit 4: a generated max_tokens of millions is trimmed, so every answer is short
    with serving(create_app(model, load_tokenizer(), model_name="tiny", max_tokens_limit=4, max_batch=4)) as url:
        yield url


def document():
    """The app's OpenAPI document, made without a server (the same function GET /openapi.json answers with)."""
    model = MiniMindForCausalLM(MiniMindConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                               num_key_value_heads=1, vocab_size=6400))
    return create_app(model, load_tokenizer()).openapi()


schema = schemathesis.openapi.from_dict(document())


def test_the_openapi_document_describes_the_request_bodies(url):
    status, _, body = http_call(url + "/openapi.json")
    paths = json.loads(body)["paths"]
    assert status == 200 and json.loads(body) == json.loads(json.dumps(document()))
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/responses"):
        assert paths[path]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_generated_request_gets_a_5xx(case, url):
    response = case.call(base_url=url, timeout=60)
    assert response.status_code < 500, (case.method, case.path, case.body, response.text[:300])
    if response.status_code >= 400 and case.path.startswith("/v1/"):
        error = response.json()["error"]  # OpenAI's shape: a message a person can act on
        assert isinstance(error["message"], str) and error["message"]


def test_the_server_answers_normally_after_the_fuzz(url):
    status, _, body = http_call(url + "/v1/completions", {"model": "tiny", "prompt": "Hello", "max_tokens": 3,
                                                          "temperature": 0})
    assert status == 200 and json.loads(body)["usage"]["completion_tokens"] == 3
    health = json.loads(http_call(url + "/health")[2])
    assert health["status"] == "ok" and health["queued"] == 0
