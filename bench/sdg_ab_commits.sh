#!/bin/bash
# Two commits side by side on one leaf, whole `lab-ray generate` command, interleaved rounds.
#
#   git worktree add --detach /tmp/old c0ad3df; git worktree add --detach /tmp/new HEAD
#   bench/sdg_ab_commits.sh /tmp/old /tmp/new 2 "old:1 new:1 new:4"     # side:fan-out width
#
# Each side runs from its worktree as the cwd (Ray puts the driver's cwd first on its workers'
# path: with PYTHONPATH alone the workers imported the other side's code). One line per run on
# stdout and in $OUT/ab.txt: tokens billed and computed (prompt - cached + completion) per
# accepted sample, generation and whole-command seconds, accepted per minute, drops by reason.
set -euo pipefail
OLD=$1 NEW=$2 ROUNDS=${3:-2} SIDES=${4:-"old:1 new:1 new:4"}
OUT=${OUT:-/tmp/sdg_ab} LEAF=${LEAF:-compositional_skills/linguistics/synonyms} QUOTA=${QUOTA:-30}
VENV=$(cd "$(dirname "$0")/.." && pwd)/.venv
TAXONOMY=${TAXONOMY:-$(cd "$(dirname "$0")/../.." && pwd)/shared/fixtures/instructlab-taxonomy}
mkdir -p "$OUT"
for r in $(seq "$ROUNDS"); do
  for side in $SIDES; do
    name=${side%%:*} fan=${side##*:}
    tree=$OLD; [ "$name" = new ] && tree=$NEW
    run=$name-fan$fan-r$r-$(date +%H%M%S)
    start=$(date +%s.%N)
    (cd "$tree" && PYTHONPATH=$tree CI=1 "$VENV/bin/lab-ray" generate run.root="$OUT/runs" run.name="$run" \
        taxonomy.path="$TAXONOMY" "sdg.leaves=[$LEAF]" sdg.samples_per_leaf="$QUOTA" \
        sdg.fanout.gen_instruction="$fan" sdg.progress=false ${EXTRA:-} > "$OUT/$run.log" 2>&1)
    end=$(date +%s.%N)
    "$VENV/bin/python" - "$OUT/runs/$run/data/stats.json" "$run" "$start" "$end" <<'PY' | tee -a "$OUT/ab.txt"
import json, sys
t = json.load(open(sys.argv[1]))["total"]
wall = float(sys.argv[4]) - float(sys.argv[3])
billed = t["prompt_tokens"] + t["completion_tokens"]
kept = max(1, t["kept"])
print(f"{sys.argv[2]} wall {wall:.0f} s, generation {t['seconds']:.0f} s, kept {t['kept']} of {t['rows']}, "
      f"prompt {t['prompt_tokens']} + completion {t['completion_tokens']} (cached {t['cached_prompt_tokens']}), "
      f"billed/accepted {billed / kept:.0f}, computed/accepted {(billed - t['cached_prompt_tokens']) / kept:.0f}, "
      f"accepted/min {t['kept'] / wall * 60:.2f}, dropped {t['dropped']}")
PY
  done
done
