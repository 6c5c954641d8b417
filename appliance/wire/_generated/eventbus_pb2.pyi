from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FlowEvent(_message.Message):
    __slots__ = ("src_ip", "dst_ip", "src_port", "dst_port", "proto", "bytes_tx", "bytes_rx", "duration_ms", "start_time", "end_time", "flags", "packets_tx", "packets_rx", "vlan", "ip_version", "ip_proto", "icmp_type", "icmp_code", "icmp_id", "flags_tx", "flags_rx", "end_reason", "interface", "start_ns", "end_ns")
    class EndReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        END_REASON_UNSPECIFIED: _ClassVar[FlowEvent.EndReason]
        IDLE_TIMEOUT: _ClassVar[FlowEvent.EndReason]
        ACTIVE_TIMEOUT: _ClassVar[FlowEvent.EndReason]
        TCP_FIN: _ClassVar[FlowEvent.EndReason]
        TCP_RST: _ClassVar[FlowEvent.EndReason]
        EVICTED: _ClassVar[FlowEvent.EndReason]
        SHUTDOWN: _ClassVar[FlowEvent.EndReason]
    END_REASON_UNSPECIFIED: FlowEvent.EndReason
    IDLE_TIMEOUT: FlowEvent.EndReason
    ACTIVE_TIMEOUT: FlowEvent.EndReason
    TCP_FIN: FlowEvent.EndReason
    TCP_RST: FlowEvent.EndReason
    EVICTED: FlowEvent.EndReason
    SHUTDOWN: FlowEvent.EndReason
    SRC_IP_FIELD_NUMBER: _ClassVar[int]
    DST_IP_FIELD_NUMBER: _ClassVar[int]
    SRC_PORT_FIELD_NUMBER: _ClassVar[int]
    DST_PORT_FIELD_NUMBER: _ClassVar[int]
    PROTO_FIELD_NUMBER: _ClassVar[int]
    BYTES_TX_FIELD_NUMBER: _ClassVar[int]
    BYTES_RX_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    PACKETS_TX_FIELD_NUMBER: _ClassVar[int]
    PACKETS_RX_FIELD_NUMBER: _ClassVar[int]
    VLAN_FIELD_NUMBER: _ClassVar[int]
    IP_VERSION_FIELD_NUMBER: _ClassVar[int]
    IP_PROTO_FIELD_NUMBER: _ClassVar[int]
    ICMP_TYPE_FIELD_NUMBER: _ClassVar[int]
    ICMP_CODE_FIELD_NUMBER: _ClassVar[int]
    ICMP_ID_FIELD_NUMBER: _ClassVar[int]
    FLAGS_TX_FIELD_NUMBER: _ClassVar[int]
    FLAGS_RX_FIELD_NUMBER: _ClassVar[int]
    END_REASON_FIELD_NUMBER: _ClassVar[int]
    INTERFACE_FIELD_NUMBER: _ClassVar[int]
    START_NS_FIELD_NUMBER: _ClassVar[int]
    END_NS_FIELD_NUMBER: _ClassVar[int]
    src_ip: str
    dst_ip: str
    src_port: int
    dst_port: int
    proto: str
    bytes_tx: int
    bytes_rx: int
    duration_ms: int
    start_time: int
    end_time: int
    flags: int
    packets_tx: int
    packets_rx: int
    vlan: int
    ip_version: int
    ip_proto: int
    icmp_type: int
    icmp_code: int
    icmp_id: int
    flags_tx: int
    flags_rx: int
    end_reason: FlowEvent.EndReason
    interface: str
    start_ns: int
    end_ns: int
    def __init__(self, src_ip: _Optional[str] = ..., dst_ip: _Optional[str] = ..., src_port: _Optional[int] = ..., dst_port: _Optional[int] = ..., proto: _Optional[str] = ..., bytes_tx: _Optional[int] = ..., bytes_rx: _Optional[int] = ..., duration_ms: _Optional[int] = ..., start_time: _Optional[int] = ..., end_time: _Optional[int] = ..., flags: _Optional[int] = ..., packets_tx: _Optional[int] = ..., packets_rx: _Optional[int] = ..., vlan: _Optional[int] = ..., ip_version: _Optional[int] = ..., ip_proto: _Optional[int] = ..., icmp_type: _Optional[int] = ..., icmp_code: _Optional[int] = ..., icmp_id: _Optional[int] = ..., flags_tx: _Optional[int] = ..., flags_rx: _Optional[int] = ..., end_reason: _Optional[_Union[FlowEvent.EndReason, str]] = ..., interface: _Optional[str] = ..., start_ns: _Optional[int] = ..., end_ns: _Optional[int] = ...) -> None: ...

class InterfaceStats(_message.Message):
    __slots__ = ("ifname", "ifindex", "oper_up", "rx_bytes", "tx_bytes", "rx_packets", "tx_packets", "rx_errors", "tx_errors", "rx_dropped", "tx_dropped", "multicast", "delta_rx_bytes", "delta_tx_bytes", "delta_rx_packets", "delta_tx_packets", "delta_rx_errors", "delta_tx_errors", "delta_rx_dropped", "delta_tx_dropped", "reset")
    IFNAME_FIELD_NUMBER: _ClassVar[int]
    IFINDEX_FIELD_NUMBER: _ClassVar[int]
    OPER_UP_FIELD_NUMBER: _ClassVar[int]
    RX_BYTES_FIELD_NUMBER: _ClassVar[int]
    TX_BYTES_FIELD_NUMBER: _ClassVar[int]
    RX_PACKETS_FIELD_NUMBER: _ClassVar[int]
    TX_PACKETS_FIELD_NUMBER: _ClassVar[int]
    RX_ERRORS_FIELD_NUMBER: _ClassVar[int]
    TX_ERRORS_FIELD_NUMBER: _ClassVar[int]
    RX_DROPPED_FIELD_NUMBER: _ClassVar[int]
    TX_DROPPED_FIELD_NUMBER: _ClassVar[int]
    MULTICAST_FIELD_NUMBER: _ClassVar[int]
    DELTA_RX_BYTES_FIELD_NUMBER: _ClassVar[int]
    DELTA_TX_BYTES_FIELD_NUMBER: _ClassVar[int]
    DELTA_RX_PACKETS_FIELD_NUMBER: _ClassVar[int]
    DELTA_TX_PACKETS_FIELD_NUMBER: _ClassVar[int]
    DELTA_RX_ERRORS_FIELD_NUMBER: _ClassVar[int]
    DELTA_TX_ERRORS_FIELD_NUMBER: _ClassVar[int]
    DELTA_RX_DROPPED_FIELD_NUMBER: _ClassVar[int]
    DELTA_TX_DROPPED_FIELD_NUMBER: _ClassVar[int]
    RESET_FIELD_NUMBER: _ClassVar[int]
    ifname: str
    ifindex: int
    oper_up: bool
    rx_bytes: int
    tx_bytes: int
    rx_packets: int
    tx_packets: int
    rx_errors: int
    tx_errors: int
    rx_dropped: int
    tx_dropped: int
    multicast: int
    delta_rx_bytes: int
    delta_tx_bytes: int
    delta_rx_packets: int
    delta_tx_packets: int
    delta_rx_errors: int
    delta_tx_errors: int
    delta_rx_dropped: int
    delta_tx_dropped: int
    reset: bool
    def __init__(self, ifname: _Optional[str] = ..., ifindex: _Optional[int] = ..., oper_up: _Optional[bool] = ..., rx_bytes: _Optional[int] = ..., tx_bytes: _Optional[int] = ..., rx_packets: _Optional[int] = ..., tx_packets: _Optional[int] = ..., rx_errors: _Optional[int] = ..., tx_errors: _Optional[int] = ..., rx_dropped: _Optional[int] = ..., tx_dropped: _Optional[int] = ..., multicast: _Optional[int] = ..., delta_rx_bytes: _Optional[int] = ..., delta_tx_bytes: _Optional[int] = ..., delta_rx_packets: _Optional[int] = ..., delta_tx_packets: _Optional[int] = ..., delta_rx_errors: _Optional[int] = ..., delta_tx_errors: _Optional[int] = ..., delta_rx_dropped: _Optional[int] = ..., delta_tx_dropped: _Optional[int] = ..., reset: _Optional[bool] = ...) -> None: ...

class InterfaceCounters(_message.Message):
    __slots__ = ("sample_ns", "interval_ms", "interfaces", "capture_packets", "capture_drops")
    SAMPLE_NS_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    INTERFACES_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_PACKETS_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_DROPS_FIELD_NUMBER: _ClassVar[int]
    sample_ns: int
    interval_ms: int
    interfaces: _containers.RepeatedCompositeFieldContainer[InterfaceStats]
    capture_packets: int
    capture_drops: int
    def __init__(self, sample_ns: _Optional[int] = ..., interval_ms: _Optional[int] = ..., interfaces: _Optional[_Iterable[_Union[InterfaceStats, _Mapping]]] = ..., capture_packets: _Optional[int] = ..., capture_drops: _Optional[int] = ...) -> None: ...

class CaptureHealth(_message.Message):
    __slots__ = ("ifname", "packets", "drops", "own_frames")
    IFNAME_FIELD_NUMBER: _ClassVar[int]
    PACKETS_FIELD_NUMBER: _ClassVar[int]
    DROPS_FIELD_NUMBER: _ClassVar[int]
    OWN_FRAMES_FIELD_NUMBER: _ClassVar[int]
    ifname: str
    packets: int
    drops: int
    own_frames: int
    def __init__(self, ifname: _Optional[str] = ..., packets: _Optional[int] = ..., drops: _Optional[int] = ..., own_frames: _Optional[int] = ...) -> None: ...

class AgentHealth(_message.Message):
    __slots__ = ("sample_ns", "version", "slot", "uptime_s", "capture", "wal_backlog_records", "wal_backlog_bytes", "wal_oldest_age_ms", "forwarder_state", "clock_offset_ms", "cert_not_after_s", "quarantined")
    SAMPLE_NS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_FIELD_NUMBER: _ClassVar[int]
    WAL_BACKLOG_RECORDS_FIELD_NUMBER: _ClassVar[int]
    WAL_BACKLOG_BYTES_FIELD_NUMBER: _ClassVar[int]
    WAL_OLDEST_AGE_MS_FIELD_NUMBER: _ClassVar[int]
    FORWARDER_STATE_FIELD_NUMBER: _ClassVar[int]
    CLOCK_OFFSET_MS_FIELD_NUMBER: _ClassVar[int]
    CERT_NOT_AFTER_S_FIELD_NUMBER: _ClassVar[int]
    QUARANTINED_FIELD_NUMBER: _ClassVar[int]
    sample_ns: int
    version: str
    slot: str
    uptime_s: int
    capture: _containers.RepeatedCompositeFieldContainer[CaptureHealth]
    wal_backlog_records: int
    wal_backlog_bytes: int
    wal_oldest_age_ms: int
    forwarder_state: str
    clock_offset_ms: int
    cert_not_after_s: int
    quarantined: int
    def __init__(self, sample_ns: _Optional[int] = ..., version: _Optional[str] = ..., slot: _Optional[str] = ..., uptime_s: _Optional[int] = ..., capture: _Optional[_Iterable[_Union[CaptureHealth, _Mapping]]] = ..., wal_backlog_records: _Optional[int] = ..., wal_backlog_bytes: _Optional[int] = ..., wal_oldest_age_ms: _Optional[int] = ..., forwarder_state: _Optional[str] = ..., clock_offset_ms: _Optional[int] = ..., cert_not_after_s: _Optional[int] = ..., quarantined: _Optional[int] = ...) -> None: ...

class Envelope(_message.Message):
    __slots__ = ("version", "ts_ns", "idempotency_key", "flow", "sig", "prev_sig", "agent_id", "seq", "counters", "health")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TS_NS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    FLOW_FIELD_NUMBER: _ClassVar[int]
    SIG_FIELD_NUMBER: _ClassVar[int]
    PREV_SIG_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    version: str
    ts_ns: int
    idempotency_key: str
    flow: FlowEvent
    sig: bytes
    prev_sig: bytes
    agent_id: str
    seq: int
    counters: InterfaceCounters
    health: AgentHealth
    def __init__(self, version: _Optional[str] = ..., ts_ns: _Optional[int] = ..., idempotency_key: _Optional[str] = ..., flow: _Optional[_Union[FlowEvent, _Mapping]] = ..., sig: _Optional[bytes] = ..., prev_sig: _Optional[bytes] = ..., agent_id: _Optional[str] = ..., seq: _Optional[int] = ..., counters: _Optional[_Union[InterfaceCounters, _Mapping]] = ..., health: _Optional[_Union[AgentHealth, _Mapping]] = ...) -> None: ...

class PublishAck(_message.Message):
    __slots__ = ("status", "reason", "backoff_hint_ms")
    class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        OK: _ClassVar[PublishAck.Status]
        RETRY: _ClassVar[PublishAck.Status]
        INVALID: _ClassVar[PublishAck.Status]
    OK: PublishAck.Status
    RETRY: PublishAck.Status
    INVALID: PublishAck.Status
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    BACKOFF_HINT_MS_FIELD_NUMBER: _ClassVar[int]
    status: PublishAck.Status
    reason: str
    backoff_hint_ms: int
    def __init__(self, status: _Optional[_Union[PublishAck.Status, str]] = ..., reason: _Optional[str] = ..., backoff_hint_ms: _Optional[int] = ...) -> None: ...

class PublishBatchRequest(_message.Message):
    __slots__ = ("envelopes",)
    ENVELOPES_FIELD_NUMBER: _ClassVar[int]
    envelopes: _containers.RepeatedCompositeFieldContainer[Envelope]
    def __init__(self, envelopes: _Optional[_Iterable[_Union[Envelope, _Mapping]]] = ...) -> None: ...

class PublishBatchResponse(_message.Message):
    __slots__ = ("acks",)
    ACKS_FIELD_NUMBER: _ClassVar[int]
    acks: _containers.RepeatedCompositeFieldContainer[PublishAck]
    def __init__(self, acks: _Optional[_Iterable[_Union[PublishAck, _Mapping]]] = ...) -> None: ...

class UpdateStatus(_message.Message):
    __slots__ = ("version", "build", "board", "slot", "state", "last_result", "last_reason", "last_version", "last_at", "group", "download", "downloaded", "fetched")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BUILD_FIELD_NUMBER: _ClassVar[int]
    BOARD_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LAST_RESULT_FIELD_NUMBER: _ClassVar[int]
    LAST_REASON_FIELD_NUMBER: _ClassVar[int]
    LAST_VERSION_FIELD_NUMBER: _ClassVar[int]
    LAST_AT_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    DOWNLOAD_FIELD_NUMBER: _ClassVar[int]
    DOWNLOADED_FIELD_NUMBER: _ClassVar[int]
    FETCHED_FIELD_NUMBER: _ClassVar[int]
    version: str
    build: int
    board: str
    slot: str
    state: str
    last_result: str
    last_reason: str
    last_version: str
    last_at: int
    group: str
    download: str
    downloaded: int
    fetched: int
    def __init__(self, version: _Optional[str] = ..., build: _Optional[int] = ..., board: _Optional[str] = ..., slot: _Optional[str] = ..., state: _Optional[str] = ..., last_result: _Optional[str] = ..., last_reason: _Optional[str] = ..., last_version: _Optional[str] = ..., last_at: _Optional[int] = ..., group: _Optional[str] = ..., download: _Optional[str] = ..., downloaded: _Optional[int] = ..., fetched: _Optional[int] = ...) -> None: ...

class UpdateCheckRequest(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: UpdateStatus
    def __init__(self, status: _Optional[_Union[UpdateStatus, _Mapping]] = ...) -> None: ...

class UpdateOffer(_message.Message):
    __slots__ = ("version", "build", "bundle", "size", "max_chunk")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BUILD_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_CHUNK_FIELD_NUMBER: _ClassVar[int]
    version: str
    build: int
    bundle: str
    size: int
    max_chunk: int
    def __init__(self, version: _Optional[str] = ..., build: _Optional[int] = ..., bundle: _Optional[str] = ..., size: _Optional[int] = ..., max_chunk: _Optional[int] = ...) -> None: ...

class UpdateFetchRequest(_message.Message):
    __slots__ = ("bundle", "offset", "length")
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    bundle: str
    offset: int
    length: int
    def __init__(self, bundle: _Optional[str] = ..., offset: _Optional[int] = ..., length: _Optional[int] = ...) -> None: ...

class UpdateChunk(_message.Message):
    __slots__ = ("offset", "data", "eof")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    EOF_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    eof: bool
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ..., eof: _Optional[bool] = ...) -> None: ...
