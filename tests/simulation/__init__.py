"""The deterministic fault simulation: the real engine on virtual time, stated promises."""
