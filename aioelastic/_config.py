"""Job configuration and scheduler settings: the only validation boundary.

Every invalid value raises ``ConfigError`` naming the field and the bad value.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from ._cron import CronTrigger
from ._errors import ConfigError
from ._json import loads as loads_json
from ._listeners import JobListener
from ._retry import RetryBackoff
from ._sharding import ShardingStrategy
from ._urls import RegistryURL, check_node_name, parse_registry_url, parse_tracing_url
from .registry._limits import NODE_DATA_LIMIT, PACKET_LIMIT
from .registry._paths import invalid_path_reason

__all__ = ["ErrorHandler", "JobConfig", "Settings", "load_settings"]

#: ``"log"`` (default), ``"raise"`` (stop the scheduler with the error), ``"ignore"``, or a
#: callable ``(job_name, exception)``, sync or async.
ErrorHandler = Literal["log", "raise", "ignore"] | Callable[[str, BaseException], Any]

_JAVA_INT_MIN, _JAVA_INT_MAX = -(2**31), 2**31 - 1

#: The most items a job may have. Far above any real job, it bounds the per-item loops (on
#: every fire) that a huge count written to the registry by another client would turn into a
#: stall of the whole process.
MAX_SHARDING_TOTAL_COUNT = 100_000

#: Fields that live in code only, never in the registry's ``config`` node.
_LOCAL_ONLY = frozenset({"listeners", "overwrite"})
#: Fields written to the registry (for operators) but never taken from it: the dependency
#: graph is checked at registration, in code.
_CODE_WINS = frozenset({"after"})


def _as_config_error(exc: ValidationError, model: str) -> ConfigError:
    err = exc.errors()[0]
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, ConfigError):
        return cause
    field = ".".join(str(p) for p in err["loc"]) or model
    return ConfigError(field, err.get("input"), err["msg"])


def _java_split(text: str, sep: str) -> list[str]:
    """Java's ``String.split`` for a one-character literal: trailing empty strings dropped."""
    parts = text.split(sep)
    while parts and not parts[-1]:
        parts.pop()
    return parts


def _java_trim(text: str) -> str:
    """Java's ``String.trim``: strips characters up to U+0020 (not Unicode spaces)."""
    return text.strip("".join(map(chr, range(0x21))))


def _is_java_int(text: str) -> bool:
    """``Integer.parseInt`` would accept it: an optional sign, decimal digits, 32 bits."""
    digits = text[1:] if text.startswith(("+", "-")) else text
    return len(digits) < 4000 and digits.isdecimal() and -(2**31) <= int(text) < 2**31


def _parse_item_parameters(raw: str) -> dict[int, str]:
    """ElasticJob's ``ShardingItemParameters``: ``"0=a,1=b"``; every piece must be one
    ``int=value`` pair (``"0=A,,1=B"``, ``"0="``, ``"0=a=b"``, ``"x=1"`` are errors)."""
    out: dict[int, str] = {}
    if not raw:
        return out
    for part in _java_split(raw, ","):
        pair = _java_split(_java_trim(part), "=")
        if len(pair) != 2:
            raise ConfigError(
                "sharding_item_parameters",
                raw,
                f"{part!r} is not of the form 'item=value' (should be int=xx,int=xx)",
            )
        key = _java_trim(pair[0])
        if not _is_java_int(key):
            raise ConfigError("sharding_item_parameters", raw, f"key {key!r} is not an integer")
        out[int(key)] = _java_trim(pair[1])
    return out


def _check_size(field: str, value: object, *, encoded: bool = False) -> None:
    """``value`` (as stored in the config JSON) must fit in one registry node."""
    size = len(value) if isinstance(value, bytes) and encoded else len(json.dumps(value))
    if size > NODE_DATA_LIMIT:
        raise ConfigError(
            field,
            f"<{size} bytes>",
            f"too large: the job's whole config (stored as JSON) must fit in {NODE_DATA_LIMIT} "
            f"bytes, ZooKeeper's packet limit (jute.maxbuffer = {PACKET_LIMIT} bytes) minus "
            "room for the request",
        )


class JobConfig(BaseModel):
    """One job's configuration, with ElasticJob's fields and defaults."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    name: str
    cron: str | None = None
    time_zone: str = "UTC"
    sharding_total_count: int = 1
    sharding_item_parameters: dict[int, str] = Field(default_factory=dict)
    job_parameter: str = ""
    monitor_execution: bool = True
    failover: bool = False
    misfire: bool = True
    max_time_diff_seconds: int = -1
    reconcile_interval_minutes: int = 10
    sharding_strategy: ShardingStrategy = ShardingStrategy.AVG_ALLOCATION
    error_handler: ErrorHandler = "log"
    listeners: tuple[JobListener, ...] = ()
    description: str = ""
    disabled: bool = False
    overwrite: bool = False
    static_sharding: bool = False
    props: dict[str, str] = Field(default_factory=dict)
    max_concurrency: int | None = None
    timeout: float | None = None
    retries: int = 0
    """Retries of a failed item run (on this instance, while it owns the item)."""
    retry_backoff: RetryBackoff = RetryBackoff()
    after: tuple[str, ...] = ()
    """Upstream jobs: this job fires once per completed fire of them (no cron of its own)."""
    after_policy: Literal["all_succeeded", "all_done"] = "all_succeeded"
    catchup_window: float = 0.0
    """Seconds: on start, one catch-up fire if the latest fire missed by a stopped cluster is
    this recent (0: off)."""

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise _as_config_error(exc, "JobConfig") from None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_node_name("name", v)

    @field_validator("sharding_total_count")
    @classmethod
    def _count(cls, v: int) -> int:
        if v <= 0:
            raise ConfigError("sharding_total_count", v, "must be > 0")
        if v > MAX_SHARDING_TOTAL_COUNT:
            raise ConfigError("sharding_total_count", v, f"must be <= {MAX_SHARDING_TOTAL_COUNT}")
        return v

    @field_validator("sharding_item_parameters", mode="before")
    @classmethod
    def _item_params(cls, v: object) -> object:
        if isinstance(v, str):
            return _parse_item_parameters(v)
        return v

    @field_validator("max_concurrency")
    @classmethod
    def _concurrency(cls, v: int | None) -> int | None:
        if v is not None and v <= 0:
            raise ConfigError("max_concurrency", v, "must be > 0 (or None for no limit)")
        return v

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, v: float | None) -> float | None:
        if v is not None and not v > 0:  # (NaN too)
            raise ConfigError("timeout", v, "must be > 0 seconds (or None for no limit)")
        return v

    @field_validator("after", mode="before")
    @classmethod
    def _after(cls, v: object) -> object:
        names = (v,) if isinstance(v, str) else tuple(v) if isinstance(v, list | tuple) else v
        if isinstance(names, tuple):
            for name in names:
                check_node_name("after", name)
            if len(set(names)) != len(names):
                raise ConfigError("after", v, "names an upstream job twice")
        return names

    @field_validator("catchup_window")
    @classmethod
    def _catchup(cls, v: float) -> float:
        if not 0 <= v < math.inf:
            raise ConfigError("catchup_window", v, "must be >= 0 seconds (0 disables it)")
        return v

    @field_validator("retries")
    @classmethod
    def _retries(cls, v: int) -> int:
        if not 0 <= v <= 1000:
            raise ConfigError("retries", v, "must be within 0..1000")
        return v

    @field_validator("reconcile_interval_minutes")
    @classmethod
    def _reconcile(cls, v: int) -> int:
        if v < 0:
            raise ConfigError("reconcile_interval_minutes", v, "must be >= 0 (0 disables it)")
        return v

    @field_validator("max_time_diff_seconds")
    @classmethod
    def _time_diff(cls, v: int) -> int:
        if v < -1:
            raise ConfigError("max_time_diff_seconds", v, "must be >= 0, or -1 to disable")
        return v

    @model_validator(mode="after")
    def _cross_fields(self) -> JobConfig:
        for item in self.sharding_item_parameters:
            if not 0 <= item < self.sharding_total_count:
                raise ConfigError(
                    "sharding_item_parameters",
                    item,
                    f"item out of range 0..{self.sharding_total_count - 1}",
                )
        if self.after and self.cron:
            raise ConfigError("after", list(self.after), "a dependent job has no cron of its own")
        if self.name in self.after:
            raise ConfigError("after", list(self.after), "a job cannot run after itself (cycle)")
        # Validates the zone always, and the expression when there is one.
        CronTrigger(self.cron or "0 0 0 * * ?", self.time_zone)
        return self

    @model_validator(mode="after")
    def _sizes(self) -> JobConfig:
        # The config is one registry node: over ZooKeeper's packet limit the server would drop
        # the connection on every attempt to write it.
        _check_size("job_parameter", self.job_parameter)
        for item, value in sorted(self.sharding_item_parameters.items()):
            _check_size(f"sharding_item_parameters[{item}]", value)
        _check_size("description", self.description)
        _check_size("props", self.props)
        _check_size("config", self.to_registry(), encoded=True)
        return self

    def trigger(self) -> CronTrigger | None:
        """The cron trigger, or None for a one-off job (runs only when triggered)."""
        return _shared_trigger(self.cron, self.time_zone) if self.cron else None

    def check_fires(self) -> None:
        """Raise ``ConfigError`` if the cron has no fire time left from now on (a February
        30th, a year gone by): Quartz refuses to schedule such a trigger ("will never fire"),
        where the job would otherwise sit idle without a word; and a ``catchup_window`` on a
        job without a cron. Checked where they are set (``add_job``, a config update), not on
        reading a stored config: a cron expires with time."""
        trigger = self.trigger()
        if trigger is not None and trigger.next_fire_time(datetime.now(UTC)) is None:
            raise ConfigError(
                "cron", self.cron, f"never fires: no time from now on matches it ({self.time_zone})"
            )
        if trigger is None and self.catchup_window > 0:  # it did nothing, without a word
            raise ConfigError(
                "catchup_window",
                self.catchup_window,
                "needs a cron: a job without one (one-off, dependent) has no fire to miss",
            )

    def to_registry(self) -> bytes:
        """The JSON stored in the registry's ``config`` node (code-only fields left out)."""
        custom = not isinstance(self.error_handler, str)
        data = self.model_dump(
            mode="json", exclude=set(_LOCAL_ONLY) | ({"error_handler"} if custom else set())
        )
        if custom:
            data["error_handler"] = "custom"
        return json.dumps(data, sort_keys=True).encode()

    def merged_with_registry(self, raw: bytes) -> JobConfig:
        """This config with the shared fields taken from the registry's JSON (registry wins).

        Raises ``ConfigError`` for anything another client may have written: not JSON, not a
        JSON object, wrong types, integers outside Java's ``int`` (ElasticJob's field type)."""
        stored = decode_registry_config(raw)
        update = {
            k: v
            for k, v in stored.items()
            if k in type(self).model_fields and k not in _LOCAL_ONLY | _CODE_WINS and k != "name"
        }
        if update.get("error_handler") == "custom" or not isinstance(self.error_handler, str):
            update.pop("error_handler", None)
        merged = {**self.model_dump(), **update, "listeners": self.listeners}
        return type(self)(**merged)

    def with_changes(self, **changes: Any) -> JobConfig:
        return type(self)(**{**self.model_dump(), "listeners": self.listeners, **changes})


def decode_registry_config(raw: bytes) -> Mapping[str, Any]:
    """The registry's ``config`` node as a JSON object; ``ConfigError`` saying what is wrong."""
    try:
        stored = loads_json(raw)
    except ValueError as exc:  # includes undecodable bytes and over-long integer literals
        raise ConfigError("config", raw[:200], f"registry config is not JSON: {exc}") from None
    if not isinstance(stored, dict):
        raise ConfigError(
            "config", raw[:200], f"registry config is a JSON {type(stored).__name__}, not an object"
        )
    for key, value in stored.items():
        _check_json_ints(str(key), value)
    return stored


def _check_json_ints(field: str, value: object) -> None:
    if isinstance(value, bool):
        return
    if isinstance(value, int) and not _JAVA_INT_MIN <= value <= _JAVA_INT_MAX:
        raise ConfigError(field, value, "integer out of range (a 32-bit int, as in ElasticJob)")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(field, value, "must be a finite number")
    if isinstance(value, dict):
        for key, item in value.items():
            _check_json_ints(f"{field}.{key}", item)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_json_ints(f"{field}[{index}]", item)


#: The longest ``instance_id`` / ``host``: an instance id is part of every task id (at most
#: 255 characters, ElasticJob's column; a longer id is cut there) and a host is a DNS name.
NAME_LIMITS = {"instance_id": 128, "host": 253}


def check_instance_name(field: str, value: str) -> str:
    """Refuse an ``instance_id`` or ``host`` that cannot be one registry node name
    (``instances/{id}``, ``servers/{host}``, ``trigger/{id}``): empty, ``/``, ``.``, ``..``,
    a character ZooKeeper refuses in a path (control characters among them), or too long.
    ``@`` is allowed: ElasticJob's own ids are ``{ip}@-@{pid}``, and task ids parse around it."""
    limit = NAME_LIMITS.get(field, 128)
    if len(value) > limit:
        raise ConfigError(field, value[:40] + "...", f"longer than {limit} characters")
    if not value or "/" in value or value in (".", ".."):
        raise ConfigError(field, value, "must be non-empty, not '.' or '..', and contain no '/'")
    reason = invalid_path_reason("/" + value)
    if reason is not None:
        reason = reason.removesuffix(" in segment 1")
        raise ConfigError(field, value, f"not a registry node name: {reason}")
    return value


class Settings(BaseSettings):
    """Scheduler settings; every field can come from an ``AIOELASTIC_<FIELD>`` variable."""

    model_config = SettingsConfigDict(env_prefix="AIOELASTIC_", frozen=True, extra="forbid")

    registry_url: SecretStr = SecretStr("memory://")
    """``memory://[name][/namespace]`` (embedded) or
    ``zookeeper://[user:pass@]host:port[,host:port]/namespace[?session_timeout=s&connect_timeout=s]``."""
    tracing_url: SecretStr | None = None
    """``postgresql://...``, ``sqlite:///path.db``, ``memory://`` or ``log://``; None: no trace."""
    instance_id: str | None = None
    """Defaults to ``{ip}@-@{pid}@-@{random}``; must be unique per process."""
    host: str | None = None
    """The server name under ``servers/``; defaults to this machine's IP address."""
    registry_username: str | None = None
    registry_password: SecretStr | None = None
    shutdown_grace_period: float = 10.0
    """Seconds running items get to finish on stop before they are cancelled."""
    reshard_wait_timeout: float = 10.0
    """Seconds a fire waits for a pending reshard before running with the assignment it has."""
    trace_journal_path: Path | None = None
    loop_stall_action: Literal["exit", "warn"] = "exit"
    """What the loop watchdog does when the event loop stays blocked past the safe limit
    (about 2/3 of the ZooKeeper session timeout, before the server can expire the session):
    ``"exit"`` ends the process at once (status 70) so that no survivor runs an item this
    process is still inside; ``"warn"`` only logs CRITICAL (unsafe: an item may run twice)."""
    loop_stall_warning: float = Field(default=1.0, ge=0)
    """Log a WARNING with the blocking code's stack when the loop stalls this long (0: off)."""
    missed_fire_tolerance: float = Field(default=5.0, gt=0, le=3600)
    """Seconds after a cron fire's due time at which the job's leader judges it missed."""
    trace_retention_days: float | None = Field(default=None, gt=0, le=365_000)
    """Delete trace rows older than this many days (one instance per namespace, hourly; at most
    1000 years, a cutoff a date can hold); None: keep everything."""

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise _as_config_error(exc, "Settings") from None

    @field_validator("registry_url")
    @classmethod
    def _registry_url(cls, v: SecretStr) -> SecretStr:
        parse_registry_url(v.get_secret_value())
        return v

    @field_validator("tracing_url")
    @classmethod
    def _tracing_url(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None:
            parse_tracing_url(v.get_secret_value())
        return v

    @field_validator("instance_id", "host")
    @classmethod
    def _node_name(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None:
            check_instance_name(str(info.field_name), v)
        return v

    @field_validator("shutdown_grace_period", "reshard_wait_timeout")
    @classmethod
    def _positive(cls, v: float, info: ValidationInfo) -> float:
        if not v >= 0:  # (NaN too)
            raise ConfigError(str(info.field_name), v, "durations must be >= 0")
        return v

    def registry(self) -> RegistryURL:
        """The parsed ``registry_url``, with ``registry_username``/``registry_password`` as
        its credentials when the URL has none."""
        url = parse_registry_url(self.registry_url.get_secret_value())
        if self.registry_username and url.username is None:
            url = replace(url, username=self.registry_username, password=self.registry_password)
        return url


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment, with ``overrides`` (None values ignored) on top."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


@functools.lru_cache(maxsize=1024)
def _shared_trigger(cron: str, time_zone: str) -> CronTrigger:
    """One (immutable) trigger for equal expressions: the timer computes a second's next fire
    time once for all jobs that share it."""
    return CronTrigger(cron, time_zone)
