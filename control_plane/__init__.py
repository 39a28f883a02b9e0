"""The Corral control plane: tenants, agents, scheduling and signed jobs (metadata only)."""
