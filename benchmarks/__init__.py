"""Measurements kept with the project but outside the ``gcfork`` package.

A package so that the tests import its modules the way they import
``tests.*`` (``from benchmarks import holes``), with the checkout on the path;
the scripts in it still run as ``python benchmarks/NAME.py``.
"""
