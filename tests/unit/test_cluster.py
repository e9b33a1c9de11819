"""cluster.yaml, checked offline: valid for the installed Ray's autoscaler schema, installs the
same pinned stack as the local setup (by running the same script), and holds no secrets."""

import json
import re
from pathlib import Path

import jsonschema
import ray
import yaml

from studies import ROOT

CLUSTER = yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_valid_against_the_ray_autoscaler_schema():
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(CLUSTER, schema)
    assert CLUSTER["head_node_type"] in CLUSTER["available_node_types"]


def test_installs_the_local_setup_from_the_synced_repo():
    assert CLUSTER["file_mounts"] == {"~/rankstudy": "."}
    assert "cd ~/rankstudy && bash jobs/setup.sh" in CLUSTER["setup_commands"]
    setup = (ROOT / "jobs" / "setup.sh").read_text()
    assert "torch==2.13.0" in setup and "-e '.[test]'" in setup  # pins live in pyproject.toml
    # ray on every node is the virtual environment's, so versions cannot drift from it
    for cmd in CLUSTER["head_start_ray_commands"] + CLUSTER["worker_start_ray_commands"]:
        if " ray start" in cmd or "/ray start" in cmd:
            assert "~/rankstudy/.venv/bin/ray start" in cmd


def test_head_serves_mlflow_and_takes_no_trials():
    head = CLUSTER["available_node_types"][CLUSTER["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    start = " ".join(CLUSTER["head_start_ray_commands"])
    assert "mlflow server" in start and "MLFLOW_TRACKING_URI=http://127.0.0.1:5000" in start
    gpus = {t["node_config"]["InstanceType"] for t in CLUSTER["available_node_types"].values()}
    assert {"g6e.2xlarge", "p4d.24xlarge"} <= gpus


def test_no_secrets():
    text = (ROOT / "cluster.yaml").read_text()
    assert not re.search(r"AKIA[0-9A-Z]{16}|aws_secret_access_key|ssh_private_key", text)
    assert "ray stop" not in text  # ends every Ray on a machine; nodes here are fresh
