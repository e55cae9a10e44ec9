"""Drives a running gateway with the official OpenAI Python SDK.

usage: sdk_client.py BASE_URL
Prints one JSON object per call: which call, the x-modelcache header, the
assembled content, and (for streams) the chunk count and usage.
"""
import json
import sys
import time

import openai

base_url = sys.argv[1]
client = openai.OpenAI(base_url=base_url, api_key="sk-test-not-real", max_retries=0)


def plain(tag, question):
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-test", messages=[{"role": "user", "content": question}]
    )
    completion = raw.parse()
    print(json.dumps({
        "call": tag,
        "cache": raw.headers.get("x-modelcache"),
        "content": completion.choices[0].message.content,
        "finish_reason": completion.choices[0].finish_reason,
        "id": completion.id,
    }), flush=True)


def streamed(tag, question, include_usage=False):
    kwargs = {"stream_options": {"include_usage": True}} if include_usage else {}
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-test", messages=[{"role": "user", "content": question}], stream=True, **kwargs
    )
    parts, chunks, usage, finish = [], 0, None, None
    for chunk in raw.parse():
        chunks += 1
        if chunk.usage is not None:
            usage = chunk.usage.total_tokens
        for choice in chunk.choices:
            if choice.delta.content:
                parts.append(choice.delta.content)
            if choice.finish_reason:
                finish = choice.finish_reason
    print(json.dumps({
        "call": tag,
        "cache": raw.headers.get("x-modelcache"),
        "content": "".join(parts),
        "chunks": chunks,
        "usage": usage,
        "finish_reason": finish,
    }), flush=True)


# A miss is written in the background, after the answer has been sent; give
# it a moment before asking again.
plain("json-miss", "What is the speed of light?")
time.sleep(0.3)
plain("json-hit", "What is the speed of light?")
streamed("stream-miss", "Why is the sky blue?")
time.sleep(0.3)
streamed("stream-hit", "Why is the sky blue?")
# The streamed miss did not ask for usage, so its entry has none: a request
# that asks for usage is forwarded (never served an invented count), and its
# answer, which carries usage, replaces the entry.
streamed("stream-usage-miss", "Why is the sky blue?", include_usage=True)
time.sleep(0.3)
streamed("stream-hit-usage", "Why is the sky blue?", include_usage=True)
streamed("stream-hit-of-json", "What is the speed of light?", include_usage=True)
