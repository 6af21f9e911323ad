"""The running service: probes, scheduling, the engine that drives providers, the state store."""
