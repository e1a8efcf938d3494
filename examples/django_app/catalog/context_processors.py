from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from catalog.navigation import menu


def navigation(request: HttpRequest) -> dict[str, Any]:
    return {"menu": menu()}
