"""`galaxy-edge serve`: the field demo web app (Flask) on the edge runtime."""
