from __future__ import annotations

from django.db.models import Count, Prefetch
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render

from accounts.models import Customer, Wishlist


def profile(request: HttpRequest, username: str) -> HttpResponse:
    """A customer's public page: wishlists and reviews."""
    customer = get_object_or_404(
        Customer.objects.select_related("user")
        .annotate(order_count=Count("orders", distinct=True))
        .prefetch_related(
            Prefetch("wishlists", Wishlist.objects.prefetch_related("products__brand")),
            "reviews__product",
        ),
        user__username=username,
    )
    return render(request, "accounts/profile.html", {"customer": customer})
