"""Shared plumbing: embedded dev servers, schema, stream setup, CLI, logging."""
