"""Conveyor benchmark: Conveyor on RabbitMQ beside a minimal raw aio-pika loop.

Run ``python -m bench`` (or ``scripts/bench``) from the repository root; see
``bench/README.md`` for what each row measures and how the comparison is kept fair.
"""
