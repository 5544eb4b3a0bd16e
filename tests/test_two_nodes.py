"""A real two-"node" DDP job on this machine: Lightning's ``num_nodes=2`` with one process per node, started as a
cluster launcher starts them (NODE_RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT, WORLD_SIZE set; gloo), trains and
validates exactly as the same job on one node with two processes, and as one process with the same global batch up
to the training noise (each rank draws its own)."""

import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO

WORKER = Path(__file__).with_name("two_node_worker.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT")}
    env.update(PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO / "tests"), env.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    return env


def run_job(mode: str, out: Path) -> dict:
    if mode == "nodes":
        port = free_port()
        procs, logs = [], [out / f"node{node}.log" for node in range(2)]
        for node in range(2):
            env = {**base_env(), "NODE_RANK": str(node), "LOCAL_RANK": "0", "WORLD_SIZE": "2",
                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
            with logs[node].open("w") as log:  # a file, not a pipe: a rank blocked on a full pipe would hang the job
                procs.append(subprocess.Popen([sys.executable, str(WORKER), mode, str(out)], env=env, cwd=REPO,
                                              stdout=log, stderr=subprocess.STDOUT))
        codes = [p.wait(timeout=900) for p in procs]
        assert codes == [0, 0], "\n".join(log.read_text()[-3000:] for log in logs)
    else:
        result = subprocess.run([sys.executable, str(WORKER), mode, str(out)], env=base_env(), cwd=REPO,
                                capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return torch.load(out / f"{mode}.pt", weights_only=True)


@pytest.mark.slow
def test_two_nodes_train_and_validate_as_one_node_and_as_one_process(tmp_path):
    nodes, local, single = (run_job(mode, tmp_path) for mode in ("nodes", "local", "single"))
    assert (nodes["num_nodes"], nodes["world_size"]) == (2, 2) and (local["num_nodes"], local["world_size"]) == (1, 2)
    # the same ranks, data shards and noise streams: identical up to the order of the gradient all-reduce
    for key, value in nodes["state_dict"].items():
        torch.testing.assert_close(value, local["state_dict"][key], rtol=1e-5, atol=1e-6, msg=key)
    assert nodes["bpd"] == pytest.approx(local["bpd"], rel=1e-5)
    # one process, global batch 2 x 16: the same examples per step, other training noise: within the standard error
    se = math.hypot(nodes["bpd_se"], single["bpd_se"])
    assert abs(nodes["bpd"] - single["bpd"]) < 3 * se
    moved = [(nodes["state_dict"][k] - single["state_dict"][k]).abs().max() for k in single["state_dict"]]
    assert max(moved) < 0.05  # 4 AdamW steps at lr 1e-3 move a weight by about 4e-3 at most in either run
