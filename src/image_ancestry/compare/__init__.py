"""Base comparison: which vulnerabilities an image inherits from its base image.

``vulnerabilities`` holds the pure logic (matching reports to images, the split, the index
that tells which images' ``status.vulnerabilities`` changed); ``commands`` the
``image-ancestry compare`` command.
"""
