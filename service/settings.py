"""The service's settings: environment variables with the `UNET_` prefix."""

from __future__ import annotations

import importlib.util
import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "UNET_"
MiB = 1 << 20
GiB = 1 << 30
DEFAULT_PORTS = {"http": 80, "https": 443}


def shipped_weights() -> Path:
    """The `weights` folder inside the installed `model` package."""
    # find_spec locates the package without importing it, so reading settings never loads torch.
    spec = importlib.util.find_spec("model")
    if spec is None or spec.origin is None:
        raise RuntimeError("the `model` package is not installed; set UNET_MODEL_DIR")
    return Path(spec.origin).parent / "weights"


def _shown_as(text: str) -> dict[str, Any]:
    """How the settings table shows a default that is computed or unwieldy as a bare number."""
    return {"default_display": text}


def normal_origin(text: str) -> str:
    """`scheme://host[:port]` in the form browsers send: lower case, default port left out.

    Raises ValueError for anything that is not an http(s) origin (a path, a query, no host).
    """
    parts = urlsplit(text.strip().rstrip("/"))
    if parts.scheme.lower() not in DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f"{text!r} is not an origin like https://host or http://host:port")
    if parts.path or parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"{text!r} is not an origin: leave out paths, queries and user names")
    scheme, port = parts.scheme.lower(), parts.port  # .port raises ValueError when not a number
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{scheme}://{host}" + ("" if port in (None, DEFAULT_PORTS[scheme]) else f":{port}")


class Settings(BaseSettings):
    """Every knob of the service; each field reads the environment variable UNET_<FIELD>."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, protected_namespaces=())

    model_dir: Path = Field(
        default_factory=shipped_weights,
        description="Folder of checkpoints to serve; each `NAME.safetensors` + `NAME.json` pair "
        "is served as model `NAME`.",
        json_schema_extra=_shown_as("the shipped `model/weights`"),
    )
    state_dir: Path = Field(
        default=Path("state"),
        description="Folder of the SQLite threshold store (active thresholds, calibrations).",
    )
    state_start_fresh: bool = Field(
        default=False,
        description="When the SQLite state database is empty, truncated or damaged, move it "
        "aside (`thresholds.damaged-<UTC time>.sqlite3`, logged) and start with no stored "
        "thresholds; `false`: start-up stops and says how to recover.",
    )
    # Shared state for scaling out (README, "Scaling out").
    database_url: SecretStr | None = Field(
        default=None,
        description="Where the threshold store lives: unset for SQLite in `UNET_STATE_DIR`, or "
        "`postgresql://user:password@host/db` for state shared by processes on many machines "
        "(install the `[postgres]` extra).",
    )
    workers: int = Field(
        default=1,
        ge=1,
        description="Service processes on one port, sharing the store; on a GPU each loads the "
        "models onto the device.",
    )
    shutdown_grace_s: int = Field(
        default=25,
        ge=0,
        description="On SIGTERM or SIGINT the port closes at once (new connections are refused) "
        "and requests in flight get this many seconds to finish; any still running then are cut "
        "off and the process exits.",
    )
    calibration_lease_s: float = Field(
        default=15.0,
        gt=0,
        description="A calibration whose process has not renewed its lease for this long (it "
        "died) is marked failed by any other process.",
    )
    device: str = Field(
        default="auto",
        description="`auto` (CUDA when present, else CPU), `cpu`, `cuda` or `cuda:N`.",
    )
    api_key: SecretStr | None = Field(
        default=None,
        description="When set, mutating endpoints need `Authorization: Bearer <key>`; "
        "unset or empty: no authentication.",
    )
    # NoDecode: a comma-separated list, not the JSON pydantic-settings expects of a list.
    allowed_origins: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="Comma-separated origins (`https://host[:port]`) whose pages may change "
        "state (POST, PUT, DELETE) from a browser, besides the service's own; other origins' "
        "pages get 403.",
        json_schema_extra=_shown_as("none"),
    )
    host: str = Field(
        default="127.0.0.1", description="Interface to listen on (`0.0.0.0` for all)."
    )
    port: int = Field(default=8000, ge=0, le=65535, description="TCP port to listen on.")
    metrics_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Also serve the Prometheus metrics on this port of `UNET_HOST` (a scrape "
        "port kept apart from the API, as Triton does); one worker process only. Unset: "
        "`/metrics` on the API port alone.",
    )
    max_upload_bytes: int = Field(
        default=32 * MiB,
        gt=0,
        description="Largest accepted image upload; larger ones get 413.",
        json_schema_extra=_shown_as("33554432 (32 MiB)"),
    )
    max_dataset_bytes: int = Field(
        default=512 * MiB,
        gt=0,
        description="Largest accepted calibration zip upload; larger ones get 413.",
        json_schema_extra=_shown_as("536870912 (512 MiB)"),
    )
    spool_dir: Path | None = Field(
        default=None,
        description="Folder where uploads over 1 MiB are spooled while they arrive; created "
        "and checked at start-up. Unset: `TMPDIR` when set, else `/tmp`.",
        json_schema_extra=_shown_as("`TMPDIR` or `/tmp`"),
    )
    max_image_pixels: int = Field(
        default=4096 * 4096,
        gt=0,
        description="Largest accepted image, width x height; larger ones get 413. It also "
        "bounds an image's decoded size, read from its header before any decoding: at most "
        "16 bytes (4 samples x 4 bytes) per allowed pixel.",
        json_schema_extra=_shown_as("16777216 (4096 x 4096)"),
    )
    max_zip_entries: int = Field(
        default=10_000, gt=0, description="Most files a calibration zip may hold."
    )
    max_zip_uncompressed_bytes: int = Field(
        default=GiB,
        gt=0,
        description="Most bytes a calibration zip may expand to (guards against zip bombs).",
        json_schema_extra=_shown_as("1073741824 (1 GiB)"),
    )
    # Connection limits (issue 10): bound what one client can make the server hold.
    max_header_bytes: int = Field(
        default=64 * 1024,
        gt=0,
        description="Largest request head (request line and headers); larger ones get 431 "
        "and the connection is closed.",
        json_schema_extra=_shown_as("65536 (64 KiB)"),
    )
    max_header_count: int = Field(
        default=100, gt=0, description="Most headers a request may have; more get 431."
    )
    head_timeout_s: float = Field(
        default=10,
        gt=0,
        description="Seconds a client has to send a complete request head once it connects or "
        "starts a request; slower ones get 408 and are disconnected.",
    )
    body_timeout_s: float = Field(
        default=30,
        gt=0,
        description="Seconds a request body may stall between chunks; then 408 and disconnect.",
    )
    # Connection hygiene (issue 31): slow bodies, unread answers, one address's share.
    body_deadline_s: float = Field(
        default=300,
        gt=0,
        description="Seconds a whole request body may take to arrive (the head has "
        "`UNET_HEAD_TIMEOUT_S`); then 408 and disconnect.",
    )
    body_grace_s: float = Field(
        default=5,
        ge=0,
        description="Seconds a request body may take before `UNET_BODY_MIN_BYTES_PER_S` applies.",
    )
    body_min_bytes_per_s: int = Field(
        default=1024,
        ge=0,
        description="Least average rate, in bytes per second of waiting, at which a request "
        "body must arrive once `UNET_BODY_GRACE_S` is spent; slower ones get 408 and are "
        "disconnected. 0 turns the check off.",
    )
    send_timeout_s: float = Field(
        default=30,
        gt=0,
        description="Seconds an answer may wait for a client that reads none of it; then the "
        "connection is dropped and the answer's memory freed.",
    )
    max_connections_per_client: int = Field(
        default=64,
        gt=0,
        description="Most open connections from one client address (behind a trusted proxy: "
        "requests in flight per `X-Forwarded-For` client); more get 429.",
    )
    unlimited_clients: Annotated[list[str], NoDecode] = Field(
        default=["127.0.0.0/8", "::1"],
        description="Comma-separated addresses or networks not held to "
        "`UNET_MAX_CONNECTIONS_PER_CLIENT` (empty: none).",
        json_schema_extra=_shown_as("`127.0.0.0/8,::1`"),
    )
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default=["127.0.0.1", "::1"],
        description="Comma-separated addresses or networks of proxies whose `X-Forwarded-For` "
        "names the client (for logs and `UNET_MAX_CONNECTIONS_PER_CLIENT`); from anyone "
        "else the header is ignored. Empty: none.",
        json_schema_extra=_shown_as("`127.0.0.1,::1`"),
    )
    keep_alive_timeout_s: int = Field(
        default=5, gt=0, description="Seconds an idle keep-alive connection stays open."
    )
    max_connections: int = Field(
        default=256,
        gt=0,
        description="Most open client connections; one more gets 503 and is closed at once.",
    )
    max_batch: int | None = Field(
        default=None,
        ge=1,
        description="Most images per forward pass; unset: chosen per device (1 on CPU, "
        "larger on a GPU).",
        json_schema_extra=_shown_as("per device"),
    )
    batch_wait_ms: float | None = Field(
        default=None,
        ge=0,
        description="How long a request may wait for others to fill a batch; unset: chosen "
        "per device (0 on CPU).",
        json_schema_extra=_shown_as("per device"),
    )
    queue_size: int = Field(
        default=64,
        ge=1,
        description="Requests waiting for the model beyond which new ones get 503.",
    )
    model_max_workers: int | None = Field(
        default=None,
        ge=1,
        description="Most inference workers one model's passes may hold at once, so that a slow "
        "model's backlog leaves workers to the others; unset: one fewer than the workers when "
        "more than one model is served (at least 1), every worker when one is.",
        json_schema_extra=_shown_as("workers - 1"),
    )
    request_timeout_s: float = Field(
        default=60, gt=0, description="Seconds an inference request may take before it gets 503."
    )
    model_load_timeout_s: float = Field(
        default=120,
        gt=0,
        description="Seconds one model may take to load and test at start-up, and again to warm "
        "up; past it the model is unavailable (503 `model-unavailable`) and the others serve.",
    )
    max_model_bytes: int = Field(
        default=2 * GiB,
        gt=0,
        description="Largest network file a model card may name; a larger one leaves that model "
        "unavailable.",
        json_schema_extra=_shown_as("2147483648 (2 GiB)"),
    )
    tile_size: int = Field(
        default=512,
        ge=16,
        description="Side of the square tiles large images are cut into, in pixels.",
    )
    tile_overlap: float = Field(
        default=0.25, ge=0, lt=1, description="Fraction of a tile shared with its neighbour."
    )
    tile_threshold_pixels: int = Field(
        default=1024 * 1024,
        gt=0,
        description="Images with more pixels than this are processed in tiles.",
        json_schema_extra=_shown_as("1048576 (1024 x 1024)"),
    )
    autocast: Literal["off", "bf16", "fp16"] = Field(
        default="off", description="Mixed precision for inference: `off`, `bf16` or `fp16`."
    )
    torch_threads: int | None = Field(
        default=None,
        ge=1,
        description="CPU threads per forward pass; unset: chosen from the cores available.",
        json_schema_extra=_shown_as("per machine"),
    )
    backend: Literal["auto", "torch", "onnxruntime"] = Field(
        default="auto",
        description="What runs the network on CPU: `onnxruntime` (exported once per checkpoint "
        "into the state folder), `torch`, or `auto` (onnxruntime when the model exports, torch "
        "otherwise). GPUs always run torch.",
    )
    precision: Literal["fp32", "int8"] = Field(
        default="fp32",
        description="`int8`: serve native checkpoints as static INT8 ONNX models, quantised once "
        "per checkpoint into the state folder and served only if the accuracy gate passes (else "
        "fp32, with a log line saying why). CPU and ONNX Runtime only.",
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        default="info", description="Least severe log level written."
    )
    log_json: bool = Field(default=False, description="Write logs as one JSON object per line.")
    strict_settings: bool = Field(
        default=False,
        description="Refuse to start when the environment holds a `UNET_*` variable that is no "
        "setting (a typo such as `UNET_WORKRS`); unset, such a variable is a start-up warning.",
    )
    # Threshold health (drift on live traffic).
    drift_window: int = Field(
        default=200,
        ge=10,
        description="Served images per model whose scores are compared with the calibration's.",
    )
    drift_min_images: int = Field(
        default=20,
        ge=1,
        description="Served images needed before drift can be `warn` or `alert`.",
    )
    # Ray Serve (issue 15): read by `service.ray_app` when it builds the deployment.
    ray_replicas: int = Field(
        default=1,
        ge=1,
        description="Ray Serve: replicas of the service (the least, when autoscaling).",
    )
    ray_max_replicas: int | None = Field(
        default=None,
        ge=1,
        description="Ray Serve: when set, autoscale on queue length between "
        "`UNET_RAY_REPLICAS` and this many replicas; unset: a fixed replica count.",
    )
    ray_target_ongoing_requests: float = Field(
        default=4,
        gt=0,
        description="Ray Serve autoscaling: requests in flight per replica it aims for.",
    )
    ray_num_cpus: float = Field(
        default=1, ge=0, description="Ray Serve: CPUs reserved per replica (may be fractional)."
    )
    ray_num_gpus: float = Field(
        default=0,
        ge=0,
        description="Ray Serve: GPUs reserved per replica (fractional shares a GPU).",
    )
    ray_max_ongoing_requests: int = Field(
        default=16,
        ge=1,
        description="Ray Serve: requests one replica handles at once; the service's own "
        "engine batches and queues them.",
    )
    ray_max_queued_requests: int = Field(
        default=64,
        ge=1,
        description="Ray Serve: requests waiting for a replica beyond which new ones get 503 "
        "with `Retry-After`.",
    )
    ray_retry_after_s: int = Field(
        default=1, ge=0, description="Ray Serve: the `Retry-After` of its overload 503."
    )

    @model_validator(mode="after")
    def _one_metrics_port_per_process(self) -> Settings:
        if self.metrics_port is not None and self.workers > 1:
            raise ValueError(
                "UNET_METRICS_PORT serves one process's metrics: use it with UNET_WORKERS=1 "
                "(scrape each replica), or unset it and scrape /metrics"
            )
        return self

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        value = value.strip().lower()
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, not {value!r}")
        return value

    @field_validator("autocast", "backend", "log_level", "precision", mode="before")
    @classmethod
    def _lower_case(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part for part in value.split(",") if part.strip()]
        return tuple(normal_origin(str(origin)) for origin in value)

    @field_validator("unlimited_clients", "trusted_proxies", mode="before")
    @classmethod
    def _networks(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        for item in value:
            ipaddress.ip_network(item, strict=False)  # a ValueError names the bad entry
        return value

    @field_validator("database_url")
    @classmethod
    def _empty_url_is_none(cls, value: SecretStr | None) -> SecretStr | None:
        return None if value is None or not value.get_secret_value().strip() else value

    @field_validator("api_key")
    @classmethod
    def _empty_key_is_none(cls, value: SecretStr | None) -> SecretStr | None:
        # An empty key would let `Authorization: Bearer ` through; treat it as "no key".
        if value is None or not value.get_secret_value().strip():
            return None
        return value


def settings_table_markdown() -> str:
    """Every setting as a Markdown table: environment variable, default, description."""
    rows = ["| variable | default | description |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        if "default_display" in extra:
            default = str(extra["default_display"])
        elif field.default is None:
            default = "unset"
        else:
            value = field.default
            default = f"`{str(value).lower() if isinstance(value, bool) else value}`"
        description = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{ENV_PREFIX}{name.upper()}` | {default} | {description} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(settings_table_markdown(), end="")
