"""trafficflip: keep traffic on healthy sites by rewriting DNS records or pool weights."""

__version__ = "0.1.0"
