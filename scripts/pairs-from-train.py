#!/usr/bin/env python3
"""Turns sentence pairs of shared/eval/train/*.jsonl ({"a", "b", "same_answer",
"lang", "source", "row"}) into `modelcache eval` pairs: each text one user
turn, `a` cached and `b` looked up, the category its language.

Usage: scripts/pairs-from-train.py FILE [--lang LANG] [--limit N] > pairs.jsonl

The PAWS-X test file is a development set: measure on it, never fit on it.
"""

import json
import sys


def main() -> None:
    args = sys.argv[1:]
    if not args:
        sys.exit(__doc__)
    path = args[0]
    lang = args[args.index("--lang") + 1] if "--lang" in args else None
    limit = int(args[args.index("--limit") + 1]) if "--limit" in args else None
    n = 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            p = json.loads(line)
            if lang and p.get("lang") != lang:
                continue
            print(json.dumps({
                "id": f"{p['source']}-{p.get('lang', 'xx')}-{p['row']}",
                "category": p.get("lang", ""),
                "subtype": p["source"],
                "same_answer": p["same_answer"],
                "cached": [{"role": "user", "content": p["a"]}],
                "probe": [{"role": "user", "content": p["b"]}],
                "lang": p.get("lang", ""),
            }, ensure_ascii=False))
            n += 1
            if limit and n >= limit:
                break


if __name__ == "__main__":
    main()
