"""StudyTracker against a real MLflow server whose replies to creations are lost once, as
when the server is killed after writing a run and before answering: MLflow's client retries
the POST and the server writes it again. The study must still hold one experiment and one run
of each. And a study's verdict as MLflow holds it: each method run's interval metrics and
tags, the parent run's verdict.json and recommendation, logged by the study's own path."""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from mlflow.tracking import MlflowClient

from rankstudy.core import mlflow_names as names
from rankstudy.core.records import TrialRecord
from rankstudy.core.summaries import MethodSummary
from rankstudy.core.verdict import ONE_SEED, pair_gap
from rankstudy.core.verdict_records import Verdict
from rankstudy.study.recorder import MlflowRecorder
from rankstudy.tracking.tracker import StudyTracker
from report_store import fill_study, make_result, make_study_summary, make_summary, make_verdict

CREATES = ("/api/2.0/mlflow/runs/create", "/api/2.0/mlflow/experiments/create")
HOP_BY_HOP = {"connection", "transfer-encoding", "content-length", "keep-alive"}


class LoseFirstCreateReply(BaseHTTPRequestHandler):
    """Forwards every request to the server; the first time it sees an experiment's or a run's
    creation, the server writes it and the client gets no reply (the connection closes)."""

    def forward(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        upstream = http.client.HTTPConnection("127.0.0.1", self.server.upstream_port, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        upstream.request(self.command, self.path, body, headers)
        reply = upstream.getresponse()
        data = reply.read()
        upstream.close()
        if self.path in CREATES and body not in self.server.lost:
            self.server.lost.append(body)
            self.close_connection = True
            return
        self.send_response(reply.status)
        for k, v in reply.getheaders():
            if k.lower() not in HOP_BY_HOP:
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = forward

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def lossy_proxy(upstream_port: int):
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), LoseFirstCreateReply)
    proxy.upstream_port, proxy.lost = upstream_port, []
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{proxy.server_address[1]}", proxy.lost
    finally:
        proxy.shutdown()
        proxy.server_close()


def trial_record(key: str) -> TrialRecord:
    return TrialRecord(
        key=key,
        arm="lora_r1",
        method="lora",
        rank="1",
        trial=0,
        out_dir="",
        params={"training.lr": 0.001},
        status="ok",
        failure=None,
        selection_metric=0.5,
    )


def method_summary() -> MethodSummary:
    return make_summary(cost={"flops": 1.0})


def test_runs_created_again_by_a_retried_request_are_kept_once(mlflow_server):
    server = mlflow_server
    with lossy_proxy(int(server.rpartition(":")[2])) as (uri, lost):
        tracker = StudyTracker(uri, "retried")
        tracker.start_study("retried", {"name": "retried"})
        result = make_result(loss_curve=[2.0, 1.0])
        trial_id = tracker.log_trial(trial_record("lora_r1/t0"), result)
        tracker.log_method("lora_grid", method_summary(), None)
        tracker.finish_study(make_study_summary())

        assert len(lost) == 4  # the experiment's, the parent's, the trial's and the method's
        client = MlflowClient(server)
        assert [e.name for e in client.search_experiments() if e.name == "retried"] == ["retried"]
        runs = client.search_runs([tracker.experiment_id])
        kinds = sorted(r.data.tags[names.KIND_TAG] for r in runs)
        assert kinds == [names.METHOD, names.STUDY, names.TRIAL]
        assert {r.info.run_id for r in runs} >= {tracker.parent_id, trial_id}
        trial = client.get_run(trial_id)
        assert [m.value for m in client.get_metric_history(trial_id, names.TRAIN_LOSS)] == [2, 1]
        assert trial.data.params == {"training.lr": "0.001"}
        assert all(r.info.status == "FINISHED" for r in runs)
        deleted = client.search_runs([tracker.experiment_id], run_view_type=2)  # DELETED_ONLY
        assert len(deleted) == 3  # the copies, in MLflow's trash


RANKS = [1, 2, 4, 8, 16]


def method_runs(client: MlflowClient, experiment: str) -> dict:
    found = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs([found], f"tags.`{names.KIND_TAG}` = '{names.METHOD}'")
    return {r.data.tags[names.METHOD_TAG]: r for r in runs}


def parent_run(client: MlflowClient, experiment: str):
    found = client.get_experiment_by_name(experiment).experiment_id
    return client.search_runs([found], f"tags.`{names.KIND_TAG}` = '{names.STUDY}'")[0]


def artifact(client: MlflowClient, run_id: str, path: str, tmp_path) -> dict:
    return json.loads(open(client.download_artifacts(run_id, path, str(tmp_path))).read())


def test_method_runs_hold_their_intervals_and_the_verdict_tags(tmp_path):
    """One seed, m2 the best by AURAC: m0 separated from it, m1 not (the constructed scores)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    summaries = fill_study(uri, "verdict", 3, RANKS, [0], 2, 20, verdict=True)
    verdict = make_verdict(summaries, RANKS, [0])
    intervals = verdict.intervals
    client = MlflowClient(uri)
    runs = method_runs(client, "verdict")
    assert set(runs) == {"m0", "m1", "m2"}
    for method, run in runs.items():
        own, metrics = intervals.methods[method], run.data.metrics
        for axis in ("aurac_log2", "aurac_linear"):
            assert metrics[f"{axis}_low"] == getattr(own, axis).low
            assert metrics[f"{axis}_high"] == getattr(own, axis).high
        for end in ("low", "high"):
            logged = client.get_metric_history(run.info.run_id, f"test_score_{end}")
            assert {m.step: m.value for m in logged} == {
                r: getattr(own.scores[r], end) for r in RANKS
            }
        assert "intervals" not in metrics and metrics["aurac_log2"] == own.aurac_log2.point
        i = own.aurac_log2
        tags = run.data.tags
        assert tags[names.INTERVAL_TAG] == f"{i.point:.3f} [{i.low:.3f}, {i.high:.3f}] (95%)"
        assert tags[names.DEPLOY_RANK_TAG] == str(verdict.recommendation.per_method[method])
    assert runs["m2"].data.tags[names.VS_BEST_TAG] == "best"
    for method, state in (("m0", "separated"), ("m1", "not separated")):
        gap = pair_gap(intervals, method, "m2")
        tag = runs[method].data.tags[names.VS_BEST_TAG]
        assert tag == f"{gap.point:+.3f} [{gap.low:+.3f}, {gap.high:+.3f}] vs m2, {state}"
    assert re.fullmatch(r"-0\.\d{3} \[-0\.\d{3}, \+0\.\d{3}\] vs m2, not separated", tag)


def test_the_study_run_holds_the_verdict_and_what_to_deploy(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    summaries = fill_study(uri, "verdict", 3, RANKS, [0], 2, 20, verdict=True)
    verdict = make_verdict(summaries, RANKS, [0])
    client = MlflowClient(uri)
    parent = parent_run(client, "verdict")
    logged = artifact(client, parent.info.run_id, names.VERDICT_ARTIFACT, tmp_path)
    assert logged == verdict.wire() and Verdict.model_validate(logged) == verdict
    choice = verdict.recommendation
    assert parent.data.tags[names.RECOMMENDATION_TAG] == f"{choice.method} at rank {choice.rank}"
    assert parent.data.tags[names.INTERVALS_NOTE_TAG] == ONE_SEED


def test_a_study_without_a_verdict_logs_none(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    fill_study(uri, "plain", 2, RANKS, [0, 1], 2, 20)
    client = MlflowClient(uri)
    parent = parent_run(client, "plain")
    assert names.VERDICT_ARTIFACT not in {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert names.RECOMMENDATION_TAG not in parent.data.tags
    for run in method_runs(client, "plain").values():
        assert "aurac_log2_low" not in run.data.metrics
        assert names.VS_BEST_TAG not in run.data.tags


def test_the_study_end_logs_the_verdict_through_the_recorder(tmp_path):
    """MlflowRecorder.log_summary, as a study's end calls it: two seeds, so no note."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ranks, seeds = [1, 2, 4], [0, 1]
    costs = {"m0": {"flops": 2.0, "train_flops": 1.0}, "m1": {"flops": 4.0, "train_flops": 2.0}}
    verdict = make_verdict({m: make_summary(cost=cost) for m, cost in costs.items()}, ranks, seeds)
    summaries = {}
    for m, cost in costs.items():  # each method's curve: its intervals' points
        own = verdict.intervals.methods[m]
        curve = [own.scores[r].point for r in ranks]
        summaries[m] = make_summary(
            ranks=ranks,
            scores=curve,
            scores_by_seed={"0": curve, "1": curve},
            aurac_log2=own.aurac_log2.point,
            intervals=own,
            cost=cost,
        )
    tracker = StudyTracker(uri, "recorded")
    tracker.start_study("recorded", {"name": "recorded"})
    summary = make_study_summary(methods=summaries, verdict=verdict)
    MlflowRecorder(None, tracker, print).log_summary(summary, tmp_path / "figures")
    client = MlflowClient(uri)
    runs = method_runs(client, "recorded")
    assert runs["m1"].data.tags[names.VS_BEST_TAG] == "best"
    assert runs["m0"].data.tags[names.VS_BEST_TAG].endswith("vs m1, not separated")
    for m, run in runs.items():
        assert run.data.metrics["aurac_log2_low"] == summaries[m].intervals.aurac_log2.low
        assert run.data.tags[names.DEPLOY_RANK_TAG] == str(verdict.recommendation.per_method[m])
    assert {a.path for a in client.list_artifacts(runs["m0"].info.run_id)} >= {"m0.png"}
    parent = client.get_run(tracker.parent_id)
    assert parent.info.status == "FINISHED"
    assert names.INTERVALS_NOTE_TAG not in parent.data.tags
    logged = artifact(client, tracker.parent_id, names.VERDICT_ARTIFACT, tmp_path)
    assert logged["recommendation"] == verdict.wire()["recommendation"]
