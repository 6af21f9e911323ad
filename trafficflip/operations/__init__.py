"""What operators see and use: the HTTP API, status page, metrics, notifications, status views."""
