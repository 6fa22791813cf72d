import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Severity(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEVERITY_UNSPECIFIED: _ClassVar[Severity]
    SEVERITY_INFO: _ClassVar[Severity]
    SEVERITY_WARNING: _ClassVar[Severity]
    SEVERITY_ERROR: _ClassVar[Severity]
    SEVERITY_CRITICAL: _ClassVar[Severity]

class QueryOrder(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    QUERY_ORDER_UNSPECIFIED: _ClassVar[QueryOrder]
    QUERY_ORDER_TOTAL_TIME: _ClassVar[QueryOrder]
    QUERY_ORDER_MEAN_TIME: _ClassVar[QueryOrder]
    QUERY_ORDER_P99: _ClassVar[QueryOrder]
    QUERY_ORDER_CALLS: _ClassVar[QueryOrder]
    QUERY_ORDER_ROWS: _ClassVar[QueryOrder]
SEVERITY_UNSPECIFIED: Severity
SEVERITY_INFO: Severity
SEVERITY_WARNING: Severity
SEVERITY_ERROR: Severity
SEVERITY_CRITICAL: Severity
QUERY_ORDER_UNSPECIFIED: QueryOrder
QUERY_ORDER_TOTAL_TIME: QueryOrder
QUERY_ORDER_MEAN_TIME: QueryOrder
QUERY_ORDER_P99: QueryOrder
QUERY_ORDER_CALLS: QueryOrder
QUERY_ORDER_ROWS: QueryOrder

class AnalyzeRequest(_message.Message):
    __slots__ = ("sql", "dialect")
    SQL_FIELD_NUMBER: _ClassVar[int]
    DIALECT_FIELD_NUMBER: _ClassVar[int]
    sql: str
    dialect: str
    def __init__(self, sql: _Optional[str] = ..., dialect: _Optional[str] = ...) -> None: ...

class Finding(_message.Message):
    __slots__ = ("rule_id", "severity", "message", "snippet")
    RULE_ID_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SNIPPET_FIELD_NUMBER: _ClassVar[int]
    rule_id: str
    severity: Severity
    message: str
    snippet: str
    def __init__(self, rule_id: _Optional[str] = ..., severity: _Optional[_Union[Severity, str]] = ..., message: _Optional[str] = ..., snippet: _Optional[str] = ...) -> None: ...

class AnalyzeResponse(_message.Message):
    __slots__ = ("fingerprint", "normalized", "statement_kind", "tables", "findings")
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    NORMALIZED_FIELD_NUMBER: _ClassVar[int]
    STATEMENT_KIND_FIELD_NUMBER: _ClassVar[int]
    TABLES_FIELD_NUMBER: _ClassVar[int]
    FINDINGS_FIELD_NUMBER: _ClassVar[int]
    fingerprint: str
    normalized: str
    statement_kind: str
    tables: _containers.RepeatedScalarFieldContainer[str]
    findings: _containers.RepeatedCompositeFieldContainer[Finding]
    def __init__(self, fingerprint: _Optional[str] = ..., normalized: _Optional[str] = ..., statement_kind: _Optional[str] = ..., tables: _Optional[_Iterable[str]] = ..., findings: _Optional[_Iterable[_Union[Finding, _Mapping]]] = ...) -> None: ...

class QueryExecution(_message.Message):
    __slots__ = ("sql", "fingerprint", "dialect", "duration", "rows", "service", "trace_id", "time")
    SQL_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    DIALECT_FIELD_NUMBER: _ClassVar[int]
    DURATION_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    sql: str
    fingerprint: str
    dialect: str
    duration: _duration_pb2.Duration
    rows: int
    service: str
    trace_id: str
    time: _timestamp_pb2.Timestamp
    def __init__(self, sql: _Optional[str] = ..., fingerprint: _Optional[str] = ..., dialect: _Optional[str] = ..., duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., rows: _Optional[int] = ..., service: _Optional[str] = ..., trace_id: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RecordRequest(_message.Message):
    __slots__ = ("executions",)
    EXECUTIONS_FIELD_NUMBER: _ClassVar[int]
    executions: _containers.RepeatedCompositeFieldContainer[QueryExecution]
    def __init__(self, executions: _Optional[_Iterable[_Union[QueryExecution, _Mapping]]] = ...) -> None: ...

class RecordResponse(_message.Message):
    __slots__ = ("accepted", "rejected", "errors")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    rejected: int
    errors: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, accepted: _Optional[int] = ..., rejected: _Optional[int] = ..., errors: _Optional[_Iterable[str]] = ...) -> None: ...

class TopQueriesRequest(_message.Message):
    __slots__ = ("order_by", "limit", "service")
    ORDER_BY_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    order_by: QueryOrder
    limit: int
    service: str
    def __init__(self, order_by: _Optional[_Union[QueryOrder, str]] = ..., limit: _Optional[int] = ..., service: _Optional[str] = ...) -> None: ...

class BatchingHint(_message.Message):
    __slots__ = ("max_per_trace", "occurrences", "suggestion")
    MAX_PER_TRACE_FIELD_NUMBER: _ClassVar[int]
    OCCURRENCES_FIELD_NUMBER: _ClassVar[int]
    SUGGESTION_FIELD_NUMBER: _ClassVar[int]
    max_per_trace: int
    occurrences: int
    suggestion: str
    def __init__(self, max_per_trace: _Optional[int] = ..., occurrences: _Optional[int] = ..., suggestion: _Optional[str] = ...) -> None: ...

class QueryStats(_message.Message):
    __slots__ = ("fingerprint", "service", "calls", "total", "mean", "min", "max", "stddev", "p50", "p95", "p99", "rows", "first_seen", "last_seen", "sample", "batching")
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    STDDEV_FIELD_NUMBER: _ClassVar[int]
    P50_FIELD_NUMBER: _ClassVar[int]
    P95_FIELD_NUMBER: _ClassVar[int]
    P99_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEEN_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_FIELD_NUMBER: _ClassVar[int]
    BATCHING_FIELD_NUMBER: _ClassVar[int]
    fingerprint: str
    service: str
    calls: int
    total: _duration_pb2.Duration
    mean: _duration_pb2.Duration
    min: _duration_pb2.Duration
    max: _duration_pb2.Duration
    stddev: _duration_pb2.Duration
    p50: _duration_pb2.Duration
    p95: _duration_pb2.Duration
    p99: _duration_pb2.Duration
    rows: int
    first_seen: _timestamp_pb2.Timestamp
    last_seen: _timestamp_pb2.Timestamp
    sample: str
    batching: BatchingHint
    def __init__(self, fingerprint: _Optional[str] = ..., service: _Optional[str] = ..., calls: _Optional[int] = ..., total: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., mean: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., min: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., stddev: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., p50: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., p95: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., p99: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., rows: _Optional[int] = ..., first_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., sample: _Optional[str] = ..., batching: _Optional[_Union[BatchingHint, _Mapping]] = ...) -> None: ...

class TopQueriesResponse(_message.Message):
    __slots__ = ("queries",)
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    queries: _containers.RepeatedCompositeFieldContainer[QueryStats]
    def __init__(self, queries: _Optional[_Iterable[_Union[QueryStats, _Mapping]]] = ...) -> None: ...

class SlowQueriesRequest(_message.Message):
    __slots__ = ("since", "limit")
    SINCE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    since: _timestamp_pb2.Timestamp
    limit: int
    def __init__(self, since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., limit: _Optional[int] = ...) -> None: ...

class SlowQuery(_message.Message):
    __slots__ = ("fingerprint", "text", "duration", "rows", "service", "trace_id", "time")
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    DURATION_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    fingerprint: str
    text: str
    duration: _duration_pb2.Duration
    rows: int
    service: str
    trace_id: str
    time: _timestamp_pb2.Timestamp
    def __init__(self, fingerprint: _Optional[str] = ..., text: _Optional[str] = ..., duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., rows: _Optional[int] = ..., service: _Optional[str] = ..., trace_id: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class SlowQueriesResponse(_message.Message):
    __slots__ = ("queries",)
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    queries: _containers.RepeatedCompositeFieldContainer[SlowQuery]
    def __init__(self, queries: _Optional[_Iterable[_Union[SlowQuery, _Mapping]]] = ...) -> None: ...
