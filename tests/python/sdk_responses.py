"""Drives a running gateway's /v1/responses with the official OpenAI Python SDK.

usage: sdk_responses.py BASE_URL
Prints one JSON object per call: which call, the x-modelcache header, the
response id, its output text and the kinds of its output items.
"""
import json
import sys
import time

import openai

client = openai.OpenAI(base_url=sys.argv[1], api_key="sk-test-not-real", max_retries=0)


def summary(tag, cache, response, **extra):
    print(json.dumps({
        "call": tag,
        "cache": cache,
        "id": response.id,
        "status": response.status,
        "text": response.output_text,
        "items": [item.type for item in response.output],
        **extra,
    }), flush=True)


def create(tag, question, **kwargs):
    raw = client.responses.with_raw_response.create(model="gpt-test", input=question, **kwargs)
    summary(tag, raw.headers.get("x-modelcache"), raw.parse())


def create_streamed(tag, question):
    raw = client.responses.with_raw_response.create(model="gpt-test", input=question, stream=True)
    kinds, deltas, final = [], [], None
    for event in raw.parse():
        kinds.append(event.type)
        if event.type == "response.output_text.delta":
            deltas.append(event.delta)
        if event.type == "response.completed":
            final = event.response
    summary(tag, raw.headers.get("x-modelcache"), final, deltas="".join(deltas), first=kinds[0], last=kinds[-1])


def helper(tag, question):
    with client.responses.stream(model="gpt-test", input=question) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    summary(tag, None, final, deltas="".join(deltas))


create("miss", "What is the capital of France?")
# A miss is written in the background, after the answer has been sent.
time.sleep(0.3)
create("hit", "What is the capital of France?")
create_streamed("stream-hit", "What is the capital of France?")
helper("helper-hit", "What is the capital of France?")
create_streamed("stream-miss", "Why is the sky blue?")
time.sleep(0.3)
helper("helper-hit-of-stream", "Why is the sky blue?")
# Chaining onto an id the gateway minted for a hit.
first = client.responses.create(model="gpt-test", input="What is the capital of France?")
chained = client.responses.create(model="gpt-test", input="And its population?", previous_response_id=first.id)
print(json.dumps({"call": "chained", "first_id": first.id, "text": chained.output_text, "id": chained.id}), flush=True)
fetched = client.responses.retrieve(first.id)
print(json.dumps({"call": "retrieved", "id": fetched.id, "text": fetched.output_text}), flush=True)
