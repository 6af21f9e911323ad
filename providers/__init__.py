"""Provider adapters, installed as ``trafficflip.providers``; one module per backend."""
