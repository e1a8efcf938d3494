"""Catalogue pages (HTML) and the catalogue's JSON API."""

from __future__ import annotations

from django.core.paginator import Paginator
from django.db.models import Avg, Count, Min, Prefetch, Q, Sum
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, render

from catalog.models import Category, Product, ProductVariant, Review
from shopsite.refdata import PLACES, TAX_RATES, expand_query


def category_list(request: HttpRequest) -> HttpResponse:
    categories = (Category.objects.filter(parent__isnull=True)
                  .prefetch_related("children")
                  .annotate(product_count=Count("products")))
    return render(request, "catalog/category_list.html", {"categories": categories})


def category_detail(request: HttpRequest, slug: str) -> HttpResponse:
    category = get_object_or_404(Category, slug=slug)
    products = (Product.objects.filter(Q(category=category) | Q(category__parent=category),
                                       active=True)
                .select_related("brand", "category")
                .prefetch_related("tags")
                .annotate(rating=Avg("reviews__rating"), review_count=Count("reviews")))
    page = Paginator(products, 24).get_page(request.GET.get("page"))
    return render(request, "catalog/product_list.html", {"category": category, "page": page})


def product_detail(request: HttpRequest, pk: int) -> HttpResponse:
    product = get_object_or_404(
        Product.objects.select_related("brand", "category__parent", "supplier")
        .prefetch_related(
            "tags", "images",
            Prefetch("variants", ProductVariant.objects.prefetch_related(
                "attributes__attribute").annotate(in_stock=Sum("stock__quantity"))),
            Prefetch("reviews", Review.objects.select_related("customer")),
        ),
        pk=pk,
    )
    stats = product.reviews.aggregate(average=Avg("rating"), count=Count("id"))
    return render(request, "catalog/product_detail.html", {"product": product, "stats": stats})


def _product_json(product: Product) -> dict[str, object]:
    return {
        "id": product.pk,
        "sku": product.sku,
        "name": product.name,
        "price": str(product.price),
        "brand": product.brand.name,
        "category": product.category.slug,
        "tags": [t.slug for t in product.tags.all()],
    }


def api_products(request: HttpRequest) -> JsonResponse:
    products = (Product.objects.filter(active=True)
                .select_related("brand", "category").prefetch_related("tags"))
    if "category" in request.GET:
        products = products.filter(category__slug=request.GET["category"])
    if "brand" in request.GET:
        products = products.filter(brand__slug=request.GET["brand"])
    limit = min(int(request.GET.get("limit", 50)), 200)
    return JsonResponse({"products": [_product_json(p) for p in products[:limit]]})


def api_product(request: HttpRequest, pk: int) -> JsonResponse:
    product = get_object_or_404(
        Product.objects.select_related("brand", "category").prefetch_related("tags"), pk=pk)
    variants = (product.variants.annotate(in_stock=Sum("stock__quantity"))
                .values("sku", "price_delta", "in_stock"))
    history = product.price_history.order_by("-changed_at").values("price", "changed_at")[:12]
    return JsonResponse({
        **_product_json(product),
        "variants": [{**v, "price_delta": str(v["price_delta"])} for v in variants],
        "price_history": [{"price": str(h["price"]), "at": h["changed_at"].isoformat()}
                          for h in history],
    })


def api_brands(request: HttpRequest) -> JsonResponse:
    brands = (Product.objects.values("brand__slug", "brand__name")
              .annotate(products=Count("id"), cheapest=Min("price"),
                        rating=Avg("reviews__rating"))
              .order_by("-products"))
    return JsonResponse({"brands": [
        {**b, "cheapest": str(b["cheapest"]), "rating": round(b["rating"] or 0, 2)}
        for b in brands
    ]})


def api_search(request: HttpRequest) -> JsonResponse:
    """Search product names for the query's words and their related words."""
    stems = expand_query(request.GET.get("q", ""))
    if not stems:
        return JsonResponse({"stems": [], "products": []})
    match = Q()
    for stem in stems:
        match |= Q(name__icontains=stem)
    products = Product.objects.filter(match).select_related("brand", "category")
    products = products.prefetch_related("tags")[:20]
    return JsonResponse({"stems": stems, "products": [_product_json(p) for p in products]})


def api_place(request: HttpRequest, postcode: str) -> JsonResponse:
    """Delivery facts for a postcode, from the in-memory gazetteer."""
    place = PLACES.get(postcode.upper().replace("-", " "))
    if place is None:
        raise Http404("unknown postcode")
    return JsonResponse({**place._asdict(), "tax_rate": TAX_RATES[place.tax_zone]})
