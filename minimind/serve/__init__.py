"""`minimind serve MODEL`: an OpenAI-compatible HTTP server, with a small web chat page.

    minimind serve out/                                  # http://127.0.0.1:8000: web chat at /, the API at /v1
    minimind serve out/ --host 0.0.0.0 --port 8080 --api_key secret --max_batch 8

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="secret")  # any key when the server has none
    reply = client.chat.completions.create(model="out", messages=[{"role": "user", "content": "Hello"}])

Endpoints: `GET /v1/models` (the one model served, named after MODEL or --model_name), `POST /v1/chat/completions`,
`POST /v1/completions`, `POST /v1/responses` (OpenAI's Responses API over the same chat path: `responses.py`),
`GET /health` (status and batching counters), `GET /openapi.json` (the OpenAPI document, request bodies included),
`GET /` (the web chat page), `GET /tools` and `POST /tools/NAME` (the built-in tools the page runs). Both
completion endpoints stream with `"stream": true` (server-sent events in OpenAI's chunk format, ending with
`data: [DONE]`; `stream_options: {"include_usage": true}` adds a last chunk with the token counts); logprobs and
echo are answered whole only (a 400 with stream). /v1/responses streams the Responses API's
typed events (response.created ... response.completed, or response.incomplete when max_output_tokens ran out).

Request fields: model (optional; any name is served, as MiniMind's own server does, and the answer's model field
echoes it; GET /v1/models/NAME answers for any NAME too), messages (read by the same rule as the training data,
`minimind.data.messages`: roles system / developer (read as system) / user / assistant / tool, content a string
or a list of text parts joined with newlines, name accepted and dropped, assistant tool_calls) or prompt (a string,
a list of strings, or token ids; a string gets the <|im_start|> that begins every pretraining document, as in
`minimind generate`), max_tokens (max_completion_tokens in chat), temperature (0 = greedy; OpenAI's default 1),
top_p, n, stop (a string or up to 4), seed, stream, stream_options, response_format; in chat also tools, tool_choice
and parallel_tool_calls (OpenAI's function tools, rendered into the prompt; the answer's calls come back as
tool_calls), logprobs and top_logprobs, and thinking on or off (the answer's thinking comes back as
reasoning_content): enable_thinking, chat_template_kwargs {"enable_thinking"} (vLLM's) or {"open_thinking"}
(MiniMind's), or reasoning_effort ("none" and "minimal" turn it off; "low", "medium", "high" on: the model has one
kind of thinking, so the levels above "minimal" are the same; what is given must agree); in completions also echo
and logprobs (as lm-evaluation-harness's local-completions asks for them); and two extensions: top_k and
repetition_penalty. max_tokens is an upper bound: more than --max_tokens_limit gets that limit. presence_penalty and
frequency_penalty are refused when not 0 (the model has repetition_penalty instead), and so are logit_bias,
best_of, suffix and the audio and legacy function fields. Unknown fields are refused, naming the field; null is
read as not given; types are strict (a number is a JSON number, an integer has no fraction). usage counts real
tokens: the prompt's (once per prompt, whatever n) and every generated one (an ending eos included).

JSON answers by constrained decoding (`constrain.py`): response_format {"type": "json_object"} makes the answer a
JSON object, {"type": "json_schema", "json_schema": {"schema": ...}} a JSON value valid against the schema (type,
properties, required, additionalProperties, items, minItems, maxItems, enum, const, anyOf, $ref into $defs;
another keyword is a 400 naming it). Every token is chosen among those that keep the text valid, and before
max_tokens runs out the value is closed (finish_reason "length" if it still did not fit). Such an answer has no
thinking. A call that tool_choice forces ("required" or a named function) has its arguments decoded the same way,
valid against the function's parameters (read leniently there: keywords beyond that subset are not enforced).
With tool_choice "auto" and a JSON response_format, the answer is JSON, never a call.

Chat requests are formatted with the tokenizer's chat template; a tokenizer without one gets a 400 that says to use
/v1/completions (this server does not guess a format). A pretrain-only model still answers chat requests through the
template, but it has never seen a conversation: the startup banner says so.

Every bad request gets OpenAI's error shape, `{"error": {"message", "type", "param", "code"}}`, naming the field:
400 for invalid values (a prompt longer than the context window says both lengths), 401 for a missing or wrong API
key (`--api_key` or MINIMIND_API_KEY; then `Authorization: Bearer KEY` is required on /v1 and /tools), 404 for an
unknown route or tool, 413 for a body over --max_request_bytes, 503 once the server is shutting down, 500 for
a failure of the server's own (an answer already streaming gets the error as its last event; a failure in one
request's token choice fails that request alone, the others in its batch decode on). max_tokens is capped
by --max_tokens_limit; without it a request gets what is left of the context window, up to that cap.

The parts: `protocol.py` (the requests as pydantic models, and errors), `worker.py` (the batching worker),
`answer.py` (one job's answer, whole or streamed), `reply.py` (a chat answer's text read as reasoning, content and
tool calls), `constrain.py` (JSON by constrained decoding) and `schema.py` (the JSON schemas it decodes),
`responses.py` (the Responses API), `app.py` (the endpoints, the chat page and the tools it runs), `server.py`
(socket and uvicorn).
"""
