#!/usr/bin/env bash
# Mutation run over the functional core (issue 22, item 6): does the fast suite bite?
#
# Runs mutmut 3 (pip install mutmut) on captum_perturb/functional/{_groups,problem,fixed_point}.py
# against the fast tests that cover them; the [tool.mutmut] table in pyproject.toml holds the
# scope and the test selection. One worker, single-threaded torch. Mutants and results go to
# mutants/ (git-ignored); a second run only retests what changed (rm -rf mutants/ for a fresh one).
# Prints the totals (killed / survived / timeout / ...), the kill rate and the surviving mutants;
# `mutmut show <name>` gives the diff of one.
#
# Timing (mutmut 3.8.1, one worker on one CPU core, 2026-12): _groups.py + problem.py, 752
# mutants, took 51 min (6 + 45); fixed_point.py (776 mutants, with problem.py's re-run after
# an edit) 67 min on a machine busy with other work. A killed mutant costs ~2 s, a surviving
# one the whole selection (~15 s). Results of 2026-12-06: _groups 122 killed / 13 survived,
# problem 487 / 100 (42 not checked), fixed_point 650 / 126 (83.8 %), before
# tests/test_fixed_point_steps.py, which kills 46 of fixed_point's result-changing survivors
# (checked by applying each by hand).
# This is a benchmark-style script to run by hand, not a CI stage.
#
# Usage: bash comparisons/benchmarks/mutation.sh [MUTANT_PATTERN...]
#   (from anywhere; the venv's mutmut must be on PATH). Patterns restrict the run, e.g.
#   "captum_perturb.functional._groups*"; without them every mutant not yet tested is run.
set -euo pipefail

cd "$(dirname "$0")/../.."

export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1

start=$(date +%s)
mutmut run --max-children 1 "$@"
end=$(date +%s)
echo "mutmut run: $(( (end - start) / 60 )) min $(( (end - start) % 60 )) s"

mutmut export-cicd-stats
python - <<'PY'
import json

s = json.load(open("mutants/mutmut-cicd-stats.json"))
print(", ".join(f"{k}={v}" for k, v in s.items()))
decided = s["killed"] + s["survived"]
if decided:
    print(f"kill rate killed/(killed+survived) = {s['killed']}/{decided} = {s['killed'] / decided:.1%}")
PY
echo "Mutants not killed:"
mutmut results
