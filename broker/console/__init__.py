"""The IG console: server-rendered pages for information governance leads, served by the broker
at ``/console`` (README, "The IG console").

- ``session.py``: the stateless, MAC'd session cookie and the CSRF tokens (pure);
- ``views.py``: what each page shows, shaped from the store's answers (pure);
- ``web.py``: the aiohttp sub-application: sign-in, pages, forms, security headers, audit;
- ``templates/`` (Jinja2, autoescaped) and ``static/`` (the stylesheet): package data, so every
  asset a page names is served by the broker itself.
"""
