"""Several gateway nodes as one: the registry in Redis (nodes, heartbeats, where people are online)."""
