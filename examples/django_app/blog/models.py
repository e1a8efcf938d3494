"""The shop's blog: posts in series and topics, with threaded comments."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class Author(models.Model):
    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE,
                                related_name="author")
    bio = models.TextField()

    def __str__(self) -> str:
        return self.user.get_username()


class Series(models.Model):
    title = models.CharField(max_length=120)
    slug = models.SlugField(unique=True)

    class Meta:
        verbose_name_plural = "series"

    def __str__(self) -> str:
        return self.title


class Topic(models.Model):
    name = models.CharField(max_length=40, unique=True)
    slug = models.SlugField(unique=True)

    def __str__(self) -> str:
        return self.name


class Post(models.Model):
    author = models.ForeignKey(Author, on_delete=models.PROTECT, related_name="posts")
    series = models.ForeignKey(Series, null=True, blank=True, on_delete=models.SET_NULL,
                               related_name="posts")
    title = models.CharField(max_length=160)
    slug = models.SlugField(unique=True)
    body = models.TextField()
    published_at = models.DateTimeField(db_index=True)
    topics = models.ManyToManyField(Topic, related_name="posts")
    related_products = models.ManyToManyField("catalog.Product", blank=True,
                                              related_name="posts")

    class Meta:
        ordering = ["-published_at"]

    def __str__(self) -> str:
        return self.title


class Comment(models.Model):
    post = models.ForeignKey(Post, on_delete=models.CASCADE, related_name="comments")
    customer = models.ForeignKey("accounts.Customer", on_delete=models.CASCADE,
                                 related_name="comments")
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.CASCADE,
                               related_name="replies")
    body = models.TextField()
    created = models.DateTimeField()

    class Meta:
        ordering = ["created"]
        indexes = [models.Index(fields=["post", "created"])]
