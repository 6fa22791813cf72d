import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LimitScope(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LIMIT_SCOPE_UNSPECIFIED: _ClassVar[LimitScope]
    LIMIT_SCOPE_PER_KEY: _ClassVar[LimitScope]
    LIMIT_SCOPE_SHARED: _ClassVar[LimitScope]
LIMIT_SCOPE_UNSPECIFIED: LimitScope
LIMIT_SCOPE_PER_KEY: LimitScope
LIMIT_SCOPE_SHARED: LimitScope

class InspectBucketRequest(_message.Message):
    __slots__ = ("limit", "key")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    limit: str
    key: str
    def __init__(self, limit: _Optional[str] = ..., key: _Optional[str] = ...) -> None: ...

class BucketState(_message.Message):
    __slots__ = ("limit", "key", "tokens", "burst", "next_token", "full_in", "waiters")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    BURST_FIELD_NUMBER: _ClassVar[int]
    NEXT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    FULL_IN_FIELD_NUMBER: _ClassVar[int]
    WAITERS_FIELD_NUMBER: _ClassVar[int]
    limit: str
    key: str
    tokens: int
    burst: int
    next_token: _duration_pb2.Duration
    full_in: _duration_pb2.Duration
    waiters: int
    def __init__(self, limit: _Optional[str] = ..., key: _Optional[str] = ..., tokens: _Optional[int] = ..., burst: _Optional[int] = ..., next_token: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., full_in: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., waiters: _Optional[int] = ...) -> None: ...

class HotKeysRequest(_message.Message):
    __slots__ = ("limit", "count")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    limit: str
    count: int
    def __init__(self, limit: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class HotKeysResponse(_message.Message):
    __slots__ = ("buckets", "scanned")
    BUCKETS_FIELD_NUMBER: _ClassVar[int]
    SCANNED_FIELD_NUMBER: _ClassVar[int]
    buckets: _containers.RepeatedCompositeFieldContainer[BucketState]
    scanned: int
    def __init__(self, buckets: _Optional[_Iterable[_Union[BucketState, _Mapping]]] = ..., scanned: _Optional[int] = ...) -> None: ...

class AcquireRequest(_message.Message):
    __slots__ = ("limit", "key", "tokens", "max_wait", "dry_run", "client")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_WAIT_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    limit: str
    key: str
    tokens: int
    max_wait: _duration_pb2.Duration
    dry_run: bool
    client: str
    def __init__(self, limit: _Optional[str] = ..., key: _Optional[str] = ..., tokens: _Optional[int] = ..., max_wait: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., dry_run: _Optional[bool] = ..., client: _Optional[str] = ...) -> None: ...

class AcquireResponse(_message.Message):
    __slots__ = ("allowed", "remaining", "retry_after", "reset_after", "limit", "waited")
    ALLOWED_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_FIELD_NUMBER: _ClassVar[int]
    RESET_AFTER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    WAITED_FIELD_NUMBER: _ClassVar[int]
    allowed: bool
    remaining: int
    retry_after: _duration_pb2.Duration
    reset_after: _duration_pb2.Duration
    limit: int
    waited: _duration_pb2.Duration
    def __init__(self, allowed: _Optional[bool] = ..., remaining: _Optional[int] = ..., retry_after: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., reset_after: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., limit: _Optional[int] = ..., waited: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class AcquireBatchRequest(_message.Message):
    __slots__ = ("requests", "all_or_nothing")
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ALL_OR_NOTHING_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[AcquireRequest]
    all_or_nothing: bool
    def __init__(self, requests: _Optional[_Iterable[_Union[AcquireRequest, _Mapping]]] = ..., all_or_nothing: _Optional[bool] = ...) -> None: ...

class AcquireBatchResponse(_message.Message):
    __slots__ = ("responses",)
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    responses: _containers.RepeatedCompositeFieldContainer[AcquireResponse]
    def __init__(self, responses: _Optional[_Iterable[_Union[AcquireResponse, _Mapping]]] = ...) -> None: ...

class ListLimitsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LimitOverride(_message.Message):
    __slots__ = ("key", "rate", "period", "burst")
    KEY_FIELD_NUMBER: _ClassVar[int]
    RATE_FIELD_NUMBER: _ClassVar[int]
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    BURST_FIELD_NUMBER: _ClassVar[int]
    key: str
    rate: int
    period: _duration_pb2.Duration
    burst: int
    def __init__(self, key: _Optional[str] = ..., rate: _Optional[int] = ..., period: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., burst: _Optional[int] = ...) -> None: ...

class LimitInfo(_message.Message):
    __slots__ = ("name", "rate", "period", "burst", "scope", "overrides")
    NAME_FIELD_NUMBER: _ClassVar[int]
    RATE_FIELD_NUMBER: _ClassVar[int]
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    BURST_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    name: str
    rate: int
    period: _duration_pb2.Duration
    burst: int
    scope: LimitScope
    overrides: _containers.RepeatedCompositeFieldContainer[LimitOverride]
    def __init__(self, name: _Optional[str] = ..., rate: _Optional[int] = ..., period: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., burst: _Optional[int] = ..., scope: _Optional[_Union[LimitScope, str]] = ..., overrides: _Optional[_Iterable[_Union[LimitOverride, _Mapping]]] = ...) -> None: ...

class ListLimitsResponse(_message.Message):
    __slots__ = ("limits", "default_limit")
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_LIMIT_FIELD_NUMBER: _ClassVar[int]
    limits: _containers.RepeatedCompositeFieldContainer[LimitInfo]
    default_limit: str
    def __init__(self, limits: _Optional[_Iterable[_Union[LimitInfo, _Mapping]]] = ..., default_limit: _Optional[str] = ...) -> None: ...
