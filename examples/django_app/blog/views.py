from __future__ import annotations

from django.core.paginator import Paginator
from django.db.models import Count, Prefetch
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, render

from blog.models import Comment, Post, Topic


def post_list(request: HttpRequest) -> HttpResponse:
    posts = (Post.objects.select_related("author__user", "series")
             .prefetch_related("topics")
             .annotate(comment_count=Count("comments")))
    topic = request.GET.get("topic")
    if topic:
        posts = posts.filter(topics__slug=topic)
    page = Paginator(posts, 10).get_page(request.GET.get("page"))
    return render(request, "blog/post_list.html", {"page": page, "topic": topic})


def post_detail(request: HttpRequest, slug: str) -> HttpResponse:
    post = get_object_or_404(
        Post.objects.select_related("author__user", "series").prefetch_related(
            "topics", "related_products__brand",
            Prefetch("comments", Comment.objects.select_related("customer")
                     .filter(parent__isnull=True).prefetch_related("replies__customer"),
                     to_attr="threads"),
        ),
        slug=slug,
    )
    return render(request, "blog/post_detail.html", {"post": post})


def api_topics(request: HttpRequest) -> JsonResponse:
    topics = (Topic.objects.annotate(posts_count=Count("posts", distinct=True),
                                     comments=Count("posts__comments"))
              .order_by("-posts_count").values("slug", "name", "posts_count", "comments"))
    return JsonResponse({"topics": list(topics)})
