"""End-to-end tests of the running service: ``dagster dev`` (webserver, daemon) and its web UI."""
