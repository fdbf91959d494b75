"""PLM loading, layer maps and students, the bi-encoder, and building one from a config."""
