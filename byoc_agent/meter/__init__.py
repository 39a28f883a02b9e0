"""The agent's per-second usage meter: signed, spooled ``UsageReport`` records that tile
each sandbox's life. See :mod:`byoc_agent.meter.usage_meter` for the rules."""

from byoc_agent.meter.usage_meter import UsageMeter, billing_second, usage_record_id

__all__ = ["UsageMeter", "billing_second", "usage_record_id"]
