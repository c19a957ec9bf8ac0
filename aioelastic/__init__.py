"""aioelastic: asyncio-native distributed cron jobs, sharded over live instances (ElasticJob-Lite's
model): ZooKeeper coordination, failover, misfire and an execution trace."""

from ._config import ErrorHandler, JobConfig, Settings
from ._context import ShardingContext, ShardingContexts
from ._cron import CronTrigger
from ._errors import (
    AioelasticError,
    BadVersionError,
    ConfigError,
    DistributedOnceTimeoutError,
    JobNotFoundError,
    NodeExistsError,
    NoNodeError,
    NotFoundError,
    OperationRefusedError,
    RegistryError,
    ScriptJobError,
    SessionLostError,
    TimeDiffError,
    TransactionFailedError,
)
from ._health import Health
from ._http_job import HttpJob, HttpJobError
from ._jobs import DataflowJob, ScriptJob
from ._listeners import DistributedOnceListener, JobListener
from ._missed import MissedFire, missed_fires
from ._observer import Observer
from ._operations import (
    InstanceInfo,
    ItemInfo,
    ItemStatus,
    JobBrief,
    JobChain,
    JobStatus,
    Operations,
    ServerInfo,
    ServerStatus,
)
from ._ownership import ClaimLost
from ._retry import ItemTimeoutError, RetryBackoff
from ._scheduler import RunState, Scheduler
from ._sharding import ShardingStrategy
from .tracing._events import (
    ExecutionSource,
    ExecutionType,
    JobExecutionEvent,
    JobStatusTraceEvent,
    Source,
    State,
    TraceEvent,
    TraceSink,
)

__all__ = [
    "AioelasticError",
    "BadVersionError",
    "ClaimLost",
    "ConfigError",
    "CronTrigger",
    "DataflowJob",
    "DistributedOnceListener",
    "DistributedOnceTimeoutError",
    "ErrorHandler",
    "ExecutionSource",
    "ExecutionType",
    "Health",
    "HttpJob",
    "HttpJobError",
    "InstanceInfo",
    "ItemInfo",
    "ItemStatus",
    "ItemTimeoutError",
    "JobBrief",
    "JobChain",
    "JobConfig",
    "JobExecutionEvent",
    "JobListener",
    "JobNotFoundError",
    "JobStatus",
    "JobStatusTraceEvent",
    "MissedFire",
    "NoNodeError",
    "NodeExistsError",
    "NotFoundError",
    "Observer",
    "OperationRefusedError",
    "Operations",
    "RegistryError",
    "RetryBackoff",
    "RunState",
    "Scheduler",
    "ScriptJob",
    "ScriptJobError",
    "ServerInfo",
    "ServerStatus",
    "SessionLostError",
    "Settings",
    "ShardingContext",
    "ShardingContexts",
    "ShardingStrategy",
    "Source",
    "State",
    "TimeDiffError",
    "TraceEvent",
    "TraceSink",
    "TransactionFailedError",
    "missed_fires",
]

__version__ = "0.1.0.dev0"
