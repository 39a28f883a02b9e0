"""The only place in the agent that imports ``nats``."""
