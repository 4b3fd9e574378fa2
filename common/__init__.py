"""Shared building blocks: errors, codec, transports, middleware, settings, metrics."""
