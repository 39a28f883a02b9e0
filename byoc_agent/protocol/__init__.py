"""The wire format the control plane and the agent share: messages, signing, errors."""

from byoc_agent.protocol import errors, messages, signing, subjects, verify

__all__ = ["errors", "messages", "signing", "subjects", "verify"]
