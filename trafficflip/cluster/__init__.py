"""Cluster mode: several trafficflip instances on etcd, one leader, a multi-vantage vote."""
