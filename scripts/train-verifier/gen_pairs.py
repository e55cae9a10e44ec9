"""Generated training pairs (seeded) that teach what a cache must refuse and
what it must still serve. Built ONLY from the training sentences (the 90%
training part of pawsx_train plus stsb_train); never from the held-out 10%,
pawsx_test or dev.

Kinds:
  swap     (must-miss) two capitalised names / noun phrases, or the two
           numbers, of one sentence exchange places, where the words between
           them are not a symmetric connective ("and", "or", ",", "with"...).
           Also "from X to Y" -> "from Y to X".
  replace  (must-miss) ONE content word is replaced by a different word of the
           same shape from elsewhere in the corpus: a capitalised name by
           another name, a number by another number, a lower-case content word
           (length >= 4, not a stop word) by another such word.
  noise    (must-hit) surface noise on one side: case change, dropped / added
           punctuation, a one-letter typo in a word of >= 6 letters, a filler
           prefix, question-mark added/removed. Applied either to a sentence
           against itself, or to the b side of a real positive pair.
  noise_neg (must-miss kept) the same surface noise on the b side of a real
           negative pair, label unchanged, so noise is not taken as a hint.

Usage as a module: generate(train_rows, seed) -> list of dicts like the data
files ({"a","b","same_answer","source": "gen-<kind>"}).
"""

import random
import re
import sys

STOP = set(
    """a an the and or but if of at by for with about against between into through
during before after above below to from up down in out on off over under again
further then once here there when where why how all any both each few more most
other some such no nor not only own same so than too very can will just don't should
now is are was were be been being have has had having do does did doing this that
these those he she it they them his her its their we you i me my our your who whom
which what also after while later since until during following became become well
would could first second third one two three new called known named located part
many several used other like another same although however three four five""".split()
)
SYMMETRIC = {"and", "or", ",", ", and", ", or", "&", "with", "and the", "or the", "as well as", "nor", "/", "-", "and also", ", and the"}
FILLERS = [
    "Quick question: ",
    "Can you tell me ",
    "Please ",
    "Hey, ",
    "I was wondering, ",
    "Question: ",
    "So, ",
    "Tell me: ",
]
WORD_RE = re.compile(r"[A-Za-z][A-Za-z'\-]*|\d+(?:[.,]\d+)?")
CAP_SPAN = re.compile(r"\b(?:[A-Z][a-zA-Z'\-]+)(?:\s+(?:of\s+|de\s+|the\s+)?[A-Z][a-zA-Z'\-]+)*")
NUM_RE = re.compile(r"\b\d+(?:[.,]\d+)?\b")
FROM_TO = re.compile(r"\bfrom ([A-Z][\w'\-]*(?: [A-Z][\w'\-]*)*) to ([A-Z][\w'\-]*(?: [A-Z][\w'\-]*)*)")


def _spans(sent):
    """Capitalised spans not at the very start of the sentence."""
    out = []
    for m in CAP_SPAN.finditer(sent):
        if m.start() == 0:
            continue
        if m.group(0).lower() in STOP:
            continue
        out.append((m.start(), m.end()))
    return out


def swap(sent, rng):
    m = FROM_TO.search(sent)
    if m and m.group(1) != m.group(2) and rng.random() < 0.7:
        s = sent[: m.start(1)] + m.group(2) + sent[m.end(1) : m.start(2)] + m.group(1) + sent[m.end(2) :]
        return s
    kind = rng.random()
    spans = _spans(sent) if kind < 0.8 else [(x.start(), x.end()) for x in NUM_RE.finditer(sent)]
    if len(spans) < 2:
        spans = _spans(sent)
    cands = []
    for i in range(len(spans)):
        for j in range(i + 1, min(i + 3, len(spans))):
            (s1, e1), (s2, e2) = spans[i], spans[j]
            x, y = sent[s1:e1], sent[s2:e2]
            between = sent[e1:s2].strip().lower()
            if x == y or not between or between in SYMMETRIC:
                continue
            if len(between.split()) > 8:
                continue
            cands.append((s1, e1, s2, e2))
    if not cands:
        return None
    s1, e1, s2, e2 = rng.choice(cands)
    return sent[:s1] + sent[s2:e2] + sent[e1:s2] + sent[s1:e1] + sent[e2:]


def build_vocab(sents):
    caps, lows, nums = set(), set(), set()
    for s in sents:
        for i, m in enumerate(WORD_RE.finditer(s)):
            w = m.group(0)
            if w[0].isdigit():
                nums.add(w)
            elif w[0].isupper() and m.start() > 0 and len(w) >= 3 and w.lower() not in STOP:
                caps.add(w)
            elif w.islower() and len(w) >= 4 and w not in STOP and w.isalpha():
                lows.add(w)
    return sorted(caps), sorted(lows), sorted(nums)


def replace(sent, rng, vocab):
    caps, lows, nums = vocab
    toks = [m for m in WORD_RE.finditer(sent)]
    cands = []
    for m in toks:
        w = m.group(0)
        if w[0].isdigit():
            cands.append((m, nums, 2))
        elif w[0].isupper() and m.start() > 0 and len(w) >= 3 and w.lower() not in STOP:
            cands.append((m, caps, 2))
        elif w.islower() and len(w) >= 4 and w not in STOP and w.isalpha():
            cands.append((m, lows, 1))
    if not cands:
        return None
    # names and numbers are more cache-relevant: weight them double
    weights = [c[2] for c in cands]
    m, pool, _ = rng.choices(cands, weights=weights, k=1)[0]
    w = m.group(0)
    for _ in range(10):
        r = rng.choice(pool)
        if r.lower() != w.lower() and r.lower() not in sent.lower() and r[:4].lower() != w[:4].lower():
            return sent[: m.start()] + r + sent[m.end() :]
    return None


def typo(sent, rng):
    words = [m for m in re.finditer(r"[A-Za-z]{6,}", sent)]
    if not words:
        return None
    m = rng.choice(words)
    w = m.group(0)
    i = rng.randrange(1, len(w) - 1)
    op = rng.randrange(4)
    if op == 0:  # swap adjacent letters
        nw = w[:i] + w[i + 1] + w[i] + w[i + 2 :]
    elif op == 1:  # delete a letter
        nw = w[:i] + w[i + 1 :]
    elif op == 2:  # double a letter
        nw = w[:i] + w[i] + w[i:]
    else:  # substitute a neighbouring letter
        nw = w[:i] + rng.choice("aeiou" if w[i] not in "aeiou" else "rstnl") + w[i + 1 :]
    if nw == w:
        return None
    return sent[: m.start()] + nw + sent[m.end() :]


def noise(sent, rng):
    ops = rng.sample(["case", "punct", "typo", "filler", "qmark"], k=rng.choice([1, 1, 2]))
    s = sent
    for op in ops:
        if op == "case":
            c = rng.randrange(3)
            s = s.lower() if c == 0 else (s.upper() if c == 1 else s[:1].lower() + s[1:])
        elif op == "punct":
            if rng.random() < 0.6:
                s2 = re.sub(r"[.,;:!?]", "", s)
                s = s2 if s2.strip() else s
            else:
                s = s.rstrip(".") + rng.choice(["!", "...", " .", "?", ".."])
        elif op == "typo":
            t = typo(s, rng)
            s = t or s
        elif op == "filler":
            f = rng.choice(FILLERS)
            s = f + (s[:1].lower() + s[1:] if f[-2] != ":" else s)
        elif op == "qmark":
            if s.rstrip().endswith("?"):
                s = s.rstrip().rstrip("?")
            else:
                s = s.rstrip().rstrip(".") + "?"
    return s if s != sent else None


def generate(rows, seed, limit=None):
    """rows: the real training rows (pawsx train part + stsb). Returns generated
    rows, at most `limit` (default len(rows))."""
    rng = random.Random(f"{seed}|gen")
    limit = limit if limit is not None else len(rows)
    sents = sorted({r["a"] for r in rows} | {r["b"] for r in rows})
    vocab = build_vocab(sents)
    n_swap = int(limit * 0.25)
    n_repl = int(limit * 0.30)
    n_noise = int(limit * 0.35)
    n_noise_neg = limit - n_swap - n_repl - n_noise
    out = []

    order = sents[:]
    rng.shuffle(order)
    k = 0
    for s in order:
        if k >= n_swap:
            break
        t = swap(s, rng)
        if t and t != s:
            a, b = (s, t) if rng.random() < 0.5 else (t, s)
            out.append({"a": a, "b": b, "same_answer": False, "source": "gen-swap"})
            k += 1

    rng.shuffle(order)
    k = 0
    for s in order:
        if k >= n_repl:
            break
        t = replace(s, rng, vocab)
        if t and t != s:
            out.append({"a": s, "b": t, "same_answer": False, "source": "gen-replace"})
            k += 1

    pos_rows = [r for r in rows if r["same_answer"]]
    neg_rows = [r for r in rows if not r["same_answer"]]
    rng.shuffle(order)
    k = 0
    it = iter(order)
    while k < n_noise:
        if rng.random() < 0.5:
            r = rng.choice(pos_rows)
            a, b0 = (r["a"], r["b"]) if rng.random() < 0.5 else (r["b"], r["a"])
        else:
            a = b0 = next(it, None)
            if a is None:
                break
        b = noise(b0, rng)
        if b:
            out.append({"a": a, "b": b, "same_answer": True, "source": "gen-noise"})
            k += 1

    k = 0
    while k < n_noise_neg:
        r = rng.choice(neg_rows)
        a, b0 = (r["a"], r["b"]) if rng.random() < 0.5 else (r["b"], r["a"])
        b = noise(b0, rng)
        if b:
            out.append({"a": a, "b": b, "same_answer": False, "source": "gen-noise_neg"})
            k += 1
    return out


if __name__ == "__main__":
    # Preview: python3 gen_pairs.py [N]
    import os

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from common import DATA, SEED, is_heldout, read_jsonl

    paws = [r for r in read_jsonl(os.path.join(DATA, "train", "pawsx_train.jsonl")) if not is_heldout(r["row"])]
    stsb = read_jsonl(os.path.join(DATA, "train", "stsb_train.jsonl"))
    gen = generate(paws + stsb, SEED)
    from collections import Counter

    print(Counter(g["source"] for g in gen))
    rng = random.Random(0)
    for g in rng.sample(gen, int(sys.argv[1]) if len(sys.argv) > 1 else 12):
        print(g["source"], g["same_answer"], "\n  A:", g["a"], "\n  B:", g["b"])
