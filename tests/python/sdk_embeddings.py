"""Drives a running gateway's /v1/embeddings with the official OpenAI Python SDK.

usage: sdk_embeddings.py BASE_URL
The SDK asks for base64 by default and decodes it; `encoding_format="float"`
asks for JSON numbers. Prints one JSON object per call: which call, the
x-modelcache header, the vectors by index, and the usage.
"""
import json
import sys
import time

import openai

client = openai.OpenAI(base_url=sys.argv[1], api_key="sk-test-not-real", max_retries=0)


def embed(tag, inputs, **kwargs):
    raw = client.embeddings.with_raw_response.create(model="text-embedding-3-small", input=inputs, **kwargs)
    resp = raw.parse()
    print(json.dumps({
        "call": tag,
        "cache": raw.headers.get("x-modelcache"),
        "cached_inputs": raw.headers.get("x-modelcache-cached-inputs"),
        "indexes": [d.index for d in resp.data],
        "vectors": [d.embedding for d in sorted(resp.data, key=lambda d: d.index)],
        "prompt_tokens": resp.usage.prompt_tokens,
    }), flush=True)


embed("miss", ["first chunk", "second chunk"])
# Written in the background after the answer; give it a moment.
time.sleep(0.3)
embed("mixed", ["third chunk", "first chunk", "second chunk", "third chunk"])
time.sleep(0.3)
embed("hit-float", ["second chunk", "third chunk", "first chunk"], encoding_format="float")
embed("hit-single", "third chunk")
