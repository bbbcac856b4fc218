"""Triton kernels, one op per file. Installed as `routoo_fast.kernels` (see setup.py `package_dir`).

Importing this package is cheap: each kernel module imports triton itself, only when it is imported.
"""
