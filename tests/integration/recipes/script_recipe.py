"""A plain script: publish, wait for the confirm, exit (the with block closes the connection).

    CONVEYOR_BROKER_URL=amqp://… python -m tests.integration.recipes.script_recipe a@example.com b@example.com
"""

from __future__ import annotations

import os
import sys

from conveyor.producer.sync_producer import SyncProducer
from tests.integration.recipes.jobs import make_jobs


def main(emails: list[str]) -> None:
    with SyncProducer.from_url(os.environ["CONVEYOR_BROKER_URL"], jobs=make_jobs()) as producer:
        for email in emails:
            print(producer.publish("email.welcome", {"email": email}).job_id)


if __name__ == "__main__":
    main(sys.argv[1:])
