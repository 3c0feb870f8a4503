"""Sentinel's detection figures on a simulated month (scripts/sentinel-eval runs this).

Reads DIR/labels.jsonl, DIR/scores.jsonl and (for the comparison) DIR/features.jsonl. Prints,
for Sentinel over every event of the month: AUC overall and per kind, precision among the top
1 % of scores, recall at one false alarm per 1 000 events. Then, unless --no-pyod, the same
figures for pyod's IForest, ECOD, COPOD, HBOS and LOF fed the same feature vectors, beside
Sentinel's, all on one comparison set: every snooping event and a fixed random sample of
200 000 normal ones (AUC is unbiased under a random sample of the negatives; LOF could not
score a million events here in reasonable time). The pyod detectors are fitted on a random
sample of 50 000 events of the month (unlabelled, as an unsupervised detector would be).

--min-auc and --min-kind-auc turn the report into a test: exit 1 when Sentinel falls short.
"""
import argparse
import json
import random
import sys
import time


def auc(scores, labels):
    """Mann-Whitney AUC with ties counted half."""
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        avg = (i + j) / 2 + 1
        for k in range(i, j + 1):
            ranks[order[k]] = avg
        i = j + 1
    pos = sum(labels)
    neg = len(labels) - pos
    if pos == 0 or neg == 0:
        return float("nan")
    return (sum(r for r, y in zip(ranks, labels) if y) - pos * (pos + 1) / 2) / (pos * neg)


def recall_at_far(scores, labels, far=0.001):
    """Share of positives scored above the threshold that lets `far` of negatives through."""
    neg = sorted((s for s, y in zip(scores, labels) if not y), reverse=True)
    allowed = int(len(neg) * far)
    threshold = neg[allowed] if allowed < len(neg) else float("-inf")
    pos = [s for s, y in zip(scores, labels) if y]
    return sum(1 for s in pos if s > threshold) / max(1, len(pos)), threshold


def precision_at_top(scores, labels, share=0.01):
    """Positives among the top `share` of scores (ties resolved against the detector)."""
    k = max(1, int(len(scores) * share))
    top = sorted(zip(scores, labels), key=lambda x: (-x[0], x[1]))[:k]
    return sum(y for _, y in top) / k


def report(name, scores, kinds, kind_names):
    """One detector's figures: overall, then per kind (each kind against all normal events)."""
    labels = [k != "normal" for k in kinds]
    row = {"detector": name, "auc": auc(scores, labels)}
    row["recall_at_far_0.001"], row["threshold"] = recall_at_far(scores, labels)
    row["precision_top_1pct"] = precision_at_top(scores, labels)
    row["kinds"] = {}
    for kind in kind_names:
        sel = [i for i, k in enumerate(kinds) if k in ("normal", kind)]
        s = [scores[i] for i in sel]
        y = [kinds[i] == kind for i in sel]
        r, _ = recall_at_far(s, y)
        row["kinds"][kind] = {"auc": auc(s, y), "recall_at_far_0.001": r, "events": sum(y)}
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--replay-ns", type=int, default=0)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--no-pyod", action="store_true")
    ap.add_argument("--min-auc", type=float)
    ap.add_argument("--min-kind-auc", type=float)
    args = ap.parse_args()

    kinds = [json.loads(l)["label"] for l in open(f"{args.dir}/labels.jsonl")]
    scores = []
    alerts = 0
    with open(f"{args.dir}/scores.jsonl") as f:
        for i, line in enumerate(f):
            s = json.loads(line)
            if s["index"] != i:
                sys.exit(f"scores.jsonl line {i + 1} has index {s['index']}")
            scores.append(s["score"])
            alerts += s["alert"]
    if len(scores) != len(kinds):
        sys.exit(f"{len(scores)} scores for {len(kinds)} events")
    kind_names = sorted(set(kinds) - {"normal"})
    events = len(kinds)
    positives = sum(k != "normal" for k in kinds)
    print(f"events: {events}, snooping: {positives} ({100 * positives / events:.2f} %), "
          f"kinds: {len(kind_names)}, alerts at the default threshold: {alerts} "
          f"(of which snooping: {sum(1 for s, k in zip(scores, kinds) if k != 'normal' and s >= 0.85)})")
    if args.replay_ns:
        per_min = events / (args.replay_ns / 1e9) * 60
        print(f"replay: {events} events in {args.replay_ns / 1e9:.2f} s = {per_min:,.0f} events/minute")
    month = report("sentinel", scores, kinds, kind_names)
    print(f"\nSentinel over every event ({args.days} days, {events} events):")
    print(f"  AUC {month['auc']:.4f}; precision in the top 1 % {month['precision_top_1pct']:.3f} "
          f"(at most {min(1, positives / max(1, events // 100)):.3f} with {positives} positives); "
          f"recall at 1 false alarm per 1 000 events {month['recall_at_far_0.001']:.3f}")
    for kind, r in month["kinds"].items():
        print(f"  {kind:<11} AUC {r['auc']:.4f}  recall@FAR0.001 {r['recall_at_far_0.001']:.3f}"
              f"  ({r['events']} events)")
    failed = []
    if args.min_auc is not None and not month["auc"] >= args.min_auc:
        failed.append(f"AUC {month['auc']:.4f} < {args.min_auc}")
    if args.min_kind_auc is not None:
        for kind, r in month["kinds"].items():
            if not r["auc"] >= args.min_kind_auc:
                failed.append(f"{kind} AUC {r['auc']:.4f} < {args.min_kind_auc}")

    if not args.no_pyod:
        compare(args, scores, kinds, kind_names)
    if failed:
        sys.exit("FAILED: " + "; ".join(failed))


def compare(args, scores, kinds, kind_names):
    import numpy as np
    from pyod.models.copod import COPOD
    from pyod.models.ecod import ECOD
    from pyod.models.hbos import HBOS
    from pyod.models.iforest import IForest
    from pyod.models.lof import LOF

    with open(f"{args.dir}/features.jsonl") as f:
        header = json.loads(f.readline())
        x = np.array([json.loads(l) for l in f], dtype=np.float64)
    if x.shape != (len(kinds), len(header)):
        sys.exit(f"features: {x.shape} for {len(kinds)} events of {len(header)} features")
    rng = random.Random(7)
    normal = [i for i, k in enumerate(kinds) if k == "normal"]
    chosen = sorted([i for i, k in enumerate(kinds) if k != "normal"]
                    + rng.sample(normal, min(200_000, len(normal))))
    fit = rng.sample(range(len(kinds)), min(50_000, len(kinds)))
    sub_kinds = [kinds[i] for i in chosen]
    rows = [report("sentinel", [scores[i] for i in chosen], sub_kinds, kind_names)]
    rows[0]["seconds"] = None
    for name, model in [("IForest", IForest(random_state=7, n_jobs=2)), ("ECOD", ECOD()),
                        ("COPOD", COPOD()), ("HBOS", HBOS()), ("LOF", LOF(n_jobs=2))]:
        start = time.perf_counter()
        model.fit(x[fit])
        s = model.decision_function(x[chosen])
        row = report(name, [float(v) for v in s], sub_kinds, kind_names)
        row["seconds"] = time.perf_counter() - start
        rows.append(row)
    print(f"\nComparison set: {sum(k != 'normal' for k in sub_kinds)} snooping events and "
          f"{sum(k == 'normal' for k in sub_kinds)} normal ones; the same {len(header)} features "
          f"for every detector")
    head = f"  {'detector':<9} {'AUC':>7} {'R@.001':>7} " + " ".join(f"{k[:10]:>10}" for k in kind_names)
    print(head + "   (per-kind AUC)")
    for r in rows:
        print(f"  {r['detector']:<9} {r['auc']:7.4f} {r['recall_at_far_0.001']:7.3f} "
              + " ".join(f"{r['kinds'][k]['auc']:10.4f}" for k in kind_names)
              + ("" if r["seconds"] is None else f"   ({r['seconds']:.0f} s)"))
    best = max(rows[1:], key=lambda r: r["auc"])
    print(f"  best of pyod: {best['detector']} (AUC {best['auc']:.4f}); Sentinel "
          f"{'ahead' if rows[0]['auc'] > best['auc'] else 'NOT ahead'} by "
          f"{rows[0]['auc'] - best['auc']:+.4f}")


if __name__ == "__main__":
    main()
