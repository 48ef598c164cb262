"""How long an expert waits between submitting a batch and seeing the next one: 3 rounds of the
real loop (`microal al run`, polling) on the synthetic set with a real Label Studio server,
answers posted through the API (benchmarks/expert_loop.py). Each round writes where its time
went (rounds/round-<r>/timings.json); rounds 1-3 start from a pull of the experts' masks. Last line:

    round_latency rounds=3 round_s=<median> epochs_s=<x> score_s=<x> overhead_s=<x>
        ray_overhead_per_fit_s=<x> push_s=<x> pull_s=<x>        (one line; medians over rounds 1-3)

round_s: pull + train + score + select + push; epochs_s: time inside the training epochs (the
longest member); overhead_s = round_s - epochs_s - score_s (pull, push, selection, the loops' set-up,
Ray); ray_overhead_per_fit_s: a fit's wall time outside its training loop, mean over the members.
The loop itself polls Label Studio every second, which adds up to a second of waiting on top.

Usage: python benchmarks/round_latency.py [--rounds 3] [--members 2] [--out bench-out/round_latency]
"""

from __future__ import annotations

import json
import sys
import time

from common import fresh, parser


def main() -> int:
    args_parser = parser(__doc__, "round_latency")
    args_parser.add_argument("--rounds", type=int, default=3)
    args_parser.add_argument("--members", type=int, default=2)
    args = args_parser.parse_args()

    import pandas as pd
    from expert_loop import start

    started = time.time()
    out = fresh(args.out)
    loop = start(
        out,
        training={"epochs": 6, "samples_per_epoch": 64},
        al={"members": args.members, "batch_size": 8, "acquisition": "entropy", "score_batch_size": 64},
        min_new_annotations=8,
    )
    try:
        loop.start_al_run(args.rounds)
        for round_ in range(1, args.rounds + 1):
            loop.annotate(loop.wait_for_batch(round_))
            print(f"round {round_}: annotated the batch", flush=True)
        loop.finish()
    finally:
        loop.close()

    rows = []
    for round_ in range(0, args.rounds + 1):
        seconds = json.loads((loop.project_root / "rounds" / f"round-{round_}" / "timings.json").read_text())
        rows.append({"round": round_, **seconds})
    table = pd.DataFrame(rows).fillna(0.0)
    table["round_s"] = table[[c for c in ("pull", "train", "score", "select", "hand_over") if c in table]].sum(axis=1)
    table["overhead_s"] = table.round_s - table.epochs - table.score
    print(table.round(2).to_string(index=False))
    later = table[table["round"] >= 1]  # rounds that start from experts' answers
    median = later.median(numeric_only=True)
    minutes = (time.time() - started) / 60
    print(f"{minutes:.1f} minutes in all")
    print(
        f"round_latency rounds={len(later)} round_s={median.round_s:.1f} epochs_s={median.epochs:.1f} "
        f"score_s={median.score:.1f} overhead_s={median.overhead_s:.1f} "
        f"ray_overhead_per_fit_s={median.ray_per_fit:.2f} push_s={median.hand_over:.1f} pull_s={median.pull:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
