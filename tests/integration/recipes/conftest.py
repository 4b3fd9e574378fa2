from tests.integration.conftest import amqp_url, pulsar_url, queue_name  # noqa: F401 - shared fixtures
from tests.integration.outbox.conftest import bare_table, table  # noqa: F401 - shared fixtures
