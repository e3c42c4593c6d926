"""Tenants: who a request acts for (auth.py), what each tenant may do (limits.py, ratelimit.py,
series_limits.py) and the optional Redis layer that replicas share (redis_layer.py,
lookup_cache.py, overrides.py). ``setup.py`` wires them into the app."""
