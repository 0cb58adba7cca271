"""The int8-compute encoder: which CPUs get it, the graph rewrites it rests on, calibration in the manifest, the
per-machine cache, and the `--int8` switches of `bioserc label` / `bioserc evaluate`."""

from __future__ import annotations

import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_export import conversations, make_encoder, save_checkpoint

from bioserc.artifacts import verify_artifact, write_manifest
from bioserc.models import int8_graph
from bioserc.models.int8_graph import OUTLIERS, exact_int8_flags, integer_rows, split_outliers, use_int8
from bioserc.runtime import CPU, CUDA, make_session


pytestmark = pytest.mark.usefixtures("one_thread")

VNNI = bool(exact_int8_flags())
CALIBRATED = {"int8_compute": {"outlier_channels": {}}}


def test_exact_int8_flags_come_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_vnni sse4_2\n\nflags\t\t: amx_int8\n")
    assert exact_int8_flags(str(info)) == ["avx512_vnni"]  # the first CPU's line
    info.write_text("flags\t\t: fpu avx2 fma\n")
    assert exact_int8_flags(str(info)) == []
    assert exact_int8_flags(str(tmp_path / "absent")) == []


def test_int8_is_chosen_only_where_it_is_exact_and_on_insists():
    assert use_int8("auto", CALIBRATED, [CPU], ["avx512_vnni"])
    assert not use_int8("auto", CALIBRATED, [CPU], [])  # AVX2 only: the shipped graph
    assert not use_int8("auto", {}, [CPU], ["avx_vnni"])  # not calibrated
    assert not use_int8("auto", CALIBRATED, [CUDA, CPU], ["avx512_vnni"])
    assert not use_int8("off", CALIBRATED, [CPU], ["avx512_vnni"])
    assert use_int8("on", CALIBRATED, [CPU], ["amx_int8"])
    with pytest.raises(ValueError, match="no exact int8 dot product"):
        use_int8("on", CALIBRATED, [CPU], [])
    with pytest.raises(ValueError, match="bioserc export int8"):
        use_int8("on", {}, [CPU], ["avx512_vnni"])
    with pytest.raises(ValueError, match="CPU-only"):
        use_int8("on", CALIBRATED, [CUDA, CPU], ["avx512_vnni"])
    with pytest.raises(ValueError, match="int8 must be one of"):
        use_int8("yes", CALIBRATED, [CPU], ["avx512_vnni"])


def two_matmul_graph(rng: np.random.Generator) -> onnx.ModelProto:
    """x (N, 8) -> x W1 (shared input feeds W1 and W2) -> sum, in fp32: the shape of Q/K/V sharing an input."""
    w1, w2 = rng.normal(size=(8, 6)).astype(np.float32), rng.normal(size=(8, 6)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["y1"], name="q/MatMul"),
        helper.make_node("MatMul", ["x", "w2"], ["y2"], name="k/MatMul"),
        helper.make_node("Add", ["y1", "y2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 6])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def run(model: onnx.ModelProto, x: np.ndarray, tmp_path: Path, name: str) -> np.ndarray:
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, str(path))
    return make_session(str(path), None, 1).run(None, {"x": x})[0]


def test_the_outlier_split_is_exact_and_the_int8_rows_close_and_batch_independent(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 8)).astype(np.float32) + 0.5
    x[:, 3] *= 40  # an outlier channel
    reference = run(two_matmul_graph(np.random.default_rng(1)), x, tmp_path, "fp32")
    split = two_matmul_graph(np.random.default_rng(1))
    split_outliers(split, {"x": [3, 6]})
    ops = [n.op_type for n in split.graph.node]
    assert ops.count("MatMul") == 4 and ops.count("Gather") == 1  # x is split once for both MatMuls
    np.testing.assert_allclose(run(split, x, tmp_path, "split"), reference, rtol=1e-5, atol=1e-5)
    integer_rows(split, (OUTLIERS,))
    ops = [n.op_type for n in split.graph.node]
    assert ops.count("MatMulIntegerToFloat") == 2 and ops.count("QuantizeLinear") == 1 and ops.count("MatMul") == 2
    int8 = run(split, x, tmp_path, "int8")
    if VNNI:  # elsewhere ORT's kernel sums u8 x s8 pairs in int16, which 8-bit weights overflow
        assert np.abs(int8 - reference).max() < 0.02 * np.abs(reference).max()
    alone = np.concatenate([run(split, x[i : i + 1], tmp_path, "one") for i in range(len(x))])
    np.testing.assert_array_equal(alone, int8)  # a row's result does not depend on the other rows
    with pytest.raises(ValueError, match="no outlier channels for MatMul input 'x'"):
        split_outliers(two_matmul_graph(rng), {"other": [0]})


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory) -> dict:
    """A tiny 4-bit export, calibrated on conversations written as JSONL, checked where the CPU allows."""
    from bioserc.export.int8_calibration import calibrate_int8
    from bioserc.export.onnx_classifier import export_classifier

    root = tmp_path_factory.mktemp("int8")
    encoder = make_encoder(root / "encoder")
    source = save_checkpoint(encoder, root / "torch", "none")
    artifact = str(root / "onnx")
    export_classifier(source, artifact, quantize="weights", bits=4)
    data = root / "calls.jsonl"
    convs = [c for seed in range(4) for c in conversations(seed)]
    data.write_text("".join(c.to_json() + "\n" for c in convs))
    manifest = calibrate_int8(artifact, str(data), every=1, check=str(data) if VNNI else None)
    return {"artifact": artifact, "data": str(data), "manifest": manifest, "convs": convs, "source": source}


def test_calibration_goes_into_the_manifest_and_keeps_it_verified(calibrated):
    section = calibrated["manifest"]["int8_compute"]
    assert section["calibration"] == {"data": "calls.jsonl", "conversations": 12, "every": 1}
    channels = section["outlier_channels"]
    assert channels and all(len(c) == 1 for c in channels.values())  # 1% of 32 or 64 channels: at least one
    assert verify_artifact(calibrated["artifact"], "onnx-classifier")["int8_compute"] == section
    if VNNI:
        assert section["check"]["utterances"] == 12 * 4 and section["check"]["labels_equal_shipped"] >= 0.8


def test_check_needs_a_cpu_that_runs_int8_exactly(calibrated, monkeypatch):
    from bioserc.export import int8_calibration

    monkeypatch.setattr(int8_calibration, "exact_int8_flags", lambda: [])
    with pytest.raises(ValueError, match="--check needs a CPU with exact int8"):
        int8_calibration.calibrate_int8(calibrated["artifact"], calibrated["data"], check=calibrated["data"])


def test_the_int8_graph_is_built_once_cached_and_rebuilt_when_altered(calibrated, tmp_path, monkeypatch, caplog):
    from bioserc.models import onnx_classifier
    from bioserc.models.onnx_classifier import OnnxClassifier

    monkeypatch.setenv("BIOSERC_CACHE", str(tmp_path))
    monkeypatch.setattr(onnx_classifier, "exact_int8_flags", lambda: ["avx512_vnni"])  # the choice, not the kernel
    shipped = OnnxClassifier(calibrated["artifact"], provider="cpu", int8="off")
    fast = OnnxClassifier(calibrated["artifact"], provider="cpu", int8="auto")
    assert not shipped.int8 and fast.int8
    (folder,) = [p for p in (tmp_path / "int8").iterdir() if p.is_dir()]  # beside it: the build's lock file
    graph = folder / "encoder.onnx"
    ops = {n.op_type for n in onnx.load(str(graph)).graph.node}
    assert "MatMulIntegerToFloat" in ops and "DequantizeLinear" not in ops
    convs = calibrated["convs"]
    a, b = shipped.predict(convs), fast.predict(convs)
    diff = np.abs(np.array([p.probs for p in a]) - np.array([p.probs for p in b])).max()
    assert diff < (0.05 if VNNI else 0.5)  # AVX2's int16 sums may saturate: only VNNI promises closeness
    built = graph.stat().st_mtime_ns

    def no_build(*args):
        raise AssertionError("built again")

    monkeypatch.setattr(int8_graph, "build_int8_encoder", no_build)
    OnnxClassifier(calibrated["artifact"], provider="cpu")  # cached: not built again
    assert graph.stat().st_mtime_ns == built
    monkeypatch.undo()
    monkeypatch.setenv("BIOSERC_CACHE", str(tmp_path))
    monkeypatch.setattr(onnx_classifier, "exact_int8_flags", lambda: ["avx512_vnni"])
    graph.write_bytes(graph.read_bytes()[:-8] + b"tampered")
    with caplog.at_level("WARNING"):
        again = OnnxClassifier(calibrated["artifact"], provider="cpu")
    assert "does not match its checksum" in caplog.text and again.int8
    assert (folder / "encoder.onnx.sha256").read_text() == int8_graph.sha256_file(str(graph))


def test_label_and_evaluate_take_int8_switches(calibrated, tmp_path, monkeypatch, capsys):
    from bioserc.cli import main

    monkeypatch.setenv("BIOSERC_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "labels"
    argv = ["label", calibrated["data"], "-o", str(out), "--model", calibrated["artifact"], "--no-bios"]
    assert main([*argv, "--int8", "off"]) == 0
    assert json.loads((out / "run.json").read_text())["int8"] == "off"
    assert not (tmp_path / "cache" / "int8").exists()
    plain = tmp_path / "plain"  # the same model without its calibration
    shutil.copytree(calibrated["artifact"], plain)
    fields = verify_artifact(str(plain), "onnx-classifier")
    written = ("manifest_version", "kind", "created", "files", "int8_compute")
    write_manifest(str(plain), "onnx-classifier", **{k: v for k, v in fields.items() if k not in written})
    uncalibrated = ["label", calibrated["data"], "-o", str(tmp_path / "x"), "--model", str(plain), "--int8", "on"]
    assert main(uncalibrated) == 2
    assert "has no int8 calibration" in capsys.readouterr().err
    code = main(
        ["evaluate", "--model", calibrated["artifact"], "--data", calibrated["data"], "--int8", "off", "--json"]
    )
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["int8_compute"] is False and report["n"] == 48
    from bioserc.models import onnx_classifier

    monkeypatch.setattr(onnx_classifier, "exact_int8_flags", lambda: [])
    assert main(["evaluate", "--model", calibrated["artifact"], "--data", calibrated["data"], "--int8", "on"]) == 2
    assert "no exact int8 dot product" in capsys.readouterr().err
    monkeypatch.setattr(onnx_classifier, "exact_int8_flags", lambda: ["avx512_vnni"])
    assert (
        main(["evaluate", "--model", calibrated["artifact"], "--data", calibrated["data"], "--int8", "on", "--json"])
        == 0
    )
    assert json.loads(capsys.readouterr().out)["int8_compute"] is True


def test_concurrent_workers_build_the_graph_once_and_clear_interrupted_builds(calibrated, tmp_path, monkeypatch):
    manifest = verify_artifact(calibrated["artifact"], "onnx-classifier")
    source = str(Path(calibrated["artifact"]) / "encoder.onnx")
    builds = []
    real = int8_graph.build_int8_encoder

    def counted(*args):
        builds.append(1)
        time.sleep(0.3)  # long enough for the other worker to reach the lock
        real(*args)

    monkeypatch.setattr(int8_graph, "build_int8_encoder", counted)
    stale = tmp_path / (int8_graph.cache_key(manifest) + ".killed")  # a build interrupted earlier
    stale.mkdir()
    with ThreadPoolExecutor(2) as pool:
        paths = list(pool.map(lambda _: int8_graph.int8_encoder(source, manifest, str(tmp_path)), range(2)))
    assert len(builds) == 1 and paths[0] == paths[1] and Path(paths[0]).is_file() and not stale.exists()


def test_models_list_says_whether_this_cpu_uses_int8(monkeypatch):
    monkeypatch.setattr(int8_graph, "exact_int8_flags", lambda: ["amx_int8"])
    checked = {"int8_compute": {"check": {"labels_equal_shipped": 0.991}}}
    assert int8_graph.int8_summary(checked) == "99.10% of labels; used here (amx_int8)"
    assert int8_graph.int8_summary({}) == "not calibrated"
    monkeypatch.setattr(int8_graph, "exact_int8_flags", lambda: [])
    assert int8_graph.int8_summary(CALIBRATED) == "unchecked; not used here (no VNNI/AMX)"


def test_export_onnx_can_calibrate_in_the_same_command(calibrated, tmp_path, capsys):
    from bioserc.cli import main

    out = tmp_path / "onnx"
    argv = ["export", "onnx", "--model", calibrated["source"], "-o", str(out), "--quantize", "--bits", "4"]
    assert main([*argv, "--int8-check", calibrated["data"]]) == 1  # export errors exit 1
    assert "--int8-check needs --int8-calibration" in capsys.readouterr().err
    assert main([*argv, "--int8-calibration", calibrated["data"]]) == 0
    section = verify_artifact(str(out), "onnx-classifier")["int8_compute"]
    assert section["calibration"]["data"] == "calls.jsonl" and "check" not in section
