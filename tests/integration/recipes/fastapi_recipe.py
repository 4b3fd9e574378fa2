"""FastAPI: one async ``Producer`` for the app's life, opened and closed by its lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from pydantic import BaseModel

from conveyor.common.jobs.registry import JobRegistry
from conveyor.common.transport.factory import transport_from_url
from conveyor.producer.producer import Producer


class SignUp(BaseModel):
    email: str


def create_app(broker_url: str, jobs: JobRegistry) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with Producer.for_registry(transport_from_url(broker_url), jobs) as producer:
            app.state.producer = producer
            yield

    app = FastAPI(lifespan=lifespan)

    @app.post("/signup")
    async def signup(body: SignUp, request: Request) -> dict[str, str]:
        receipt = await request.app.state.producer.publish("email.welcome", {"email": body.email})
        return {"job_id": receipt.job_id}

    return app
