"""examples/finetune.py on one process and under torchrun with two (DDP on gloo)."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

import torch_mobilenets as tm

ROOT = Path(__file__).resolve().parents[1]
ARGS = [
    "--synthetic",
    "16",
    "--model",
    "mobilenet_v3_small",
    "--alpha",
    "0.75",
    "--size",
    "64",
    "--batch-size",
    "4",
    "--steps",
    "2",
    "--epochs",
    "2",
    "--classes",
    "3",
    "--freeze-up-to",
    "expanded_conv_5_add",
]


def run(command, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    result = subprocess.run(
        command + ARGS + ["--output", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def assert_trained_checkpoints(tmp_path):
    first, last = tmp_path / "epoch_1.safetensors", tmp_path / "epoch_2.safetensors"
    models = [
        tm.MobileNetV3Small(weights=p, alpha=0.75, classes=3, classifier_activation=None)
        for p in (first, last)
    ]
    changed = [
        k
        for k, v in models[0].state_dict().items()
        if not torch.equal(v, models[1].state_dict()[k])
    ]
    assert "logits.weight" in changed  # the fresh head trained
    assert not any(k.startswith("expanded_conv_4_") for k in changed)  # frozen, BN included


def test_single_process(tmp_path):
    run([sys.executable, "examples/finetune.py"], tmp_path)
    assert_trained_checkpoints(tmp_path)


def free_port() -> int:
    """A TCP port free now on 127.0.0.1 (the OS picks it on bind to port 0), for the rendezvous:
    a fixed port fails when another run, or anything else, holds it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_processes_with_torchrun(tmp_path):
    result = run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(free_port()),
            "examples/finetune.py",
        ],
        tmp_path,
    )
    assert_trained_checkpoints(tmp_path)
    assert "epoch 2" in result.stderr  # rank 0's progress bar
