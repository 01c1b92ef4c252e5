"""Settings (environment + optional TOML file), sample sales, NATS config, dashboards."""
