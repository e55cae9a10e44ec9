"""Replays the client snippets of ModelCache's README, exactly as written
there (insert, query, clear), with the real `requests` library against a
running gateway. Only the address is changed: the snippets' 127.0.0.1:5000
becomes the gateway's admin listener, given as the first argument.

Prints one JSON line per call: {"call", "status", "content_type", "body"}.
"""

import json
import sys

ADDRESS = sys.argv[1]  # host:port of the admin listener

# The README's snippets, verbatim.
SNIPPETS = {
    "insert": r'''
import json
import requests
url = 'http://127.0.0.1:5000/modelcache'
type = 'insert'
scope = {"model": "CODEGPT-1008"}
chat_info = [{"query": [{"role": "system", "content": "あなたはAIコードアシスタントであり、ユーザーがコード関連の問題を解決するのを助けるために中立で無害な回答を提供する必要があります。"}, {"role": "user", "content": "あなたは誰ですか?"}],
                  "answer": "こんにちは、私はインテリジェントアシスタントです。どのようにお手伝いできますか？"}]
data = {'type': type, 'scope': scope, 'chat_info': chat_info}
headers = {"Content-Type": "application/json"}
res = requests.post(url, headers=headers, json=json.dumps(data))
''',
    "query": r'''
import json
import requests
url = 'http://127.0.0.1:5000/modelcache'
type = 'query'
scope = {"model": "CODEGPT-1008"}
query = [{"role": "system", "content": "あなたはAIコードアシスタントであり、ユーザーがコード関連の問題を解決するのを助けるために中立で無害な回答を提供する必要があります。"}, {"role": "user", "content": "あなたは誰ですか?"}]
data = {'type': type, 'scope': scope, 'query': query}

headers = {"Content-Type": "application/json"}
res = requests.post(url, headers=headers, json=json.dumps(data))
''',
    "remove": r'''
import json
import requests
url = 'http://127.0.0.1:5000/modelcache'
type = 'remove'
scope = {"model": "CODEGPT-1008"}
remove_type = 'truncate_by_model'
data = {'type': type, 'scope': scope, 'remove_type': remove_type}

headers = {"Content-Type": "application/json"}
res = requests.post(url, headers=headers, json=json.dumps(data))
''',
}

# The order a README reader follows: write, read, clear, read again.
ORDER = ["insert", "query", "remove", "query"]

for i, name in enumerate(ORDER):
    code = SNIPPETS[name].replace("127.0.0.1:5000", ADDRESS)
    scope = {}
    exec(code, scope)
    res = scope["res"]
    print(json.dumps({
        "call": f"{i}-{name}",
        "status": res.status_code,
        "content_type": res.headers.get("content-type"),
        "body": res.json(),
    }, ensure_ascii=False))
