#!/usr/bin/env bash
# The main job: set up .venv, start a local Ray head if none is running, submit a study with
# `ray job submit`, follow its output, and leave the summary, the report and the MLflow store
# under runs/.
#   bash jobs/submit.sh [SPEC] [extra jobs/study.py arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
bash jobs/setup.sh
root=$PWD
spec=${1:-jobs/specs/planted-cpu.yaml}
shift || true
name=$(.venv/bin/python -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['name'])" "$spec")
export PATH="$root/.venv/bin:$PATH" RAY_USAGE_STATS_ENABLED=0

if [ -z "${RAY_ADDRESS:-}" ] && ! ray status >/dev/null 2>&1; then
    # A local head for this machine's default study: auth off (it listens on this machine
    # only), one logical CPU per core. `ray stop` ends it when you are done.
    echo "submit: starting a local Ray head (stop it later with: ray stop)"
    RAY_AUTH_MODE=disabled ray start --head --node-ip-address=127.0.0.1 \
        --num-cpus="$(nproc)" --dashboard-host=127.0.0.1 --disable-usage-stats >/dev/null
fi
export RAY_ADDRESS=${RAY_ADDRESS:-http://127.0.0.1:8265}

# The spec and the output go by absolute paths: the job runs in a copy of this folder, and a
# spec's relative paths (its data) are relative to the spec file.
# A study that could not score every method still writes its summary and report: say where,
# then exit with its status.
# A head that has just started may not have its job agent yet ("No available agent to submit
# job"): the job was never made, so it is submitted again (under the same id, which also keeps
# a job that did start from ever running twice).
id="rankstudy-$name-$(date +%Y%m%d-%H%M%S)-$$"
said=$(mktemp)
trap 'rm -f "$said"' EXIT
for attempt in $(seq 30); do
    status=0
    ray job submit --submission-id "$id" --working-dir . \
        --runtime-env-json '{"excludes": [".venv", "runs", ".git", "*.db", "mlruns", "test-artifacts"]}' \
        -- "$root/.venv/bin/python" jobs/study.py --spec "$(realpath "$spec")" --out "$root/runs/$name" "$@" \
        2>&1 | tee "$said" || status=$?
    if [ "$status" -ne 0 ] && grep -q "No available agent" "$said" \
        && ! ray job status "$id" >/dev/null 2>&1; then
        echo "submit: the Ray head's job agent is not up yet (try $attempt of 30); again in 2 s"
        sleep 2
        continue
    fi
    break
done
echo "submit: summary $root/runs/$name/study_summary.json"
echo "submit: report  $root/runs/$name/report/report.html (open it in a browser)"
# MLflow opens an experiment on its GenAI overview; the runs page's own address shows the runs.
if [ -f "$root/runs/$name/study_summary.json" ]; then
    .venv/bin/python -c "import json, sys; from rankstudy.tracking.tracker import ui_hint
m = json.load(open(sys.argv[1]))['mlflow']
print('submit: ' + ui_hint(m['tracking_uri'], m['experiment_id'], sys.argv[2]))" \
        "$root/runs/$name/study_summary.json" "$root/.venv/bin/mlflow"
fi
exit $status
