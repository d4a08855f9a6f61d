"""Dependencies injected into the routes: settings and the clients built at start-up."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from api.model_holder import ModelHolder
from api.publisher import Publisher
from model.config import Settings
from model.online_store import OnlineStore


@dataclass
class Services:
    settings: Settings
    store: OnlineStore
    models: ModelHolder
    publisher: Publisher


def get_services(request: Request) -> Services:
    return request.app.state.services
