"""The wire schema (generated from proto/eventbus.proto) and the names the rest of the code uses.

Import messages from here, never from `_generated` directly, so that the generated layout can
change without touching callers.
"""

from appliance.wire._generated import eventbus_pb2 as pb
from appliance.wire._generated import eventbus_pb2_grpc as pb_grpc

AgentHealth = pb.AgentHealth
CaptureHealth = pb.CaptureHealth
Envelope = pb.Envelope
FlowEvent = pb.FlowEvent
InterfaceCounters = pb.InterfaceCounters
InterfaceStats = pb.InterfaceStats
PublishAck = pb.PublishAck
PublishBatchRequest = pb.PublishBatchRequest
PublishBatchResponse = pb.PublishBatchResponse

#: The envelope versions this code understands; the bus answers INVALID to any other.
ENVELOPE_VERSION = "v1"
SUPPORTED_VERSIONS = frozenset({ENVELOPE_VERSION})

#: Fully qualified method names, for clients and servers that register handlers by hand.
SERVICE_NAME = "infraspectre.EventBus"
PUBLISH_METHOD = f"/{SERVICE_NAME}/Publish"
PUBLISH_BATCH_METHOD = f"/{SERVICE_NAME}/PublishBatch"
#: Trailing metadata of every answered publish: the bus's clock (UNIX ns) when it answered,
#: which boxes without a real-time clock follow (agent/clock.py).
BUS_TIME_KEY = "bus-time-ns"

__all__ = [
    "BUS_TIME_KEY",
    "ENVELOPE_VERSION",
    "PUBLISH_BATCH_METHOD",
    "PUBLISH_METHOD",
    "SERVICE_NAME",
    "SUPPORTED_VERSIONS",
    "AgentHealth",
    "CaptureHealth",
    "Envelope",
    "FlowEvent",
    "InterfaceCounters",
    "InterfaceStats",
    "PublishAck",
    "PublishBatchRequest",
    "PublishBatchResponse",
    "pb",
    "pb_grpc",
]
