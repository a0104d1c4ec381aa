"""The toystore load client (``python -m client``): concurrent sessions that query and order
toys through the frontend, then check every acknowledged order; see DESIGN.md, "Client"."""
