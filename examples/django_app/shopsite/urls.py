from __future__ import annotations

from django.contrib import admin
from django.urls import path

from accounts import views as accounts
from blog import views as blog
from catalog import views as catalog
from orders import views as orders
from shopsite import views as site

urlpatterns = [
    path("", site.home, name="home"),
    path("cycles/", site.cycles, name="cycles"),
    path("catalog/", catalog.category_list, name="category-list"),
    path("catalog/c/<slug:slug>/", catalog.category_detail, name="category"),
    path("catalog/p/<int:pk>/", catalog.product_detail, name="product"),
    path("accounts/<str:username>/", accounts.profile, name="profile"),
    path("blog/", blog.post_list, name="post-list"),
    path("blog/<slug:slug>/", blog.post_detail, name="post"),
    path("api/products/", catalog.api_products),
    path("api/products/<int:pk>/", catalog.api_product),
    path("api/brands/", catalog.api_brands),
    path("api/search/", catalog.api_search),
    path("api/places/<str:postcode>/", catalog.api_place),
    path("api/orders/recent/", orders.api_recent),
    path("api/orders/sales/", orders.api_sales),
    path("api/customers/<int:pk>/", orders.api_customer),
    path("api/topics/", blog.api_topics),
    path("admin/", admin.site.urls),
]
