"""Threads that do not thrash on a shared machine (issue 12, item 3): ONNX Runtime sessions sleep instead of
spin-waiting unless BIOSERC_ORT_SPIN=1, and the CLI asks OpenMP (torch) for passive waiting before torch loads."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


ort = pytest.importorskip("onnxruntime")
SPIN = "session.intra_op.allow_spinning"


@pytest.fixture(scope="module")
def identity_graph(tmp_path_factory) -> str:
    from onnx import TensorProto, helper, save

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity", [x], [y])
    path = str(tmp_path_factory.mktemp("onnx") / "identity.onnx")
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_sessions_do_not_spin_by_default(identity_graph, monkeypatch):
    from bioserc.runtime import make_session

    monkeypatch.delenv("BIOSERC_ORT_SPIN", raising=False)
    options = make_session(identity_graph, threads=2).get_session_options()
    assert options.get_session_config_entry(SPIN) == "0" and options.intra_op_num_threads == 2


def test_bioserc_ort_spin_restores_ort_spinning(identity_graph, monkeypatch):
    from bioserc.runtime import make_session

    monkeypatch.setenv("BIOSERC_ORT_SPIN", "1")
    options = make_session(identity_graph, threads=1).get_session_options()
    with pytest.raises(RuntimeError, match="does not have configuration with key"):  # ORT's own default: spin
        options.get_session_config_entry(SPIN)


@pytest.mark.parametrize("given, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_cli_sets_passive_openmp_waiting_before_torch_loads(given, expected):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given:
        env["OMP_WAIT_POLICY"] = given
    code = "import os, sys, bioserc.cli; print(os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.stdout.split() == [expected, "False"], done.stderr
