"""Embedded stack: process management, the real Tansu broker, the real tritonserver."""

from __future__ import annotations

import os
import signal
import socket
import sys
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from support import eventually
from tritonclient.grpc import model_config_pb2 as mc

from pipeline.embedded.broker import TansuBroker
from pipeline.embedded.process import (
    ManagedProcess,
    ServiceStartError,
    ensure_port_free,
    free_port,
    port_is_free,
)
from pipeline.embedded.stack import EmbeddedStack
from pipeline.embedded.triton import (
    DERIVED_MARKER,
    ONNX_MODEL_PY,
    ModelNotTrainedError,
    TritonServer,
    build_derived_repository,
)
from pipeline.settings import Settings

# --------------------------------------------------------------------------- helpers


def python_proc(tmp_path: Path, name: str, code: str) -> ManagedProcess:
    return ManagedProcess(
        name, [sys.executable, "-c", textwrap.dedent(code)], dict(os.environ), tmp_path / f"{name}.log"
    )


def can_connect(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def pid_gone(pid: int, within_s: float = 5.0) -> bool:
    """Exited: no such process, or a zombie waiting for PID 1 to reap it."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return True
        if stat[stat.rfind(")") + 2] == "Z":
            return True
        time.sleep(0.02)
    return False


def wait_for_file(path: Path, within_s: float = 10.0) -> str:
    """The file's text once a child has written it."""
    return eventually(lambda: path.exists() and path.read_text().strip(), within_s, f"{path} written", poll_s=0.02)


def write_sum_model(repo: Path, name: str = "tiny_sum", extra_config: str = "") -> Path:
    """ONNX model INPUT [N,3] float -> SCORE [N,1] = row sums, with an onnxruntime config."""
    import onnx
    from onnx import TensorProto, helper

    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["INPUT", "axes"], ["SCORE"], keepdims=1)],
        "row_sum",
        [helper.make_tensor_value_info("INPUT", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("SCORE", TensorProto.FLOAT, ["N", 1])],
        initializer=[axes],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    (repo / name / "1").mkdir(parents=True)
    onnx.save(model, str(repo / name / "1" / "model.onnx"))
    (repo / name / "config.pbtxt").write_text(
        textwrap.dedent(
            f"""\
            # the tiny test model
            name: "{name}"
            platform: "onnxruntime_onnx"
            max_batch_size: 64
            input [ {{ name: "INPUT" data_type: TYPE_FP32 dims: [ 3 ] }} ]
            output [ {{ name: "SCORE" data_type: TYPE_FP32 dims: [ 1 ] }} ]
            instance_group [ {{ kind: KIND_GPU count: 1 gpus: [ 0 ] }} ]
            dynamic_batching {{ max_queue_delay_microseconds: 20000 }}
            parameters {{ key: "intra_op_thread_count" value {{ string_value: "1" }} }}
            """
        )
        + extra_config
    )
    return repo / name


def write_ensemble(repo: Path, name: str = "tiny_pipeline", step: str = "tiny_sum") -> None:
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(
        textwrap.dedent(
            f"""\
            name: "{name}"
            platform: "ensemble"
            max_batch_size: 64
            input [ {{ name: "X" data_type: TYPE_FP32 dims: [ 3 ] }} ]
            output [ {{ name: "Y" data_type: TYPE_FP32 dims: [ 1 ] }} ]
            ensemble_scheduling {{ step [ {{ model_name: "{step}" model_version: -1
              input_map {{ key: "INPUT" value: "X" }} output_map {{ key: "SCORE" value: "Y" }} }} ] }}
            """
        )
    )


def settings_for(base: Settings, state_dir: Path, repo: Path) -> Settings:
    return base.model_copy(
        update={
            "state_dir": state_dir,
            "kafka": base.kafka.model_copy(update={"bootstrap_servers": None, "embedded_port": free_port()}),
            "triton": base.triton.model_copy(
                update={
                    "url": None,
                    "model_repository": repo,
                    "embedded_http_port": free_port(),
                    "embedded_grpc_port": free_port(),
                    "embedded_metrics_port": free_port(),
                    "startup_timeout_s": 90.0,
                }
            ),
        }
    )


# --------------------------------------------------------------------------- process manager


def test_process_ready_then_stopped(tmp_path: Path) -> None:
    port = free_port()
    proc = python_proc(
        tmp_path,
        "listener",
        f"""
        import socket, time
        time.sleep(0.3)  # a server that takes a moment to bind
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", {port})); s.listen()
        print("listening", flush=True)
        while True:
            time.sleep(1)
        """,
    )
    proc.start()
    assert proc.alive and proc.pid
    elapsed = proc.wait_ready(lambda: can_connect(port), timeout_s=20)
    assert 0.25 < elapsed < 20
    pid = proc.pid
    proc.stop(timeout_s=5)
    assert not proc.alive and pid_gone(pid)
    assert port_is_free(port)
    assert "listening" in proc.log_path.read_text()


def test_process_exit_fails_fast_with_log_tail(tmp_path: Path) -> None:
    proc = python_proc(
        tmp_path, "crasher", "import sys; print('config error: no such model', flush=True); sys.exit(3)"
    )
    proc.start()
    started = time.monotonic()
    with pytest.raises(ServiceStartError) as err:
        proc.wait_ready(lambda: False, timeout_s=60)
    assert time.monotonic() - started < 10
    text = str(err.value)
    assert err.value.service == "crasher" and err.value.log_path == proc.log_path
    assert "exited with code 3" in text and "config error: no such model" in text
    assert str(proc.log_path) in text


def test_process_not_ready_before_deadline(tmp_path: Path) -> None:
    proc = python_proc(tmp_path, "sleeper", "import time; time.sleep(60)")
    proc.start()
    try:
        def probe() -> bool:
            raise ConnectionRefusedError("nothing listens")

        with pytest.raises(ServiceStartError, match=r"not ready after 1 s .*nothing listens"):
            proc.wait_ready(probe, timeout_s=0.6)
    finally:
        proc.stop(timeout_s=5)


def test_port_in_use_is_a_clear_error(tmp_path: Path, embedded_settings: Settings) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert not port_is_free(port)
        with pytest.raises(ServiceStartError, match=rf"port 127.0.0.1:{port} is already in use"):
            ensure_port_free(port, "demo service", setting="LINESIGHT_DEMO__PORT")
        broker = TansuBroker(embedded_settings, port=port, log_path=tmp_path / "tansu.log")
        with pytest.raises(ServiceStartError) as err:
            broker.start()
        assert "Kafka broker" in str(err.value) and str(port) in str(err.value)
        assert "LINESIGHT_KAFKA__EMBEDDED_PORT" in str(err.value)
        assert broker.process is None  # nothing was started


def test_stop_kills_the_whole_process_group(tmp_path: Path) -> None:
    # The leader exits on SIGTERM, its child ignores SIGTERM: the child must not survive.
    child_pid_file = tmp_path / "child.pid"
    proc = python_proc(
        tmp_path,
        "family",
        f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c",
            "import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "open({str(child_pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(600)"])
        time.sleep(600)
        """,
    )
    proc.start()
    child_pid = int(wait_for_file(child_pid_file))
    leader = proc.pid
    assert leader is not None
    assert os.getpgid(child_pid) == leader  # same group as the leader
    proc.stop(timeout_s=5)
    assert pid_gone(leader) and pid_gone(child_pid)


def test_stop_escalates_to_sigkill(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    proc = python_proc(
        tmp_path,
        "stubborn",
        f"""
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        open({str(ready)!r}, "w").write("1")
        time.sleep(600)
        """,
    )
    proc.start()
    wait_for_file(ready)
    started = time.monotonic()
    rc = proc.stop(timeout_s=0.5)
    assert rc == -signal.SIGKILL
    assert time.monotonic() - started < 5


# --------------------------------------------------------------------------- broker


def test_broker_started_and_stopped(tmp_path: Path, embedded_settings: Settings) -> None:
    broker = TansuBroker(embedded_settings, port=free_port(), log_path=tmp_path / "tansu.log")
    broker.start()
    try:
        assert broker.startup_s is not None and broker.startup_s < 10
        assert not port_is_free(broker.port)
        assert "listening on: tcp://127.0.0.1" in broker.log_path.read_text()
    finally:
        broker.stop()
    assert broker.process is not None and not broker.process.alive
    assert port_is_free(broker.port)


# --------------------------------------------------------------------------- triton: derived repo


def _parse(path: Path) -> mc.ModelConfig:
    return text_format.Parse(path.read_text(), mc.ModelConfig())


def test_derived_repository(tmp_path: Path) -> None:
    src = tmp_path / "models"
    write_sum_model(src)
    (src / "tiny_sum" / "labels.txt").write_text("score\n")
    write_ensemble(src)
    (src / "pre" / "1").mkdir(parents=True)
    (src / "pre" / "config.pbtxt").write_text('name: "pre" backend: "python" max_batch_size: 8\n')
    (src / "pre" / "1" / "model.py").write_text("class TritonPythonModel: pass\n")
    # A native-backend spelling with its own artifact name.
    write_sum_model(src, "named_file")
    cfg = (src / "named_file" / "config.pbtxt").read_text()
    cfg = cfg.replace('platform: "onnxruntime_onnx"', 'backend: "onnxruntime"\ndefault_model_filename: "net.onnx"')
    (src / "named_file" / "config.pbtxt").write_text(cfg)
    (src / "named_file" / "1" / "model.onnx").rename(src / "named_file" / "1" / "net.onnx")

    out = tmp_path / "state" / "triton_repo"
    repo = build_derived_repository(src, out)
    assert repo.models == ["named_file", "pre", "tiny_pipeline", "tiny_sum"]
    assert repo.converted == ["named_file", "tiny_sum"]
    assert (out / DERIVED_MARKER).is_file()

    # Other models are linked unchanged.
    for name in ("pre", "tiny_pipeline"):
        assert (out / name).is_symlink() and (out / name).resolve() == (src / name).resolve()

    original, derived = _parse(src / "tiny_sum" / "config.pbtxt"), _parse(out / "tiny_sum" / "config.pbtxt")
    assert derived.backend == "python" and derived.platform == ""
    assert [g.kind for g in derived.instance_group] == [mc.ModelInstanceGroup.KIND_CPU]
    assert not derived.instance_group[0].gpus
    assert derived.input == original.input and derived.output == original.output
    assert derived.max_batch_size == original.max_batch_size == 64
    assert derived.dynamic_batching == original.dynamic_batching
    assert derived.parameters["intra_op_thread_count"].string_value == "1"
    version = out / "tiny_sum" / "1"
    assert (version / "model.onnx").resolve() == (src / "tiny_sum" / "1" / "model.onnx").resolve()
    assert (version / "model.py").resolve() == ONNX_MODEL_PY.resolve()
    assert (out / "tiny_sum" / "labels.txt").is_symlink()

    named = _parse(out / "named_file" / "config.pbtxt")
    assert named.backend == "python" and named.default_model_filename == ""
    assert named.parameters["onnx_model_filename"].string_value == "net.onnx"
    assert (out / "named_file" / "1" / "net.onnx").is_symlink()

    # Rebuilding replaces the derived tree; a foreign directory is never deleted.
    assert build_derived_repository(src, out).models == repo.models
    foreign = tmp_path / "precious"
    foreign.mkdir()
    with pytest.raises(ServiceStartError, match="not a derived repository"):
        build_derived_repository(src, foreign)


def test_missing_artifact_says_train_the_model(tmp_path: Path) -> None:
    src = tmp_path / "models"
    write_sum_model(src)
    (src / "tiny_sum" / "1" / "model.onnx").unlink()
    with pytest.raises(ModelNotTrainedError, match=r"model not trained: run `make model`.*tiny_sum"):
        build_derived_repository(src, tmp_path / "derived")


def test_a_classifier_with_no_live_version_is_not_served_nor_its_ensembles(tmp_path: Path) -> None:
    """Every trained version failed its release gate (`version_policy { specific { } }`): the stack
    starts without that classifier and the ensembles using it (their units are fail-safe
    rejected by the worker), instead of refusing to start."""
    src = tmp_path / "models"
    write_sum_model(src)
    write_ensemble(src)
    cfg = src / "tiny_sum" / "config.pbtxt"
    config = _parse(cfg)
    config.version_policy.Clear()
    config.version_policy.specific.SetInParent()
    cfg.write_text(text_format.MessageToString(config))
    repo = build_derived_repository(src, tmp_path / "derived")
    assert repo.models == [] and set(repo.skipped) == {"tiny_sum", "tiny_pipeline"}
    assert "no live version" in repo.skipped["tiny_sum"] and "tiny_sum" in repo.skipped["tiny_pipeline"]


def test_derived_repository_follows_the_live_version(tmp_path: Path) -> None:
    """The derived config keeps version_policy (Triton loads the live version only); a deploy
    rebuilds one model's directory in place; a version being written is not required."""
    from contract_models import add_version, model_repository

    from pipeline.embedded.triton import rebuild_derived_model
    from pipeline.model import repository

    src = model_repository(tmp_path / "a", live=2)
    for version in (1, 2):
        add_version(src, "tablet_classifier", version, review=0.3, reject=0.7, bias=0.1 * version)
    (src / "tablet_classifier" / "3").mkdir()  # training in progress: no model.onnx yet
    out = tmp_path / "state" / "triton_repo"
    repo = build_derived_repository(src, out)
    assert "tablet_classifier" in repo.converted
    derived = _parse(out / "tablet_classifier" / "config.pbtxt")
    assert list(derived.version_policy.specific.versions) == [2] and derived.backend == "python"
    assert sorted(p.name for p in (out / "tablet_classifier").iterdir() if p.is_dir()) == ["1", "2"]
    assert derived.parameters["classes"].string_value.startswith('{"1":')

    config = repository.read_config(src, "tablet_classifier")
    repository.set_live_version(config, 1)
    repository.write_config(src, "tablet_classifier", config)
    assert rebuild_derived_model(src, out, "tablet_classifier")
    assert list(_parse(out / "tablet_classifier" / "config.pbtxt").version_policy.specific.versions) == [1]
    assert not any(p.name.startswith(".tablet_classifier") for p in out.iterdir())
    assert (out / "tablet_preprocess").is_symlink()  # the other models are untouched
    # A derived repository of another source is left alone.
    other = model_repository(tmp_path / "b")
    assert not rebuild_derived_model(other, out, "tablet_classifier")

    repository.set_live_version(config, 3)  # naming a version that has no artifact
    repository.write_config(src, "tablet_classifier", config)
    with pytest.raises(ModelNotTrainedError, match=r"tablet_classifier/3/model.onnx is missing"):
        build_derived_repository(src, out)


# --------------------------------------------------------------------------- triton: real server


@pytest.fixture(scope="module")
def tiny_triton(tmp_path_factory: pytest.TempPathFactory, embedded_settings: Settings) -> Iterator[TritonServer]:
    root = tmp_path_factory.mktemp("tiny-triton")
    write_sum_model(root / "models")
    write_ensemble(root / "models")
    unbatched = write_sum_model(root / "models", "tiny_sum_unbatched")
    cfg = unbatched / "config.pbtxt"
    cfg.write_text(
        cfg.read_text()
        .replace("max_batch_size: 64", "max_batch_size: 0")
        .replace("dims: [ 3 ]", "dims: [ -1, 3 ]")
        .replace("dims: [ 1 ]", "dims: [ -1, 1 ]")
        .replace("dynamic_batching { max_queue_delay_microseconds: 20000 }", "")
    )
    server = TritonServer(settings_for(embedded_settings, root / "state", root / "models"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _infer(client: object, model: str, x: np.ndarray, inp: str = "INPUT", out: str = "SCORE") -> np.ndarray:
    import tritonclient.grpc as grpcclient

    tensor = grpcclient.InferInput(inp, list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer(model, [tensor], outputs=[grpcclient.InferRequestedOutput(out)])  # type: ignore[attr-defined]
    return result.as_numpy(out)


def test_triton_serves_onnx_through_python_backend(tiny_triton: TritonServer) -> None:
    import tritonclient.grpc as grpcclient

    limit = 64 * 1024 * 1024
    client = grpcclient.InferenceServerClient(
        tiny_triton.grpc_url,
        channel_args=[("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)],
    )
    assert client.is_server_ready()
    assert tiny_triton.startup_s is not None
    loaded = tiny_triton.model_config("tiny_sum")
    assert loaded["backend"] == "python" and loaded["max_batch_size"] == 64

    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.testing.assert_allclose(_infer(client, "tiny_sum", x), x.sum(axis=1, keepdims=True))
    np.testing.assert_allclose(_infer(client, "tiny_pipeline", x, "X", "Y"), x.sum(axis=1, keepdims=True))

    # Concurrent requests: the dynamic batcher merges them into shared onnxruntime runs and
    # each caller must get its own rows back.
    rng = np.random.default_rng(0)
    inputs = [rng.normal(size=(int(rng.integers(1, 9)), 3)).astype(np.float32) for _ in range(24)]
    with ThreadPoolExecutor(8) as pool:
        outputs = list(pool.map(lambda a: _infer(client, "tiny_sum", a), inputs))
    for a, out in zip(inputs, outputs, strict=True):
        np.testing.assert_allclose(out, a.sum(axis=1, keepdims=True), rtol=1e-5)
    stats = client.get_inference_statistics("tiny_sum", as_json=True)["model_stats"][0]
    assert int(stats["inference_count"]) > int(stats["execution_count"])  # some requests were batched



def test_triton_request_beyond_grpc_default_size(tiny_triton: TritonServer) -> None:
    """6 MB in one request, past gRPC's 4 MB default: client limits raised, python backend shm grows."""
    import tritonclient.grpc as grpcclient

    limit = 64 * 1024 * 1024
    client = grpcclient.InferenceServerClient(
        tiny_triton.grpc_url,
        channel_args=[("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)],
    )
    x = np.random.default_rng(1).normal(size=(500_000, 3)).astype(np.float32)
    assert x.nbytes > 4 * 1024 * 1024
    np.testing.assert_allclose(
        _infer(client, "tiny_sum_unbatched", x), x.sum(axis=1, keepdims=True), rtol=1e-4, atol=1e-5
    )


def test_triton_bad_model_fails_fast_naming_it(tmp_path: Path, embedded_settings: Settings) -> None:
    src = tmp_path / "models"
    write_sum_model(src)
    cfg = src / "tiny_sum" / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace('name: "SCORE"', 'name: "SCORES"'))
    server = TritonServer(settings_for(embedded_settings, tmp_path / "state", src))
    started = time.monotonic()
    with pytest.raises(ServiceStartError) as err:
        server.start()
    assert time.monotonic() - started < 60
    text = str(err.value)
    assert "Triton Inference Server" in text and "tiny_sum" in text
    assert "'SCORES' not in the ONNX graph" in text and str(server.log_path) in text
    assert server.process is not None and not server.process.alive


# --------------------------------------------------------------------------- the stack


def test_stack_starts_both_and_stops_everything(tmp_path: Path, embedded_settings: Settings) -> None:
    from confluent_kafka.admin import AdminClient

    write_sum_model(tmp_path / "models")
    settings = settings_for(embedded_settings, tmp_path / "state", tmp_path / "models")
    lines: list[str] = []
    stack = EmbeddedStack(settings, announce=lines.append)
    with stack as resolved:
        assert resolved.kafka.bootstrap_servers == f"127.0.0.1:{settings.kafka.embedded_port}"
        assert resolved.triton.url == f"127.0.0.1:{settings.triton.embedded_grpc_port}"
        assert settings.kafka.bootstrap_servers is None  # the input is left untouched
        topics = AdminClient({"bootstrap.servers": resolved.kafka.bootstrap_servers}).list_topics(timeout=10).topics
        assert settings.kafka.topic_frames in topics and settings.kafka.topic_actuations in topics
        assert len(lines) == 2
        assert "kafka-tansu.log" in lines[0] and str(settings.log_dir) in lines[0]
        assert "tritonserver.log" in lines[1] and "tiny_sum" in lines[1]
        assert stack.broker is not None and stack.triton is not None
        procs = [stack.broker.process, stack.triton.process]
    assert all(p is not None and not p.alive for p in procs)
    for port in (settings.kafka.embedded_port, settings.triton.embedded_grpc_port, settings.triton.embedded_http_port):
        assert port_is_free(port)


def test_stack_stops_started_services_when_a_later_one_fails(tmp_path: Path, embedded_settings: Settings) -> None:
    src = tmp_path / "models"
    write_sum_model(src)
    (src / "tiny_sum" / "1" / "model.onnx").unlink()
    settings = settings_for(embedded_settings, tmp_path / "state", src)
    stack = EmbeddedStack(settings, announce=lambda _line: None)
    with pytest.raises(ModelNotTrainedError):
        stack.start()
    assert stack.broker is not None and stack.broker.process is not None
    assert not stack.broker.process.alive
    assert port_is_free(settings.kafka.embedded_port)


def test_stack_uses_external_addresses(broker: str, embedded_settings: Settings) -> None:
    external = embedded_settings.model_copy(
        update={
            "kafka": embedded_settings.kafka.model_copy(update={"bootstrap_servers": broker}),
            "triton": embedded_settings.triton.model_copy(update={"url": "triton.example:8001"}),
        }
    )
    lines: list[str] = []
    with EmbeddedStack(external, announce=lines.append) as resolved:
        assert resolved.kafka.bootstrap_servers == broker
        assert resolved.triton.url == "triton.example:8001"
    assert lines == [f"kafka: external {broker}", "triton: external triton.example:8001"]
