"""What a production install needs around the server: nginx, systemd, and `make cluster` (cluster.py)."""
