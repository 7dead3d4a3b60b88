"""The collector's registry: one interface, SQLite backend (PostgreSQL to come)."""

from edge_agent.collector.store.sqlite import (
    AvailabilityChange,
    DeviceStatus,
    EventRow,
    SiteSummary,
    Store,
    device_clip_url,
)

__all__ = ["AvailabilityChange", "DeviceStatus", "EventRow", "SiteSummary", "Store", "device_clip_url"]
