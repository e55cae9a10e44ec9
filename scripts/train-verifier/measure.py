#!/usr/bin/env python3
"""Measure the quantised verifier and write OUT_DIR/MEASURED.md + SHA256SUMS.

    python3 scripts/train-verifier/measure.py CKPT MODEL_ONNX OUT_DIR [TAG]

All figures come from files the model was not trained on:
  * the held-out 10% of pawsx_train (common.is_heldout),
  * pawsx_test.jsonl per language,
  * shared/eval/dev.jsonl per category (last user turn of cached vs probe).
The recommended threshold is chosen on the held-out pawsx_train split only.
Per-pair scores go to WORK/scores-<tag>.jsonl (scratch, not the repo).
"""

import hashlib
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from common import (  # noqa: E402
    DATA,
    MAX_LEN,
    REPO,
    SEED,
    TOKENIZER_JSON,
    WORK,
    Verifier,
    auc,
    collate,
    encode_pairs,
    fpr_recall,
    is_heldout,
    last_user,
    load_tokenizer,
    read_jsonl,
    score_pairs,
)

GRID = [round(0.1 * i, 1) for i in range(1, 10)]
FINE = [round(0.05 * i, 2) for i in range(1, 20)]
MAX_FPR = 0.05  # threshold rule: lowest t on the 0.05 grid with held-out FPR <= 5%
EMBED_ONNX = os.path.join(REPO, "models", "all-minilm-l6-v2-int8", "model.onnx")


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for blk in iter(lambda: f.read(1 << 20), b""):
            h.update(blk)
    return h.hexdigest()


def session(path, threads):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def onnx_scores(sess, tok, pairs, batch=32):
    enc = encode_pairs(tok, pairs)
    order = sorted(range(len(enc)), key=lambda i: len(enc[i][0]))
    out = [0.0] * len(enc)
    for s in range(0, len(order), batch):
        idx = order[s : s + batch]
        b = collate([enc[i] for i in idx])
        feed = {k: v.numpy().astype(np.int64) for k, v in b.items()}
        logit = sess.run(["logits"], feed)[0][:, 0]
        for i, p in zip(idx, 1 / (1 + np.exp(-logit.astype(np.float64)))):
            out[i] = float(p)
    return out


def latency(sess, feed, runs=200, warm=20):
    for _ in range(warm):
        sess.run(None, feed)
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, feed)
        ts.append((time.perf_counter() - t) * 1000)
    return statistics.median(ts), sorted(ts)[int(0.9 * len(ts)) - 1]


def table(name, groups, t_rec):
    """groups: list of (label, scores, labels). Markdown rows."""
    lines = [f"### {name}", "", "| group | n (true/false) | AUC | " + " | ".join(f"t={t}" for t in GRID) + " |"]
    lines.append("|---|---|---|" + "---|" * len(GRID))
    for g, s, y in groups:
        npos = sum(y)
        cells = []
        for t in GRID:
            f, r = fpr_recall(s, y, t)
            cells.append(f"{f:.3f} / {r:.3f}")
        lines.append(f"| {g} | {len(y)} ({npos}/{len(y) - npos}) | {auc(s, y):.3f} | " + " | ".join(cells) + " |")
    lines += ["", "Cells are FPR / recall: FPR = share of same_answer=false pairs scored >= t; recall = share of same_answer=true pairs scored >= t.", ""]
    return lines


def run(ckpt, onnx_path, work, out_dir, tag="main"):
    torch.set_num_threads(2)
    tok = load_tokenizer()
    tr = os.path.join(DATA, "train")
    paws = read_jsonl(os.path.join(tr, "pawsx_train.jsonl"))
    val = [r for r in paws if is_heldout(r["row"])]
    ptest = read_jsonl(os.path.join(tr, "pawsx_test.jsonl"))
    dev = read_jsonl(os.path.join(DATA, "dev.jsonl"))
    lim = int(os.environ.get("MEASURE_LIMIT", "0"))  # smoke tests only
    if lim:
        ptest = ptest[::max(1, len(ptest) // lim)]
    dev_pairs = [(last_user(r["cached"]), last_user(r["probe"])) for r in dev]

    sess2 = session(onnx_path, 2)
    t0 = time.time()
    s_val = onnx_scores(sess2, tok, [(r["a"], r["b"]) for r in val])
    s_pt = onnx_scores(sess2, tok, [(r["a"], r["b"]) for r in ptest])
    s_dev = onnx_scores(sess2, tok, dev_pairs)
    score_s = time.time() - t0
    y_val = [bool(r["same_answer"]) for r in val]
    y_pt = [bool(r["same_answer"]) for r in ptest]
    y_dev = [bool(r["same_answer"]) for r in dev]

    with open(os.path.join(work, f"scores-{tag}.jsonl"), "w") as f:
        for name, rows, ss in (("val", val, s_val), ("pawsx_test", ptest, s_pt), ("dev", dev, s_dev)):
            for r, s in zip(rows, ss):
                f.write(json.dumps({"set": name, "id": r.get("id", r.get("row")), "lang": r.get("lang"), "category": r.get("category"), "subtype": r.get("subtype"), "same_answer": r["same_answer"], "score": s}) + "\n")

    # threshold choice on the held-out split only
    rec_t = None
    for t in FINE:
        f, r = fpr_recall(s_val, y_val, t)
        if f <= MAX_FPR:
            rec_t = t
            break
    if rec_t is None:
        rec_t = 0.95
    youden = max(FINE, key=lambda t: (lambda fr: fr[1] - fr[0])(fpr_recall(s_val, y_val, t)))

    # agreement: torch (fp32) vs quantised ONNX on 200 pairs
    model = Verifier()
    model.load_state_dict(torch.load(ckpt, map_location="cpu"))
    model.eval()
    import random

    rng = random.Random(f"{SEED}|agree")
    pool = [(r["a"], r["b"]) for r in ptest if r["lang"] == "en"] + dev_pairs + [(r["a"], r["b"]) for r in val]
    sample = rng.sample(pool, 200)
    s_torch = score_pairs(model, tok, sample)
    s_q = onnx_scores(sess2, tok, sample)
    diffs = [abs(a - b) for a, b in zip(s_torch, s_q)]
    fp32 = os.path.join(work, f"verifier-fp32-{tag}.onnx")
    fp32_diff = None
    if os.path.exists(fp32):
        s_f = onnx_scores(session(fp32, 2), tok, sample)
        fp32_diff = max(abs(a - b) for a, b in zip(s_torch, s_f))
    flips = sum(1 for a, b in zip(s_torch, s_q) if (a >= rec_t) != (b >= rec_t))
    # padding invariance: batch of 1, unpadded vs padded to 128 (as tokenizer.json pads)
    e = encode_pairs(tok, sample[:20])
    pad_diff = 0.0
    for ids, tt in e:
        feed1 = {"input_ids": np.array([ids], dtype=np.int64), "attention_mask": np.ones((1, len(ids)), dtype=np.int64), "token_type_ids": np.array([tt], dtype=np.int64)}
        n = MAX_LEN
        pid = np.zeros((1, n), dtype=np.int64)
        pid[0, : len(ids)] = ids
        pam = np.zeros((1, n), dtype=np.int64)
        pam[0, : len(ids)] = 1
        ptt = np.zeros((1, n), dtype=np.int64)
        ptt[0, : len(tt)] = tt
        l1 = sess2.run(["logits"], feed1)[0][0, 0]
        l2 = sess2.run(["logits"], {"input_ids": pid, "attention_mask": pam, "token_type_ids": ptt})[0][0, 0]
        pad_diff = max(pad_diff, abs(1 / (1 + np.exp(-l1)) - 1 / (1 + np.exp(-l2))))

    # latency
    qa, qb = "How do I reverse a list in Python quickly and safely?", "What is the best way to reverse a Python list in place?"
    pe = tok.encode(qa, qb)
    pfeed = {"input_ids": np.array([pe.ids], dtype=np.int64), "attention_mask": np.ones((1, len(pe.ids)), dtype=np.int64), "token_type_ids": np.array([pe.type_ids], dtype=np.int64)}
    se = tok.encode(qa)
    sfeed = {"input_ids": np.array([se.ids], dtype=np.int64), "attention_mask": np.ones((1, len(se.ids)), dtype=np.int64), "token_type_ids": np.zeros((1, len(se.ids)), dtype=np.int64)}
    lat = {}
    for th in (1, 2):
        lat[("verifier", th)] = latency(session(onnx_path, th), pfeed)
        lat[("embed", th)] = latency(session(EMBED_ONNX, th), sfeed)

    def _info(t):
        pth = os.path.join(work, f"train-info-{t}.json")
        return json.load(open(pth)) if os.path.exists(pth) else None

    infos = []
    main_info = _info(tag)
    if main_info:
        if main_info.get("init") and tag != "stage1" and _info("stage1"):
            infos.append(("stage1", _info("stage1")))
        infos.append((tag, main_info))

    # ---------------------------------------------------------------- report
    L = ["# Verifier measurements", ""]
    L += [
        f"Model: `model.onnx` (sha256 `{sha256(onnx_path)}`, {os.path.getsize(onnx_path):,} bytes), a fine-tuned all-MiniLM-L6-v2 cross-encoder with int8 weight-only quantisation (MatMul weights per output column, word/position embeddings per row, stored as int8 and rebuilt as Cast*scale, which onnxruntime constant-folds at load; activations stay fp32). Plain `quantize_dynamic` (MatMulInteger) was rejected: it moved scores by up to 0.36 against torch on this model.",
        f"Tokenizer used: `models/all-minilm-l6-v2-int8/tokenizer.json`, sha256 `{sha256(TOKENIZER_JSON)}`.",
        "Score = sigmoid(logits[:, 0]); input = tokenizer.encode(a, b) = `[CLS] a [SEP] b [SEP]`, type ids 0/1, LongestFirst truncation to 128 tokens.",
        "All scores below are from the quantised ONNX model run with onnxruntime " + __import__("onnxruntime").__version__ + ". None of these sets was trained on.",
        "",
    ]
    total_min = 0.0
    for t, info in infos:
        b = info.get("best", {})
        total_min += info.get("train_seconds", 0) / 60
        L += [
            f"Training `{t}`: seed {info.get('seed')}, " + (f"initialised from `{os.path.basename(info['init'])}`, " if info.get("init") else "from the base weights, ")
            + f"{info.get('examples')} examples (both orders, gen ratio {info.get('gen_ratio', 1.0)}), batch {info.get('batch')}, lr {info.get('lr')}, {info.get('steps')} steps, "
            f"{info.get('train_seconds', 0) / 60:.1f} min on 2 CPU threads (shared with a Rust build). Best checkpoint: step {b.get('step')}, held-out loss {b.get('val_loss', 0):.4f}, AUC {b.get('val_auc', 0):.4f}.",
            "",
        ]
    if infos:
        L += [f"Total training time: {total_min:.1f} min.", ""]
    f_v, r_v = fpr_recall(s_val, y_val, rec_t)
    L += [
        "## Recommended threshold",
        "",
        f"**t = {rec_t}** (score >= t means serve the cached answer). Rule: the lowest threshold on a 0.05 grid whose false-positive rate on the held-out 10% of pawsx_train is <= {MAX_FPR:.0%}. "
        f"Chosen on that split only; dev and pawsx_test were not used for it. (For reference, the Youden-optimal threshold on the held-out split is {youden}.)",
        "",
        "| set | group | n | AUC | FPR at t | recall at t |",
        "|---|---|---|---|---|---|",
    ]
    rows_rec = [("held-out pawsx_train", "en", s_val, y_val)]
    for lang in ("en", "zh", "ja", "es"):
        ii = [i for i, r in enumerate(ptest) if r["lang"] == lang]
        rows_rec.append(("pawsx_test", lang, [s_pt[i] for i in ii], [y_pt[i] for i in ii]))
    rows_rec.append(("dev", "all", s_dev, y_dev))
    cats = sorted({r["category"] for r in dev})
    for c in cats:
        ii = [i for i, r in enumerate(dev) if r["category"] == c]
        rows_rec.append(("dev", c, [s_dev[i] for i in ii], [y_dev[i] for i in ii]))
    for st, g, s, y in rows_rec:
        f, r = fpr_recall(s, y, rec_t)
        L.append(f"| {st} | {g} | {len(y)} | {auc(s, y):.3f} | {f:.3f} | {r:.3f} |")
    L.append("")

    L += ["## Threshold tables", ""]
    L += table("Held-out 10% of pawsx_train (en)", [("held-out", s_val, y_val)], rec_t)
    L += table("pawsx_test per language", [(g, s, y) for st, g, s, y in rows_rec if st == "pawsx_test"], rec_t)
    L += table("dev.jsonl per category (last user turn of cached vs probe)", [(g, s, y) for st, g, s, y in rows_rec if st == "dev"], rec_t)
    L += [
        "Note: zh and ja text is mostly [UNK] to this English WordPiece vocabulary, so those rows are expected to be poor. "
        "For dev, only the last user turn is scored: system prompts and earlier history are invisible to the verifier, so `system_prompt` and `multi_turn` misses that differ only there cannot be caught by it.",
        "",
        f"### dev.jsonl per subtype at t = {rec_t} (subtypes with n >= 4)",
        "",
        "| subtype | label | n | share scored >= t |",
        "|---|---|---|---|",
    ]
    subs = {}
    for r, s in zip(dev, s_dev):
        subs.setdefault((r["subtype"], bool(r["same_answer"])), []).append(s)
    for (st, lab), ss in sorted(subs.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        if len(ss) >= 4:
            L.append(f"| {st} | {'hit' if lab else 'miss'} | {len(ss)} | {sum(1 for s in ss if s >= rec_t) / len(ss):.2f} |")
    L.append("")

    L += [
        "## Agreement check (quantised ONNX vs torch fp32)",
        "",
        f"200 pairs (seeded sample of pawsx_test en, dev and the held-out split): max |sigmoid diff| = {max(diffs):.4f}, mean = {sum(diffs) / len(diffs):.4f}; "
        f"decisions flipped at t = {rec_t}: {flips} of 200."
        + (f" fp32 ONNX vs torch: max |diff| = {fp32_diff:.2e}." if fp32_diff is not None else ""),
        f"Padding invariance (batch of 1, unpadded vs padded to 128 with attention_mask 0): max |sigmoid diff| = {pad_diff:.2e} over 20 pairs.",
        "",
        "## Latency (onnxruntime " + __import__("onnxruntime").__version__ + ", CPU, batch 1, median / p90 of 200 runs after 20 warm-up runs, sequential execution)",
        "",
        f"Verifier input: the pair ({qa!r}, {qb!r}) = {len(pe.ids)} tokens. Embedding model (`models/all-minilm-l6-v2-int8/model.onnx`) input: {qa!r} = {len(se.ids)} tokens.",
        "",
        "| model | intra-op threads | median ms | p90 ms |",
        "|---|---|---|---|",
    ]
    for (m, th), (med, p90) in sorted(lat.items()):
        name = "verifier (pair)" if m == "verifier" else "embedding model (one question)"
        L.append(f"| {name} | {th} | {med:.2f} | {p90:.2f} |")
    L += ["", "Measured on the shared 2-core machine (a Rust build may have been running), so absolute numbers are noisy; the ratio is the useful part. "
          "The verifier runs fp32 MatMuls after load (its weights are int8 only on disk), so it holds ~90 MB of weights in memory.", ""]
    L += [f"Scoring all {len(val) + len(ptest) + len(dev)} measurement pairs with 2 threads (batches of 32) took {score_s:.0f} s.", ""]

    os.makedirs(out_dir, exist_ok=True)
    if tag == "main":
        with open(os.path.join(out_dir, "MEASURED.md"), "w") as f:
            f.write("\n".join(L))
        with open(os.path.join(out_dir, "SHA256SUMS"), "w") as f:
            f.write(f"{sha256(onnx_path)}  model.onnx\n")
    else:
        with open(os.path.join(work, f"MEASURED-{tag}.md"), "w") as f:
            f.write("\n".join(L))
    print("\n".join(L))
    return rec_t


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2], WORK, sys.argv[3], tag=sys.argv[4] if len(sys.argv) > 4 else "main")
