"""StudyTracker against a real MLflow server whose replies to creations are lost once, as
when the server is killed after writing a run and before answering: MLflow's client retries
the POST and the server writes it again. The study must still hold one experiment and one run
of each."""

from __future__ import annotations

import contextlib
import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from mlflow.tracking import MlflowClient

from rankstudy import mlflow_names as names
from rankstudy.records import TrialRecord
from rankstudy.tracking import StudyTracker
from report_store import make_result
from studies import free_port, mlflow_command, service

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


def method_summary() -> dict:
    return {
        "ranks": [1],
        "scores": [0.5],
        "scores_by_seed": {"0": [0.5]},
        "aurac_log2": 0.5,
        "cost": {"flops": 1.0},
    }


def test_runs_created_again_by_a_retried_request_are_kept_once(tmp_path):
    port = free_port()
    server = f"http://127.0.0.1:{port}"
    with (
        service(mlflow_command(port, tmp_path), f"{server}/health", "the MLflow server"),
        lossy_proxy(port) as (uri, lost),
    ):
        tracker = StudyTracker(uri, "retried")
        tracker.start_study("retried", {"name": "retried"})
        result = make_result(loss_curve=[2.0, 1.0])
        trial_id = tracker.log_trial(trial_record("lora_r1/t0"), result)
        tracker.log_method("lora_grid", method_summary(), None)
        tracker.finish_study({"methods": {}})

        assert len(lost) == 4  # the experiment's, the parent's, the trial's and the method's
        client = MlflowClient(server)
        assert [e.name for e in client.search_experiments()] == ["retried", "Default"]
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
