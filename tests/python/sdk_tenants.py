"""The official OpenAI SDK against a gateway with tenants.

usage: sdk_tenants.py BASE_URL GATEWAY_KEY UNKNOWN_KEY
Prints one JSON object per call. A virtual (gateway) key gets a miss, then a
hit; an unknown key must raise the SDK's own AuthenticationError.
"""
import json
import sys
import time

import openai

base_url, good, unknown = sys.argv[1:4]


def ask(key, tag):
    client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0)
    try:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-test",
            messages=[{"role": "user", "content": "Which key am I using?"}],
            extra_headers={"x-modelcache-namespace": "sdk-user-1"},
        )
        completion = raw.parse()
        print(json.dumps({"call": tag, "cache": raw.headers.get("x-modelcache"),
                          "content": completion.choices[0].message.content}), flush=True)
    except openai.AuthenticationError as e:
        print(json.dumps({"call": tag, "error": "AuthenticationError", "status": e.status_code,
                          "code": e.code}), flush=True)


ask(good, "virtual-miss")
time.sleep(0.3)
ask(good, "virtual-hit")
ask(unknown, "unknown")
