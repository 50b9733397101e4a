"""The embedded Triton Inference Server: the real ``tritonserver`` shipped in nvidia-pytriton.

Used when no ``triton.url`` is configured. That build runs on CPU and has the python backend but
no onnxruntime backend, so the server is given a *derived* model repository (under
``state_dir/triton_repo``, rebuilt at every start) made from the committed one:

* a model whose config declares ``platform: "onnxruntime_onnx"`` or ``backend: "onnxruntime"``
  gets the same config with ``backend: "python"`` and ``KIND_GPU`` instances turned into
  ``KIND_CPU``; its version directories link the original files (the one ``model.onnx``) plus
  ``model.py`` -> `pipeline/serving/onnx_model.py`, which runs the ONNX file with onnxruntime;
* every other model directory (python models, ensembles) is linked unchanged.

GPU hosts run the NGC image against the committed repository directly: one artifact, one
config. The python backend's directory is assembled under ``state_dir`` too (the stub for this
interpreter is copied there) so the installed wheel is never modified.
"""

from __future__ import annotations

import filecmp
import importlib.util
import json
import logging
import os
import re
import secrets
import shutil
import sys
import sysconfig
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from pipeline.embedded.process import ManagedProcess, ServiceStartError, ensure_port_free
from pipeline.settings import Settings
from pipeline.settings.secrets import read_secret

log = logging.getLogger(__name__)

SERVICE = "Triton Inference Server"
HOST = "127.0.0.1"
ONNX_MODEL_PY = Path(__file__).resolve().parent.parent / "serving" / "onnx_model.py"
DERIVED_MARKER = ".linesight-derived-repository"
DEFAULT_ONNX_FILENAME = "model.onnx"
EXIT_TIMEOUT_S = 5
ONNX_PLATFORM = "onnxruntime_onnx"
ONNX_BACKEND = "onnxruntime"


class ModelNotTrainedError(ServiceStartError):
    """The repository names an ONNX model whose artifact is not there yet."""


@dataclass
class DerivedRepository:
    path: Path
    models: list[str] = field(default_factory=list)
    converted: list[str] = field(default_factory=list)  # onnxruntime models served by python
    # model -> why it is not served: a classifier with no live version (its trained versions all
    # failed the release gate) and the ensembles that use it; their units are fail-safe rejected.
    skipped: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------- derived repository


def _is_onnxruntime(config: mc.ModelConfig) -> bool:
    return config.platform == ONNX_PLATFORM or config.backend == ONNX_BACKEND


def derive_python_config(config: mc.ModelConfig) -> mc.ModelConfig:
    """The python-backend twin of an onnxruntime config: same tensors, batching and parameters."""
    derived = mc.ModelConfig()
    derived.CopyFrom(config)
    derived.platform = ""
    derived.backend = "python"
    for group in derived.instance_group:
        if group.kind == mc.ModelInstanceGroup.KIND_GPU:
            group.kind = mc.ModelInstanceGroup.KIND_CPU
            del group.gpus[:]
    # GPU accelerators (TensorRT, CUDA graphs) belong to the native backend only.
    derived.optimization.ClearField("execution_accelerators")
    derived.optimization.ClearField("cuda")
    if not derived.HasField("optimization") or derived.optimization.ByteSize() == 0:
        derived.ClearField("optimization")
    if derived.default_model_filename:
        # The python backend reads default_model_filename as its .py file.
        derived.parameters["onnx_model_filename"].string_value = derived.default_model_filename
        derived.default_model_filename = ""
    return derived


def _read_config(config_path: Path) -> mc.ModelConfig:
    try:
        return text_format.Parse(config_path.read_text(), mc.ModelConfig())
    except (text_format.ParseError, OSError) as exc:
        raise ServiceStartError(SERVICE, f"invalid model config {config_path}: {exc}") from exc


def _version_dirs(model_dir: Path) -> list[Path]:
    return sorted((p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))


def build_derived_repository(
    source: Path, target: Path, onnx_model_py: Path = ONNX_MODEL_PY
) -> DerivedRepository:
    """(Re)build ``target`` from the committed repository ``source``; see the module docstring."""
    source = source.resolve()
    if not source.is_dir():
        raise ServiceStartError(SERVICE, f"model repository {source} does not exist")
    if target.exists():
        if not (target / DERIVED_MARKER).exists():
            raise ServiceStartError(
                SERVICE, f"{target} exists and is not a derived repository; refusing to replace it"
            )
        shutil.rmtree(target)
    target.mkdir(parents=True)
    (target / DERIVED_MARKER).write_text(f"derived from {source}; rebuilt at every start\n")
    repo = DerivedRepository(path=target)
    dirs = sorted(p for p in source.iterdir() if p.is_dir() and not p.name.startswith("."))
    configs = {d.name: _read_config(d / "config.pbtxt") if (d / "config.pbtxt").is_file() else None for d in dirs}
    repo.skipped = _not_live(dirs, configs)
    for name, why in repo.skipped.items():
        log.warning("%s: not served: %s", name, why)
    for model_dir in dirs:
        name = model_dir.name
        config = configs[name]
        if name in repo.skipped:
            continue
        repo.models.append(name)
        if config is None or not _is_onnxruntime(config):
            (target / name).symlink_to(model_dir, target_is_directory=True)
            continue
        _derive_onnx_model(model_dir, config, target / name, onnx_model_py)
        repo.converted.append(name)
    return repo


def _not_live(dirs: list[Path], configs: dict[str, mc.ModelConfig | None]) -> dict[str, str]:
    """Classifiers that were trained but name no live version (every version failed its release
    gate: docs/models.md; the rule of `pipeline.model.repository.names_no_version`, a layer up),
    and the ensembles with a step on one of them."""
    skipped: dict[str, str] = {}
    for d in dirs:
        config = configs[d.name]
        if (config is not None and _is_onnxruntime(config) and _version_dirs(d)
                and config.version_policy.WhichOneof("policy_choice") == "specific"
                and not config.version_policy.specific.versions):
            skipped[d.name] = "no live version (no trained version passed its release gate; see `linesight models list`)"
    for d in dirs:
        config = configs[d.name]
        if config is None or config.platform != "ensemble":
            continue
        steps = {step.model_name for step in config.ensemble_scheduling.step}
        if blocked := sorted(steps & set(skipped)):
            skipped[d.name] = f"uses {', '.join(blocked)}, which has no live version"
    return skipped


def _policy_versions(config: mc.ModelConfig, available: list[int]) -> list[int]:
    """The versions Triton will load under the config's version_policy (default: latest one)."""
    choice = config.version_policy.WhichOneof("policy_choice")
    if choice == "specific":
        return sorted(int(v) for v in config.version_policy.specific.versions)
    if choice == "all":
        return sorted(available)
    n = config.version_policy.latest.num_versions if choice == "latest" else 1
    return sorted(available)[-max(1, n):]


def _derive_onnx_model(model_dir: Path, config: mc.ModelConfig, out: Path, onnx_model_py: Path) -> None:
    filename = config.default_model_filename or DEFAULT_ONNX_FILENAME
    versions = _version_dirs(model_dir)
    complete = [v for v in versions if (v / filename).is_file()]
    wanted = _policy_versions(config, [int(v.name) for v in complete])
    missing = [model_dir / str(v) / filename for v in wanted if not (model_dir / str(v) / filename).is_file()]
    if not complete or not wanted or missing:
        where = ", ".join(str(m) for m in missing) or str(model_dir / (str(wanted[0]) if wanted else "1") / filename)
        raise ModelNotTrainedError(
            SERVICE, f"model not trained: run `make model` ({model_dir.name}: {where} is missing)"
        )
    out.mkdir()
    # The derived config keeps version_policy: Triton loads exactly the live version(s).
    derived = derive_python_config(config)
    (out / "config.pbtxt").write_text(
        f"# Derived from {model_dir / 'config.pbtxt'} for the CPU python backend. Do not edit.\n"
        + text_format.MessageToString(derived)
    )
    for extra in model_dir.iterdir():  # labels files and the like next to config.pbtxt
        if extra.is_file() and extra.name != "config.pbtxt" and not extra.name.startswith("."):
            (out / extra.name).symlink_to(extra.resolve())
    for version in complete:
        vout = out / version.name
        vout.mkdir()
        for item in version.iterdir():
            if item.name != "model.py":
                (vout / item.name).symlink_to(item.resolve(), target_is_directory=item.is_dir())
        (vout / "model.py").symlink_to(onnx_model_py.resolve())


def derived_from(target: Path) -> Path | None:
    """The source repository a derived repository was built from (None: not a derived one)."""
    marker = target / DERIVED_MARKER
    if not marker.is_file():
        return None
    text = marker.read_text().strip()
    if not text.startswith("derived from "):
        return None
    return Path(text.removeprefix("derived from ").split(";", 1)[0].strip())


def rebuild_derived_model(
    source: Path, target: Path, model: str, onnx_model_py: Path = ONNX_MODEL_PY
) -> bool:
    """Rebuild one model of the derived repository ``target`` from ``source`` (after a deploy
    changed its config), swapping the directory in one rename so a load never sees half of it.
    Returns False, touching nothing, when ``target`` is not a repository derived from ``source``."""
    source = source.resolve()
    built_from = derived_from(target)
    if built_from is None or built_from.resolve() != source:
        return False
    model_dir = source / model
    config_path = model_dir / "config.pbtxt"
    if not config_path.is_file():
        raise ServiceStartError(SERVICE, f"no model {model!r} in {source}")
    config = _read_config(config_path)
    staging = target / f".{model}.staging"
    old = target / f".{model}.old"
    for leftover in (staging, old):
        if leftover.is_symlink() or leftover.is_file():
            leftover.unlink()
        elif leftover.exists():
            shutil.rmtree(leftover)
    if _is_onnxruntime(config):
        _derive_onnx_model(model_dir, config, staging, onnx_model_py)
    else:
        staging.symlink_to(model_dir, target_is_directory=True)
    live = target / model
    if live.is_symlink() or live.exists():
        os.replace(live, old)
    os.replace(staging, live)
    if old.is_symlink():
        old.unlink()
    elif old.exists():
        shutil.rmtree(old)
    return True


# --------------------------------------------------------------------------- server environment


def _pytriton_root() -> Path:
    spec = importlib.util.find_spec("pytriton")  # locate without importing pytriton itself
    if spec is None or not spec.submodule_search_locations:
        raise ServiceStartError(SERVICE, "nvidia-pytriton is not installed (pip install nvidia-pytriton==0.7.0)")
    return Path(next(iter(spec.submodule_search_locations)))


def tritonserver_paths() -> tuple[Path, Path, Path, Path]:
    """(tritonserver binary, python backend dir, stub for this Python, bundled libs dir)."""
    root = _pytriton_root() / "tritonserver"
    binary = root / "bin" / "tritonserver"
    backend = root / "backends" / "python"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    libs = root.parent.parent / "nvidia_pytriton.libs"
    for path in (binary, backend / "libtriton_python.so", stub):
        if not path.exists():
            raise ServiceStartError(SERVICE, f"{path} is missing from nvidia-pytriton (Python {version})")
    return binary, backend, stub, libs


def prepare_backend_directory(target: Path) -> Path:
    """A backend directory with the python backend and the stub for this interpreter."""
    _, backend, stub, _ = tritonserver_paths()
    python_dir = target / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for item in backend.iterdir():
        if item.is_file():
            _copy_if_changed(item, python_dir / item.name)
    stub_copy = python_dir / "triton_python_backend_stub"
    _copy_if_changed(stub, stub_copy)
    stub_copy.chmod(0o755)
    return target


def _copy_if_changed(src: Path, dst: Path) -> None:
    if dst.exists() and filecmp.cmp(src, dst, shallow=False):
        return
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def triton_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment in which the backend stub embeds *this* interpreter and its site-packages."""
    env = dict(os.environ if base is None else base)
    _, _, _, libs = tritonserver_paths()
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    ld = [p for p in (libdir, str(libs), env.get("LD_LIBRARY_PATH", "")) if p]
    env["LD_LIBRARY_PATH"] = ":".join(ld)
    env["PATH"] = os.pathsep.join([str(Path(sys.prefix) / "bin"), env.get("PATH", "")])
    env.pop("PYTHONHOME", None)
    return env


# --------------------------------------------------------------------------- server


def model_control_key_path(settings: Settings) -> Path:
    """Where the embedded server keeps the key of its model control for this state directory."""
    return settings.state_dir / "triton_model_control.key"


def model_control_key(settings: Settings) -> str:
    """The key model control needs: the configured one, else the running embedded server's."""
    configured = settings.triton.resolved_model_control_key()
    if configured or settings.triton.url:
        return configured
    path = model_control_key_path(settings)
    return read_secret(None, path) if path.exists() else ""


def _new_model_control_key(path: Path) -> str:
    """A fresh key for one embedded run, readable only by this user (deploy reads it from here)."""
    key = secrets.token_hex(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(key + "\n")
    os.chmod(path, 0o600)
    return key

_FAILED_LOAD = re.compile(r"failed to load '([^']+)'")


def _worth_quoting(line: str) -> bool:
    """Drop Triton's ASCII tables and empty table headers from failure messages."""
    text = line.strip()
    return bool(text) and not text.startswith(("|", "+")) and not text.endswith("]")


def _failed_models(log_text: str) -> list[str]:
    return sorted(set(_FAILED_LOAD.findall(log_text)))



class TritonServer:
    """tritonserver on 127.0.0.1 serving the derived repository; one process group. Its model
    control answers only requests carrying `model_control_key` in the model control header."""

    def __init__(
        self,
        settings: Settings,
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        log_path: Path | None = None,
    ) -> None:
        t = settings.triton
        self.settings = settings
        self.http_port = http_port if http_port is not None else t.embedded_http_port
        self.grpc_port = grpc_port if grpc_port is not None else t.embedded_grpc_port
        self.metrics_port = metrics_port if metrics_port is not None else t.embedded_metrics_port
        self.log_path = log_path or settings.log_dir / "tritonserver.log"
        self.source_repository = Path(t.model_repository)
        self.derived_path = settings.state_dir / "triton_repo"
        self.backend_path = settings.state_dir / "triton_backends"
        self.repository: DerivedRepository | None = None
        self.startup_s: float | None = None
        self._process: ManagedProcess | None = None

    @property
    def grpc_url(self) -> str:
        return f"{HOST}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{HOST}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{HOST}:{self.metrics_port}/metrics"

    @property
    def process(self) -> ManagedProcess | None:
        return self._process

    @property
    def models(self) -> list[str]:
        return list(self.repository.models) if self.repository else []

    def start(self, timeout_s: float | None = None) -> None:
        for port, setting in (
            (self.http_port, "LINESIGHT_TRITON__EMBEDDED_HTTP_PORT"),
            (self.grpc_port, "LINESIGHT_TRITON__EMBEDDED_GRPC_PORT"),
            (self.metrics_port, "LINESIGHT_TRITON__EMBEDDED_METRICS_PORT"),
        ):
            ensure_port_free(port, SERVICE, HOST, setting, self.log_path)
        try:
            self.repository = build_derived_repository(self.source_repository, self.derived_path)
        except ServiceStartError as exc:
            exc.log_path = exc.log_path or self.log_path
            raise
        binary, _, _, _ = tritonserver_paths()
        backends = prepare_backend_directory(self.backend_path)
        t = self.settings.triton
        key = t.resolved_model_control_key() or _new_model_control_key(model_control_key_path(self.settings))
        # Load/unload and the repository index only for callers with the key (pipeline.model.deploy).
        restricted = f"model-repository:{t.model_control_header}={key}"
        argv = [
            str(binary),
            "--id", "linesight-embedded",
            "--model-repository", str(self.derived_path),
            "--backend-directory", str(backends),
            "--model-control-mode", "explicit",
            "--load-model", "*",
            "--strict-readiness", "true",
            "--exit-on-error", "true",
            "--exit-timeout-secs", str(EXIT_TIMEOUT_S),
            "--log-verbose", "0",
            "--http-address", HOST, "--http-port", str(self.http_port),
            "--grpc-address", HOST, "--grpc-port", str(self.grpc_port),
            "--http-restricted-api", restricted,
            "--grpc-restricted-protocol", restricted,
            "--metrics-address", HOST, "--metrics-port", str(self.metrics_port),
            "--allow-gpu-metrics", "false",
            "--pinned-memory-pool-byte-size", "0",
            # Unique shared-memory names: a test server and a dev stack may run side by side.
            "--backend-config", f"python,shm-region-prefix-name=linesight_{os.getpid()}_{self.grpc_port}_",
        ]
        self._process = ManagedProcess(
            SERVICE, argv, triton_environment(), self.log_path, log_filter=_worth_quoting
        )
        self._process.start()
        try:
            self.startup_s = self._process.wait_ready(
                self._probe, timeout_s if timeout_s is not None else self.settings.triton.startup_timeout_s
            )
        except ServiceStartError as exc:
            failed = _failed_models(self._process.log_tail(lines=2000))
            self.stop()
            if failed:
                raise ServiceStartError(
                    SERVICE, f"model(s) failed to load: {', '.join(failed)}; {exc.reason}", self.log_path
                ) from exc
            raise
        except BaseException:
            self.stop()
            raise
        log.debug("%s ready on %s in %.1f s", SERVICE, self.grpc_url, self.startup_s)

    def _get(self, path: str) -> int:
        try:
            with urllib.request.urlopen(f"{self.http_url}{path}", timeout=2.0) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    def _probe(self) -> bool:
        if self._get("/v2/health/ready") != 200:
            return False
        return all(self._get(f"/v2/models/{urllib.parse.quote(m)}/ready") == 200 for m in self.models)

    def model_config(self, model: str) -> dict[str, object]:
        """The config the server actually loaded (JSON), for diagnostics."""
        with urllib.request.urlopen(f"{self.http_url}/v2/models/{urllib.parse.quote(model)}/config", timeout=5) as r:
            return dict(json.loads(r.read()))

    def stop(self, timeout_s: float = EXIT_TIMEOUT_S + 15.0) -> None:
        """SIGTERM (Triton drains for --exit-timeout-secs and unloads models), then SIGKILL."""
        if self._process is not None:
            self._process.stop(timeout_s)

    def __enter__(self) -> TritonServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
