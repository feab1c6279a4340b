"""Serving, independent of any transport: dynamic batching across calls (`batcher`) and the
detection service (`service`).
"""
