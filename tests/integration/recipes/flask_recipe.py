"""Flask (and any WSGI app under gunicorn): one ``SyncProducer`` per process, shared by its threads."""

from __future__ import annotations

from flask import Flask, request

from conveyor.producer.sync_producer import SyncProducer


def create_app(producer: SyncProducer) -> Flask:
    app = Flask(__name__)

    @app.post("/signup")
    def signup() -> dict[str, str]:
        receipt = producer.publish("email.welcome", {"email": request.get_json()["email"]})
        return {"job_id": receipt.job_id}

    return app
