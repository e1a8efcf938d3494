"""Site-wide views: the home page, and an endpoint that gives the GC work."""

from __future__ import annotations

from django.db.models import Avg, Count
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from blog.models import Post
from catalog.models import Product
from catalog.navigation import menu


def home(request: HttpRequest) -> HttpResponse:
    featured = (Product.objects.filter(active=True)
                .select_related("brand", "category")
                .annotate(rating=Avg("reviews__rating"), review_count=Count("reviews"))
                .order_by("-review_count", "name")[:12])
    posts = Post.objects.select_related("author__user").order_by("-published_at")[:5]
    return render(request, "home.html", {"featured": featured, "posts": posts})


class _Node:
    """A menu node that knows its parent and its children: a reference cycle."""

    def __init__(self, name: str, parent: _Node | None) -> None:
        self.name = name
        self.parent = parent
        self.children: list[_Node] = []
        if parent is not None:
            parent.children.append(self)

    def breadcrumb(self) -> list[str]:
        node: _Node | None = self
        names: list[str] = []
        while node is not None:
            names.append(node.name)
            node = node.parent
        return names[::-1]


def cycles(request: HttpRequest) -> JsonResponse:
    """Build ``n`` linked nodes from the menu, use them, and drop them.

    Every node and its parent point at each other, so reference counting frees
    none of them: only the cyclic GC does. This is the garbage that a worker
    with its GC disabled would keep for ever.
    """
    n = max(1, min(int(request.GET.get("n", 5000)), 50_000))
    slugs = [entry.slug for entry in menu()] or ["node"]
    nodes = [_Node("home", None)]
    for i in range(1, n):
        # Breadth first: every node gets as many children as the menu has entries.
        nodes.append(_Node(f"{slugs[i % len(slugs)]}-{i}", nodes[(i - 1) // len(slugs)]))
    return JsonResponse({"nodes": len(nodes), "depth": len(nodes[-1].breadcrumb())})
