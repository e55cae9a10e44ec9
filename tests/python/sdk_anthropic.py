"""Drives a running gateway's /v1/messages with the official Anthropic Python SDK.

usage: sdk_anthropic.py BASE_URL
Prints one JSON object per call: which call, the x-modelcache header, the
text, the thinking blocks, the stop reason and the output tokens.
"""
import json
import sys
import time

import anthropic

client = anthropic.Anthropic(base_url=sys.argv[1], api_key="sk-ant-test-not-real", max_retries=0)
THINKING = {"type": "enabled", "budget_tokens": 1024}


def summary(tag, cache, message, **extra):
    print(json.dumps({
        "call": tag,
        "cache": cache,
        "id": message.id,
        "text": "".join(b.text for b in message.content if b.type == "text"),
        "thinking": [[b.thinking, b.signature] for b in message.content if b.type == "thinking"],
        "stop_reason": message.stop_reason,
        "output_tokens": message.usage.output_tokens,
        **extra,
    }), flush=True)


def create(tag, question, **kwargs):
    raw = client.messages.with_raw_response.create(
        model="claude-test", max_tokens=2048, messages=[{"role": "user", "content": question}], **kwargs
    )
    summary(tag, raw.headers.get("x-modelcache"), raw.parse())


def stream(tag, question, **kwargs):
    with client.messages.stream(
        model="claude-test", max_tokens=2048, messages=[{"role": "user", "content": question}], **kwargs
    ) as s:
        pieces = list(s.text_stream)
        final = s.get_final_message()
        cache = s.response.headers.get("x-modelcache")
    summary(tag, cache, final, pieces=len(pieces), streamed_text="".join(pieces))


# A miss is written in the background, after the answer has been sent; give
# it a moment before asking again.
create("json-miss", "What is the speed of light?")
time.sleep(0.3)
create("json-hit", "What is the speed of light?")
stream("stream-hit-of-json", "What is the speed of light?")
stream("stream-miss", "Why is the sky blue?", thinking=THINKING)
time.sleep(0.3)
stream("stream-hit", "Why is the sky blue?", thinking=THINKING)
create("json-hit-of-stream", "Why is the sky blue?", thinking=THINKING)
