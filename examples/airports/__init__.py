"""The bundled example namespace: the world's airports from the airportsdata package."""
