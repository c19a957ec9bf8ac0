"""JobConfig / Settings validation: each field's rule and error text."""

from __future__ import annotations

import pytest

from aioelastic import ConfigError, JobConfig, Scheduler, Settings, ShardingStrategy


def test_defaults_match_elasticjob() -> None:
    cfg = JobConfig(name="job", cron="0/5 * * * * ?", sharding_total_count=3)
    assert cfg.monitor_execution is True
    assert cfg.failover is False
    assert cfg.misfire is True
    assert cfg.max_time_diff_seconds == -1
    assert cfg.reconcile_interval_minutes == 10
    assert cfg.sharding_strategy is ShardingStrategy.AVG_ALLOCATION
    assert cfg.error_handler == "log"
    assert cfg.overwrite is False and cfg.static_sharding is False and cfg.disabled is False
    assert cfg.max_concurrency is None and cfg.timeout is None


def test_item_parameters_string_and_dict() -> None:
    a = JobConfig(name="j", sharding_total_count=3, sharding_item_parameters="0=a, 1=b,2=c")
    b = JobConfig(
        name="j", sharding_total_count=3, sharding_item_parameters={0: "a", 1: "b", 2: "c"}
    )
    assert a.sharding_item_parameters == b.sharding_item_parameters == {0: "a", 1: "b", 2: "c"}


# ElasticJob's ShardingItemParametersTest, plus the pieces its parser refuses or keeps (Java's
# String.split drops trailing empty strings, so "0=A," and "0=a=" parse; trim() is ASCII-only).
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("", {}),  # assertGetMapWhenIsEmpty
        ("0=A,1=B,2=C", {0: "A", 1: "B", 2: "C"}),  # assertGetMap
        (" 0 = A , 1=B ", {0: "A", 1: "B"}),
        ("0=A,", {0: "A"}),
        ("0=A,,", {0: "A"}),
        (",", {}),
        ("0=a=", {0: "a"}),
        ("+1=x,0=y,1=z", {0: "y", 1: "z"}),  # the last value of an item wins (HashMap.put)
        ("0=\u00a0a\u00a0", {0: "\u00a0a\u00a0"}),  # NBSP is not trimmed by Java
    ],
)
def test_item_parameters_parse_as_elasticjob(raw: str, expected: dict[int, str]) -> None:
    cfg = JobConfig(name="j", sharding_total_count=3, sharding_item_parameters=raw)
    assert cfg.sharding_item_parameters == expected


@pytest.mark.parametrize(
    "raw",
    [
        "xxx-xxx",  # assertNewWhenPairFormatInvalid
        "xxx=xxx",  # assertNewWhenItemIsNotNumber
        "0=A,,1=B",
        "0=",
        "0=a=b",
        "=a",
        "0==a",
        ",0=A",
        "0=A, ",
        " ",
        "1_0=a",
        "0x1=a",
        "99999999999=a",
        "9" * 5000 + "=a",
        "0:a",
    ],
)
def test_item_parameters_refused_as_elasticjob(raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        JobConfig(name="j", sharding_total_count=3, sharding_item_parameters=raw)
    assert info.value.field == "sharding_item_parameters"


@pytest.mark.parametrize(
    ("fields", "field", "fragment"),
    [
        ({"cron": "not a cron"}, "cron", "not a cron"),
        ({"cron": "0 0 0 * * ?", "time_zone": "Mars/Olympus"}, "time_zone", "Mars/Olympus"),
        ({"sharding_total_count": 0}, "sharding_total_count", "must be > 0"),
        ({"sharding_total_count": -2}, "sharding_total_count", "-2"),
        (
            {"sharding_total_count": 2, "sharding_item_parameters": "0=a,5=b"},
            "sharding_item_parameters",
            "out of range 0..1",
        ),
        ({"sharding_item_parameters": "0:a"}, "sharding_item_parameters", "item=value"),
        ({"max_concurrency": 0}, "max_concurrency", "must be > 0"),
        ({"timeout": -1}, "timeout", "must be > 0"),
        ({"timeout": float("nan")}, "timeout", "must be > 0"),  # fail_after(nan) never fires
        ({"max_time_diff_seconds": -5}, "max_time_diff_seconds", ">= 0"),
        ({"reconcile_interval_minutes": -1}, "reconcile_interval_minutes", ">= 0"),
        ({"sharding_strategy": "RANDOM"}, "sharding_strategy", "RANDOM"),
        ({"error_handler": "explode"}, "error_handler", "explode"),
        ({"unknown_field": 1}, "unknown_field", "Extra inputs"),
    ],
)
def test_bad_fields_raise_config_error_naming_field_and_value(
    fields: dict[str, object], field: str, fragment: str
) -> None:
    with pytest.raises(ConfigError) as info:
        JobConfig(name="job", **fields)
    assert info.value.field.startswith(field)
    assert fragment in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("name", ["", "a/b", "..", "with space", "zookeeper", "ünï"])
def test_job_names_must_be_node_names(name: str) -> None:
    with pytest.raises(ConfigError, match="name"):
        JobConfig(name=name)


def test_scheduler_rejects_duplicates_and_sync_jobs() -> None:
    s = Scheduler()

    async def job(ctx: object) -> None: ...

    s.add_job(job, cron="0/5 * * * * ?")
    with pytest.raises(ConfigError, match="already registered"):
        s.add_job(job, cron="0/5 * * * * ?")

    def sync_job(ctx: object) -> None: ...

    with pytest.raises(ConfigError, match="async def"):
        s.add_job(sync_job, cron="0/5 * * * * ?")
    with pytest.raises(ConfigError, match="cron"):
        s.add_job(job, name="other", cron="61 * * * * ?")


@pytest.mark.parametrize(
    "cron",
    [
        "0 0 0 30 2 ?",
        "0 0 0 31 4,6,9,11 ?",
        "0 0 0 1 1 ? 2020",
        "0 0 0 29 2 ? 2099",
        "0 0 0 30W 2 ?",
    ],
)
def test_a_cron_that_never_fires_is_refused_as_quartz_does(cron: str) -> None:
    """Quartz refuses to schedule a trigger with no fire time ahead ("the given trigger will
    never fire"); the job would sit idle without a word. A far but real fire time is fine."""
    s = Scheduler()

    async def job(ctx: object) -> None: ...

    with pytest.raises(ConfigError, match="never fires") as info:
        s.add_job(job, name="never", cron=cron)
    assert info.value.field == "cron"
    s.add_job(job, name="leap", cron="0 0 0 29 2 ? 2096")  # a leap year's February 29th
    assert JobConfig(name="stored", cron=cron).cron == cron  # a stored one still reads


def test_a_catchup_window_without_a_cron_is_refused() -> None:
    # A one-off or dependent job has no fire times to miss: the window did nothing, silently.
    s = Scheduler()

    async def job(ctx: object) -> None: ...

    with pytest.raises(ConfigError) as info:
        s.add_job(job, name="oneoff", catchup_window=3600)
    assert info.value.field == "catchup_window"
    s.add_job(job, name="up", cron="0 0 2 * * ?", catchup_window=3600)
    with pytest.raises(ConfigError) as info:
        s.add_job(job, name="down", after="up", catchup_window=3600)
    assert info.value.field == "catchup_window"


def test_registry_json_round_trip_keeps_local_fields() -> None:
    local = JobConfig(name="j", cron="0/5 * * * * ?", sharding_total_count=2, overwrite=False)
    remote = JobConfig(name="j", cron="0 0 * * * ?", sharding_total_count=7, job_parameter="p")
    merged = local.merged_with_registry(remote.to_registry())
    assert merged.cron == "0 0 * * * ?" and merged.sharding_total_count == 7
    assert merged.job_parameter == "p" and merged.overwrite is False


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AIOELASTIC_REGISTRY_URL", "zookeeper://u:secret@127.0.0.1:2181/ns?session_timeout=4"
    )
    monkeypatch.setenv("AIOELASTIC_TRACING_URL", "sqlite:////tmp/x.db")
    monkeypatch.setenv("AIOELASTIC_INSTANCE_ID", "node-1")
    s = Settings()
    assert s.instance_id == "node-1"
    assert "secret" not in repr(s) and "secret" not in str(s)
    sched = Scheduler(settings=s, instance_id="node-2", tracing="memory://")
    assert sched.instance_id == "node-2"
    assert sched.registry_url.session_timeout == 4 and sched.registry_url.namespace == "ns"
    assert "secret" not in str(sched.registry_url)


@pytest.mark.parametrize(
    "url",
    [
        "http://x",
        "zookeeper://",
        "zookeeper://host/ns",
        "zookeeper://h:1/ns?session_timeout=x",
        "zookeeper://h:1/ns?bogus=1",
        "zookeeper://h:1/bad ns",
        "zookeeper://user@h:1/ns",
    ],
)
def test_bad_registry_urls(url: str) -> None:
    with pytest.raises(ConfigError, match="registry_url"):
        Settings(registry_url=url)


def test_bad_registry_url_hides_password() -> None:
    with pytest.raises(ConfigError) as info:
        Settings(registry_url="zookeeper://u:hunter2@h:1/ns?bogus=1")
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("instance_id", "a/b"),
        ("host", ""),
        ("shutdown_grace_period", -1.0),
        ("reshard_wait_timeout", -0.5),
        # NaN passed "< 0": a stop then polled its grace period's end forever at full CPU.
        ("shutdown_grace_period", float("nan")),
        ("reshard_wait_timeout", float("nan")),
        # No cutoff date that far back: every hourly purge failed with a ConfigError.
        ("trace_retention_days", float("inf")),
        ("trace_retention_days", 1e9),
    ],
)
def test_settings_validators_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        Settings(**{field: value})
    assert info.value.field == field


_BAD_NODE_NAMES = [
    "",
    "/",
    "a/b",
    ".",
    "..",
    "a\x00b",
    "pod-1\n",
    "a\tb",
    "x\x7f",
    "\ud800",
    "a\ufff0",
]


@pytest.mark.parametrize("field", ["instance_id", "host"])
@pytest.mark.parametrize("value", [*_BAD_NODE_NAMES, "x" * 254])
def test_instance_ids_and_hosts_must_be_registry_node_names(field: str, value: str) -> None:
    # Refused when the settings are made, naming the field, not at the first registry write.
    with pytest.raises(ConfigError) as info:
        Settings(**{field: value})
    assert info.value.field == field and field in str(info.value)


@pytest.mark.parametrize("value", _BAD_NODE_NAMES)
def test_scheduler_refuses_a_bad_instance_id_at_construction(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError, match="instance_id"):
        Scheduler(instance_id=value)
    with pytest.raises(ConfigError, match="instance_id"):
        Scheduler(settings=Settings(), instance_id=value)
    if "\x00" in value or "\ud800" in value:
        return  # cannot be an environment variable
    monkeypatch.setenv("AIOELASTIC_HOST", value)
    with pytest.raises(ConfigError, match="host"):
        Scheduler()


def test_instance_ids_may_be_elasticjob_ids_ipv6_and_host_names() -> None:
    for value in ("10.0.0.7@-@4242", "2001:db8::1@-@77@-@a1b2c3", "pod-7.svc.local", "ünï"):
        assert Scheduler(instance_id=value, settings=Settings(host=value)).instance_id == value
    assert Settings(instance_id="x" * 128, host="h" * 253).host == "h" * 253
    with pytest.raises(ConfigError, match="longer than 128"):
        Settings(instance_id="x" * 129)


def test_settings_registry_url_takes_separate_credentials() -> None:
    s = Settings(
        registry_url="zookeeper://127.0.0.1:2181/ns",
        registry_username="app",
        registry_password="hunter2",
    )
    url = s.registry()
    assert url.username == "app" and url.password is not None
    assert url.password.get_secret_value() == "hunter2" and "hunter2" not in str(url)
    assert Scheduler(settings=s).registry_url == url  # the scheduler uses the same method
    inline = Settings(registry_url="zookeeper://own:pw@127.0.0.1:2181/ns", registry_username="x")
    assert inline.registry().username == "own"  # credentials in the URL win


def test_error_classes_relate() -> None:
    from aioelastic import AioelasticError, JobNotFoundError, NotFoundError
    from aioelastic._errors import ItemCancelled

    assert issubclass(JobNotFoundError, NotFoundError) and issubclass(JobNotFoundError, KeyError)
    assert issubclass(ItemCancelled, AioelasticError)
